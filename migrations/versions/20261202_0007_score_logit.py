"""The score's log-odds: a column with resolution at the top of the scale (issue 15).

The bounded score s = (sum((x - r)^2) + eps) / (sum(x^2) + sum(r^2) + eps) is stored as a float32 value,
so every s above 1 - 2**-25 reads 1.0000 and "highest score first" cannot order those sketches. The
workers now also store ``score_logit`` = log(s / (1 - s)), computed from the model's float64 sums
(models.formulas), and "highest score first" orders by it.

- ``sketches.score_logit`` (float, NULL while unscored), with the indexes (flagged, score_logit) for the
  flagged gallery and (score_logit) for the sketches page.
- Backfill: rows scored before this revision get the log-odds of their stored score. Their resolution is
  the stored score's: a score of 1 stands for "at least" log(2**25 - 1) = 17.33 (the float32 rounding
  bound), so those rows still tie among themselves; rescored or new rows do not.
- Flags, scores and thresholds are untouched: the flag rule stays ``score > threshold`` and thresholds
  stay on the bounded scale, so the threshold history keeps its meaning (the dashboard shows each
  threshold's log-odds beside it).

On PostgreSQL the indexes are built CONCURRENTLY (intake and workers keep writing while they build).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 14:30:00
"""

import math

from alembic import op
import sqlalchemy as sa

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

COLUMN = "score_logit"
INDEXES = {
    "ix_sketches_flagged_score_logit": ["flagged", "score_logit"],
    "ix_sketches_score_logit": ["score_logit"],
}
# The values service.core.sketches.score_logit_of gives, fixed here as they were when this revision was written.
SATURATED_LOGIT = math.log(2.0**25 - 1.0)
SATURATED_SCORE = 1.0 - 2.0**-25
FLOOR_LOGIT = math.log(2.0**-149)
FLOOR_SCORE = 2.0**-149

_sketches = sa.table("sketches", sa.column("score", sa.Float), sa.column(COLUMN, sa.Float))


def _ensure_ln(bind) -> None:
    """SQLite without its math functions gets ``ln`` from Python for this connection."""
    if bind.dialect.name != "sqlite":
        return
    try:
        bind.exec_driver_sql("SELECT ln(0.5)")
    except sa.exc.OperationalError:
        raw = bind.connection.driver_connection
        raw.create_function("ln", 1, lambda v: None if v is None or v <= 0 else math.log(v), deterministic=True)


def upgrade() -> None:
    """Apply this revision."""
    bind = op.get_bind()
    with op.batch_alter_table("sketches") as batch:
        batch.add_column(sa.Column(COLUMN, sa.Float(), nullable=True))
    _ensure_ln(bind)
    score = _sketches.c.score
    op.execute(
        _sketches.update()
        .where(score.is_not(None))
        .values(
            {
                COLUMN: sa.case(
                    (score >= SATURATED_SCORE, SATURATED_LOGIT),
                    (score <= FLOOR_SCORE, FLOOR_LOGIT),
                    else_=sa.func.ln(score) - sa.func.ln(1.0 - score),
                )
            }
        )
    )
    if bind.dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            for name, columns in INDEXES.items():
                op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
                op.create_index(name, "sketches", columns, postgresql_concurrently=True)
        return
    for name, columns in INDEXES.items():
        op.create_index(name, "sketches", columns)


def downgrade() -> None:
    """Revert this revision (scores, flags and thresholds were never changed by it)."""
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            for name in INDEXES:
                op.drop_index(name, table_name="sketches", postgresql_concurrently=True, if_exists=True)
    else:
        for name in INDEXES:
            op.drop_index(name, table_name="sketches")
    with op.batch_alter_table("sketches") as batch:
        batch.drop_column(COLUMN)
