"""The Celery worker: ``worker.app`` (the entry point), ``worker.lifecycle`` (its processes), ``worker.scoring``
and ``worker.sweeper`` (the tasks), ``worker.model_runtime`` (the model of one process), ``worker.alerts`` (the
alerts worker's tasks: alert rules, webhooks, the hourly rollup) and ``worker.heartbeat`` (every worker's heartbeat)."""
