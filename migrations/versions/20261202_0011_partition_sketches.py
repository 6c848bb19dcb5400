"""Sketches partitioned by submission time on PostgreSQL (issue 20).

Placeholder in the chain: the owner of this revision fills it in.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 14:30:00
"""

from alembic import op  # noqa: F401
import sqlalchemy as sa  # noqa: F401

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""


def downgrade() -> None:
    """Revert this revision."""
