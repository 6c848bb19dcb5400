"""What the CLI's commands share: settings read now, a database session with readable errors."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import click


def load_settings():
    """Settings read from the environment now (not the process-wide cache: one command, one reading)."""
    from service.core.settings import Settings

    try:
        return Settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise click.ClickException(f"invalid configuration: {exc}") from None


@contextmanager
def db_session() -> Iterator:
    """A committed session on the configured database, with database errors as clear CLI errors."""
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.orm import Session
    from sqlalchemy.pool import NullPool

    from service.core.db import make_engine

    settings = load_settings()
    engine = make_engine(settings.database_url, poolclass=NullPool)
    try:
        with Session(engine, expire_on_commit=False) as session, session.begin():
            yield session
    except SQLAlchemyError as exc:
        detail = getattr(exc, "orig", None) or exc
        raise click.ClickException(
            f"database error on {redacted(settings.database_url)}: {type(exc).__name__}: {detail}"
            "\n(has the schema been created? run `sketchwatch db upgrade`)"
        ) from None
    finally:
        engine.dispose()


def redacted(url: str) -> str:
    """The database URL with its password masked, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for messages
        return "<database>"
