"""Alembic: one head, and the migrated schema equals the SQLAlchemy models (SQLite and PostgreSQL)."""

from __future__ import annotations

import re

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from service.core.migrate import MIGRATIONS_DIR, heads, upgrade
from service.core.partitions import include_name
from service.core.schema import Base
from stack_fixtures import fresh_pg_database


def test_single_head():
    assert len(heads()) == 1


def test_revisions_carry_descriptive_slugs():
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        slug = re.sub(r"^\d{8}_[0-9a-f]+_", "", path.stem)
        assert len(slug.split("_")) >= 2, f"{path.name} has no descriptive slug"


def _diff(url: str) -> list:
    upgrade(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        # Partitions of sketches (PostgreSQL) are made at run time, not declared in the models.
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "include_name": include_name})
        diff = compare_metadata(ctx, Base.metadata)
    engine.dispose()
    return diff


def test_sqlite_schema_matches_models(tmp_path):
    assert _diff(f"sqlite:///{tmp_path / 'm.db'}") == []


@pytest.fixture
def pg_empty_url():
    """A brand-new, empty PostgreSQL database, dropped afterwards."""
    with fresh_pg_database(migrate=False) as url:
        yield url


def test_postgres_schema_matches_models(pg_empty_url):
    assert _diff(pg_empty_url) == []
