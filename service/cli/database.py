"""``sketchwatch db``: the database schema."""

from __future__ import annotations

import click

from service.cli.common import load_settings, redacted


@click.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target Alembic revision.")
def db_upgrade(revision: str) -> None:
    """Create or migrate the schema of SKETCHWATCH_DATABASE_URL."""
    from service.core.migrate import upgrade

    settings = load_settings()
    if settings.database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        upgrade(settings.database_url, revision)
    except Exception as exc:  # noqa: BLE001 - Alembic and drivers raise many types
        raise click.ClickException(f"migration of {redacted(settings.database_url)} failed: {exc}") from None
    click.echo(f"database {redacted(settings.database_url)} is at revision {revision}")
