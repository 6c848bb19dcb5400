"""The score's log-odds: a column with resolution at the top of the scale (issue 15).

Placeholder in the chain: the owner of this revision fills it in.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 14:30:00
"""

from alembic import op  # noqa: F401
import sqlalchemy as sa  # noqa: F401

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""


def downgrade() -> None:
    """Revert this revision."""
