"""Celery wiring shared by the web (which sends tasks) and the worker (which runs them).

Task and queue names, the Celery configuration derived from our settings, and one unconfigured
``celery_app`` that the worker's tasks register on. Nothing is configured or created at import: the
worker's entry point (``worker.app``) calls :func:`configure`, the web builds its own producer app with
:func:`make_celery` in ``create_app``, and each calls :func:`prepare_broker` when it starts.
"""

from __future__ import annotations

from celery import Celery

from service.core.settings import Settings

SCORE_TASK = "sketchwatch.score_sketches"
SWEEP_TASK = "sketchwatch.sweep_queued"
# Re-scores stored sketches with the newly active model, one batch per task (service.core.registry).
RESCORE_TASK = "sketchwatch.rescore_sketches"
QUEUE = "sketchwatch"
# Training from reviews runs on a queue of its own, consumed only by the training worker (``sketchwatch worker
# --training``): a training takes minutes of CPU, and no scoring task may wait behind it.
TRAIN_TASK = "sketchwatch.train_from_reviews"
TRAINING_QUEUE = "training"
# Alerts run on a queue of their own, consumed by the alerts worker (``sketchwatch worker --alerts``): a slow
# or hanging webhook receiver then never holds a scoring process.
EVALUATE_ALERTS_TASK = "sketchwatch.evaluate_alerts"
DELIVER_WEBHOOK_TASK = "sketchwatch.deliver_webhook"
REFRESH_ROLLUP_TASK = "sketchwatch.refresh_rollup"
ALERTS_QUEUE = "sketchwatch.alerts"
ROLLUP_INTERVAL_S = 60.0
# Retention (service.core.retention) is database work without the model: it runs on the alerts worker too.
RETENTION_TASK = "sketchwatch.apply_retention"
# Computes the reconstructions not kept at scoring (flagged later, or asked for on a sketch's page): needs the model.
RECONSTRUCT_TASK = "sketchwatch.reconstruct_sketches"
# Partitions made ahead (hourly), and the score-bucket rollup folded with the pending re-flag advanced (every few
# seconds): database work without the model, on the alerts worker (service.core.partitions, score_rollup).
MAINTAIN_PARTITIONS_TASK = "sketchwatch.maintain_partitions"
FOLD_SCORE_ROLLUP_TASK = "sketchwatch.fold_score_rollup"
PARTITIONS_INTERVAL_S = 3600.0
FOLD_INTERVAL_S = 10.0
ALERTS_TASKS = (
    EVALUATE_ALERTS_TASK, DELIVER_WEBHOOK_TASK, REFRESH_ROLLUP_TASK, RETENTION_TASK,
    MAINTAIN_PARTITIONS_TASK, FOLD_SCORE_ROLLUP_TASK,
)
# Where a configured app keeps the Settings it was built from (read by the tasks at call time).
SETTINGS_KEY = "sketchwatch_settings"

# The worker's app: its tasks are registered here by the task modules, and ``worker.app`` configures it.
celery_app = Celery("sketchwatch")


def celery_config(settings: Settings) -> dict:
    """Lowercase Celery settings derived from our settings (pure: creates nothing on disk)."""
    transport: dict = {}
    if settings.uses_redis:
        transport = {
            # An unacked message comes back after this long; longer than any scoring task.
            "visibility_timeout": settings.visibility_timeout_s,
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
        }
    elif _uses_filesystem(settings):
        queue_dir, control_dir = _broker_folders(settings)
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
        "worker_max_memory_per_child": settings.memory_cap_mb * 1024 or None,
        "beat_schedule": {
            "sweep-queued": {
                "task": SWEEP_TASK,
                "schedule": settings.sweep_interval_s,
                # A sweep still waiting when the next one is due is dropped: they would do the same work.
                "options": {"expires": max(settings.sweep_interval_s, 1.0)},
            },
            "evaluate-alerts": {
                "task": EVALUATE_ALERTS_TASK,
                "schedule": settings.alert_interval_s,
                "options": {"expires": settings.alert_interval_s},
            },
            "refresh-rollup": {
                "task": REFRESH_ROLLUP_TASK,
                "schedule": ROLLUP_INTERVAL_S,
                "options": {"expires": ROLLUP_INTERVAL_S},
            },
            "maintain-partitions": {
                "task": MAINTAIN_PARTITIONS_TASK,
                "schedule": PARTITIONS_INTERVAL_S,
                "options": {"expires": PARTITIONS_INTERVAL_S},
            },
            "fold-score-rollup": {
                "task": FOLD_SCORE_ROLLUP_TASK,
                "schedule": FOLD_INTERVAL_S,
                "options": {"expires": FOLD_INTERVAL_S},
            },
            "apply-retention": {
                "task": RETENTION_TASK,
                "schedule": settings.retention_interval_s,
                "options": {"expires": settings.retention_interval_s},
            },
        },
        "task_routes": {**{name: {"queue": ALERTS_QUEUE} for name in ALERTS_TASKS}, TRAIN_TASK: {"queue": TRAINING_QUEUE}},
        "timezone": "UTC",
    }


def prepare_broker(settings: Settings) -> None:
    """Create the serverless filesystem broker's folders (a start-up step; other brokers need nothing)."""
    if _uses_filesystem(settings):
        for folder in _broker_folders(settings):
            folder.mkdir(parents=True, exist_ok=True)


def configure(app: Celery, settings: Settings) -> Celery:
    """Configure ``app`` from ``settings``: the Celery config, and the settings its tasks read at call time."""
    app.conf.update(celery_config(settings))
    app.conf[SETTINGS_KEY] = settings
    return app


def make_celery(settings: Settings) -> Celery:
    """A new Celery app configured from ``settings`` (the web's producer; tests build one per stack)."""
    return configure(Celery("sketchwatch"), settings)


def configured_settings(app: Celery) -> Settings:
    """The Settings ``app`` was configured with; raises when nothing configured it."""
    settings = app.conf.get(SETTINGS_KEY)
    if settings is None:
        raise RuntimeError(
            f"the Celery app {app.main!r} is not configured: call service.core.celery_app.configure() at start-up"
        )
    return settings


def _uses_filesystem(settings: Settings) -> bool:
    return settings.broker_url.startswith("filesystem://")


def _broker_folders(settings: Settings) -> tuple:
    return settings.broker_dir / "queue", settings.broker_dir / "control"
