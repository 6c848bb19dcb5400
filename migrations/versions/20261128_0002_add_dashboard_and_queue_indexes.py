"""Add partial indexes for the queue and unreviewed gallery, and a covering submitted_at index.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 03:45:00
"""

from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("sketches") as batch:
        batch.drop_index("ix_sketches_submitted_at")
        batch.create_index(
            "ix_sketches_submitted_at", ["submitted_at"], postgresql_include=["score", "model_version"]
        )
        batch.create_index(
            "ix_sketches_queued_id",
            ["id"],
            postgresql_where=sa.text("status = 'queued'"),
            sqlite_where=sa.text("status = 'queued'"),
        )
        batch.create_index(
            "ix_sketches_unreviewed_flagged_score",
            ["score"],
            postgresql_where=sa.text("flagged AND verdict IS NULL"),
            sqlite_where=sa.text("flagged AND verdict IS NULL"),
        )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("sketches") as batch:
        batch.drop_index("ix_sketches_unreviewed_flagged_score")
        batch.drop_index("ix_sketches_queued_id")
        batch.drop_index("ix_sketches_submitted_at")
        batch.create_index("ix_sketches_submitted_at", ["submitted_at"])
