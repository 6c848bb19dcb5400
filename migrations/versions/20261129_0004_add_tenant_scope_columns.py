"""Tenant scope: admin API keys, clients' own verdicts kept apart from staff verdicts, a per-client index.

- ``api_keys.admin``: an admin key reads and reviews every client's sketches; other keys only their own.
- ``reviews.by_client`` and ``sketches.client_verdict``: a verdict a client records on its own sketch with
  its API key is its label. It is kept in the history and shown back to the client, but it no longer
  becomes the sketch's ``verdict``, which feeds the threshold suggestions shared by every client.
- ``ix_sketches_client_score``: a client's histogram and counts read only that client's index entries.

Existing verdicts recorded through the API (reviewer ``api:<name>``; there were no admin keys before
this revision) become client labels: ``verdict`` is recomputed from the staff reviews alone and
``client_verdict`` from the owning client's own reviews. Verdicts one client recorded on another
client's sketch stay in the history and count for neither.

On PostgreSQL the index is built CONCURRENTLY (intake and workers keep writing while it builds).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 09:00:00
"""

from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

INDEX = "ix_sketches_client_score"
API_REVIEWER = "api:%"

_reviews = sa.table(
    "reviews",
    sa.column("id", sa.BigInteger),
    sa.column("sketch_id", sa.BigInteger),
    sa.column("verdict", sa.String),
    sa.column("reviewer", sa.String),
    sa.column("by_client", sa.Boolean),
)
_sketches = sa.table(
    "sketches",
    sa.column("id", sa.BigInteger),
    sa.column("client", sa.String),
    sa.column("verdict", sa.String),
    sa.column("client_verdict", sa.String),
)


def _latest_verdict(*where) -> sa.ScalarSelect:
    r = _reviews.alias("r")
    return (
        sa.select(r.c.verdict)
        .where(r.c.sketch_id == _sketches.c.id, *[w(r) for w in where])
        .order_by(r.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("admin", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("reviews") as batch:
        batch.add_column(sa.Column("by_client", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("sketches") as batch:
        batch.add_column(sa.Column("client_verdict", sa.String(length=10), nullable=True))

    op.execute(_reviews.update().where(_reviews.c.reviewer.like(API_REVIEWER)).values(by_client=True))
    touched = sa.select(_reviews.c.sketch_id).where(_reviews.c.reviewer.like(API_REVIEWER))
    op.execute(
        _sketches.update()
        .where(_sketches.c.id.in_(touched))
        .values(
            verdict=_latest_verdict(lambda r: r.c.by_client == sa.false()),
            client_verdict=_latest_verdict(lambda r: r.c.reviewer == sa.literal("api:") + _sketches.c.client),
        )
    )

    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
            op.create_index(INDEX, "sketches", ["client", "score"], postgresql_concurrently=True)
        return
    op.create_index(INDEX, "sketches", ["client", "score"])


def downgrade() -> None:
    """Revert this revision (client labels become plain verdicts again, as before it)."""
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.drop_index(INDEX, table_name="sketches", postgresql_concurrently=True, if_exists=True)
    else:
        op.drop_index(INDEX, table_name="sketches")
    touched = sa.select(_reviews.c.sketch_id).where(_reviews.c.by_client == sa.true())
    op.execute(_sketches.update().where(_sketches.c.id.in_(touched)).values(verdict=_latest_verdict()))
    with op.batch_alter_table("sketches") as batch:
        batch.drop_column("client_verdict")
    with op.batch_alter_table("reviews") as batch:
        batch.drop_column("by_client")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("admin")
