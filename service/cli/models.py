"""``sketchwatch models``: the model registry (list, shadow, promote, rollback) and training from reviews.

The registry commands live here; ``train`` lives in :mod:`service.cli.models_train` and is imported only when used.
"""

from __future__ import annotations

import click

from service.cli.lazy import LazyGroup

LAZY_COMMANDS = {"train": "service.cli.models_train:train_command"}


@click.group("models", cls=LazyGroup, lazy_commands=LAZY_COMMANDS)
def models_group() -> None:
    """The model registry: versions, shadow comparison, promote and roll back."""
