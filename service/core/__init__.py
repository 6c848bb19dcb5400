"""The shared core of the web app and the worker: settings, schema, database, the sketch store, Celery wiring.

Nothing here imports Flask extensions, the web blueprints or the worker.
"""
