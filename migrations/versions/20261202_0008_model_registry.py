"""The model registry: model versions, their events, shadow scores, score history and re-scoring jobs (issue 16).

- ``model_versions``: each version's artifact URI, parent, maker, data fingerprint, metrics, threshold and
  status (candidate, shadow, active, retired).
- ``model_events``: every registry action with who and when; rollback walks back the promotes.
- ``shadow_scores``: the shadow candidate's score of each new sketch (primary key sketch + version).
- ``score_history``: a sketch's previous score when a re-scoring by a newer version replaced it.
- ``rescore_jobs``: background re-scoring of stored sketches after a promote, with its progress.

No table declares a foreign key to ``sketches.id``: sketches becomes a partitioned table on PostgreSQL.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 14:30:00
"""

from alembic import op
import sqlalchemy as sa

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("parent_version", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("data_fingerprint", sa.JSON(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("artifact_uri", sa.Text(), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("promoted_by", sa.String(length=100), nullable=True),
        sa.Column("last_threshold", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("version", name=op.f("uq_model_versions_version")),
    )
    op.create_index(op.f("ix_model_versions_status"), "model_versions", ["status"])
    op.create_table(
        "model_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("action", sa.String(length=10), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=True),
        sa.Column("previous_version", sa.String(length=64), nullable=True),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_events")),
    )
    op.create_table(
        "shadow_scores",
        sa.Column("sketch_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sketch_id", "model_version", name=op.f("pk_shadow_scores")),
    )
    op.create_index("ix_shadow_scores_model_version_score", "shadow_scores", ["model_version", "score"])
    op.create_table(
        "score_history",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("sketch_id", sa.BigInteger(), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("flagged", sa.Boolean(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("replaced_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("replaced_by", sa.String(length=64), nullable=False),
        sa.Column("rescore_job_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_score_history")),
    )
    op.create_index(op.f("ix_score_history_sketch_id"), "score_history", ["sketch_id"])
    op.create_table(
        "rescore_jobs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("requested_by", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("max_id", sa.BigInteger(), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rescore_jobs")),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("rescore_jobs")
    op.drop_index(op.f("ix_score_history_sketch_id"), table_name="score_history")
    op.drop_table("score_history")
    op.drop_index("ix_shadow_scores_model_version_score", table_name="shadow_scores")
    op.drop_table("shadow_scores")
    op.drop_table("model_events")
    op.drop_index(op.f("ix_model_versions_status"), table_name="model_versions")
    op.drop_table("model_versions")
