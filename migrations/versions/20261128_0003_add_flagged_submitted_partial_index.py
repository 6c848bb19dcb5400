"""Add a partial index over flagged sketches: (submitted_at) INCLUDE (model_version) WHERE flagged.

The dashboard counts flagged sketches per model version and per time window. Through
``(flagged, score)`` each of those counts read the heap once per flagged row to check
``model_version`` or ``submitted_at`` (~80k random heap pages at 10^6 rows, 330-650 ms); this index
answers them from the index alone and holds only the flagged rows (3 MB at 10^6 rows).

On PostgreSQL the index is built CONCURRENTLY, so intake and the workers keep writing while it
builds; a build that failed half-way leaves an invalid index, which the next attempt drops first.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 05:10:00
"""

from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

INDEX = "ix_sketches_flagged_submitted"


def upgrade() -> None:
    """Apply this revision."""
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
            op.create_index(
                INDEX,
                "sketches",
                ["submitted_at"],
                postgresql_include=["model_version"],
                postgresql_where=sa.text("flagged"),
                postgresql_concurrently=True,
            )
        return
    op.create_index(INDEX, "sketches", ["submitted_at"], sqlite_where=sa.text("flagged"))


def downgrade() -> None:
    """Revert this revision."""
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.drop_index(INDEX, table_name="sketches", postgresql_concurrently=True, if_exists=True)
        return
    op.drop_index(INDEX, table_name="sketches")
