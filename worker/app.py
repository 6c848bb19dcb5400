"""The Celery application, configured from ``service.core.settings`` with lowercase settings."""

from __future__ import annotations

from celery import Celery

from service.core.settings import Settings, get_settings

SCORE_TASK = "sketchwatch.score_sketches"
SWEEP_TASK = "sketchwatch.sweep_queued"
QUEUE = "sketchwatch"


def celery_config(settings: Settings) -> dict:
    """Lowercase Celery settings derived from our settings."""
    transport: dict = {}
    if settings.uses_redis:
        transport = {
            # An unacked message comes back after this long; longer than any scoring task.
            "visibility_timeout": settings.visibility_timeout_s,
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
        }
    elif settings.broker_url.startswith("filesystem://"):
        queue_dir, control_dir = settings.broker_dir / "queue", settings.broker_dir / "control"
        queue_dir.mkdir(parents=True, exist_ok=True)
        control_dir.mkdir(parents=True, exist_ok=True)
        transport = {
            "data_folder_in": str(queue_dir),
            "data_folder_out": str(queue_dir),
            "control_folder": str(control_dir),
            "polling_interval": 0.1,
        }
    elif settings.broker_url.startswith("sqla+sqlite"):
        transport = {"connect_args": {"timeout": 30}}
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 2,
        "task_default_queue": QUEUE,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        # At-least-once delivery: ack after the DB write, requeue when the worker dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        # Pool processes load TensorFlow and the model at start; Celery's 4 s default kills them first.
        "worker_proc_alive_timeout": 300.0,
        # KiB, checked by the pool process after each task against its peak RSS.
        "worker_max_memory_per_child": settings.worker_max_memory_mb * 1024 or None,
        "beat_schedule": {
            "sweep-queued": {"task": SWEEP_TASK, "schedule": settings.sweep_interval_s},
        },
        "timezone": "UTC",
    }


def make_celery(settings: Settings | None = None) -> Celery:
    """Build the Celery app; tasks are registered from ``worker.tasks``."""
    settings = settings or get_settings()
    app = Celery("sketchwatch", include=["worker.tasks"])
    app.conf.update(celery_config(settings))
    app.conf.sketchwatch_settings = settings
    return app


celery_app = make_celery()
