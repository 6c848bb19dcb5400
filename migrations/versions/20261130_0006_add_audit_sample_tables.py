"""Audit samples: stratified random draws of scored sketches, for unbiased precision and recall.

- ``audit_rounds``: one audit (who started it, when, the threshold that splits its frame into two strata,
  the frame's last sketch id and the size of each stratum).
- ``audit_samples``: the sketches drawn into a round, each with its stratum (``above`` or ``below``).

Reviews of sampled sketches are ordinary reviews: the sample only says which verdicts were drawn at
random, and from which stratum, so they can be weighted (service.quality).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 09:00:00
"""

from alembic import op
import sqlalchemy as sa

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "audit_rounds",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("frame_max_id", sa.BigInteger(), nullable=False),
        sa.Column("population_above", sa.Integer(), nullable=False),
        sa.Column("population_below", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_rounds")),
    )
    op.create_table(
        "audit_samples",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=False),
        sa.Column("sketch_id", BigId, nullable=False),
        sa.Column("stratum", sa.String(length=5), nullable=False),
        sa.Column("drawn_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["round_id"], ["audit_rounds.id"], name=op.f("fk_audit_samples_round_id_audit_rounds"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["sketch_id"], ["sketches.id"], name=op.f("fk_audit_samples_sketch_id_sketches"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_samples")),
        sa.UniqueConstraint("round_id", "sketch_id", name="uq_audit_samples_round_sketch"),
    )
    op.create_index(op.f("ix_audit_samples_sketch_id"), "audit_samples", ["sketch_id"])


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index(op.f("ix_audit_samples_sketch_id"), table_name="audit_samples")
    op.drop_table("audit_samples")
    op.drop_table("audit_rounds")
