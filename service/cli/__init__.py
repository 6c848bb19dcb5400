"""The ``sketchwatch`` command line (click): one module per subject, all registered on ``main`` here.

``database`` (db upgrade), ``users``, ``apikeys``, ``processes`` (serve, worker, up), ``service.cli_submit``
(submit, demo), ``models.cli`` (train, evaluate, cv) and ``models.export`` (export); ``bench`` is imported only when
its command is used.
Importing this package stays cheap (no TensorFlow, no Flask app, no Celery): commands import what they need.
"""

from __future__ import annotations

import click

from service.cli.apikeys import apikeys_group
from service.cli.database import db_group
from service.cli.lazy import LazyGroup
from service.cli.processes import serve, up, worker
from service.cli.users import users_group
from service.cli_submit import demo, submit

# Loaded with importlib at call time: nothing outside bench/ imports bench, and `sketchwatch worker` (serve,
# up) does not import the model commands (TensorFlow, the training pipeline) before it execs Celery.
LAZY_COMMANDS = {
    "bench": "bench.cli:bench_command",
    "export": "models.export:export_command",
    "train": "models.cli:train_command",
    "evaluate": "models.cli:evaluate_command",
    "cv": "models.cli:cv_command",
    "alerts": "service.cli.alerts:alerts_group",
    "models": "service.cli.models:models_group",
    "retention": "service.cli.retention:retention_group",
}


@click.group(cls=LazyGroup, lazy_commands=LAZY_COMMANDS)
def main() -> None:
    """SketchWatch: anomaly monitoring for hand-drawn sketches."""


main.add_command(db_group)
main.add_command(users_group)
main.add_command(apikeys_group)
main.add_command(serve)
main.add_command(worker)
main.add_command(up)
main.add_command(submit)
main.add_command(demo)
