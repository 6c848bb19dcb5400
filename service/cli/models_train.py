"""``sketchwatch models train --from-reviews``: queue a training run from reviewers' verdicts."""

from __future__ import annotations

import click


@click.command("train")
def train_command() -> None:
    """Train a candidate model from the base data and reviewed sketches."""
    raise click.ClickException("not built yet")
