"""Celery worker: the app lives in ``worker.app``, the tasks in ``worker.tasks``."""
