"""Sketches partitioned by submission time on PostgreSQL; client_refs apart; the score-bucket rollup (issue 20).

- PostgreSQL: ``sketches`` becomes a table partitioned by RANGE (submitted_at), built from the live table
  (``LIKE ... INCLUDING ALL`` minus the keys, so whatever columns earlier revisions added come along), with
  one partition per ``SKETCHWATCH_PARTITION_DAYS`` period from the oldest stored sketch to a few periods
  ahead, plus a default partition. Every row is copied; the id sequence is kept (ids go on where they were);
  the indexes are re-created from their live definitions. The primary key becomes (id, submitted_at), as a
  partitioned table's keys must hold the partition key.
- Both backends: foreign keys to ``sketches.id`` (reviews, audit samples) become plain indexed columns
  (deletes are done in code), and the (client, client_ref) uniqueness moves to ``sketch_refs``.
- ``score_buckets`` / ``score_bucket_deltas``: the histogram rollup, kept by triggers on ``sketches`` and
  filled here from the stored rows; ``reflag_state``: progress of the batched re-flag after a threshold change.

The copy rewrites the whole table once and holds it locked meanwhile: run it in a maintenance window.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 14:30:00
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from alembic import op
import sqlalchemy as sa

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# Kept in step with service.core.partitions (a revision must not change when the code moves on).
ORIGIN = datetime(2000, 1, 3, tzinfo=timezone.utc)  # a Monday
PERIOD_DAYS = 7
AHEAD_PERIODS = 2
BUCKETS = 10000
SKETCH_FKS = (("reviews", "fk_reviews_sketch_id_sketches"), ("audit_samples", "fk_audit_samples_sketch_id_sketches"))


# --------------------------------------------------------------------------- rollup triggers (both backends)

_PG_BUCKET = f"least(greatest(floor({{row}}.score * {BUCKETS}), 0), {BUCKETS - 1})::int"


def _pg_delta(row: str, n: int) -> str:
    return (
        "INSERT INTO score_bucket_deltas (client, model_version, bucket, flagged, verdict, n) VALUES "
        f"({row}.client, coalesce({row}.model_version, ''), {_PG_BUCKET.format(row=row)}, "
        f"coalesce({row}.flagged, false), coalesce({row}.verdict, ''), {n});"
    )


PG_TRIGGERS = [
    f"""
    CREATE OR REPLACE FUNCTION sketchwatch_score_buckets() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP <> 'INSERT' AND OLD.score IS NOT NULL THEN
        {_pg_delta('OLD', -1)}
      END IF;
      IF TG_OP <> 'DELETE' AND NEW.score IS NOT NULL THEN
        {_pg_delta('NEW', 1)}
      END IF;
      RETURN NULL;
    END $$
    """,
    "CREATE TRIGGER trg_sketches_buckets_insert AFTER INSERT ON sketches FOR EACH ROW "
    "WHEN (NEW.score IS NOT NULL) EXECUTE FUNCTION sketchwatch_score_buckets()",
    "CREATE TRIGGER trg_sketches_buckets_update AFTER UPDATE ON sketches FOR EACH ROW "
    "WHEN (OLD.score IS DISTINCT FROM NEW.score OR OLD.flagged IS DISTINCT FROM NEW.flagged "
    "OR OLD.verdict IS DISTINCT FROM NEW.verdict OR OLD.model_version IS DISTINCT FROM NEW.model_version "
    "OR OLD.client IS DISTINCT FROM NEW.client) EXECUTE FUNCTION sketchwatch_score_buckets()",
    "CREATE TRIGGER trg_sketches_buckets_delete AFTER DELETE ON sketches FOR EACH ROW "
    "WHEN (OLD.score IS NOT NULL) EXECUTE FUNCTION sketchwatch_score_buckets()",
]

_SQLITE_BUCKET = f"min(max(CAST({{row}}.score * {BUCKETS} AS INTEGER), 0), {BUCKETS - 1})"


def _sqlite_delta(row: str, n: int) -> str:
    return (
        "INSERT INTO score_bucket_deltas (client, model_version, bucket, flagged, verdict, n) "
        f"SELECT {row}.client, coalesce({row}.model_version, ''), {_SQLITE_BUCKET.format(row=row)}, "
        f"coalesce({row}.flagged, 0), coalesce({row}.verdict, ''), {n} WHERE {row}.score IS NOT NULL;"
    )


SQLITE_TRIGGERS = [
    f"CREATE TRIGGER trg_sketches_buckets_insert AFTER INSERT ON sketches BEGIN {_sqlite_delta('NEW', 1)} END",
    "CREATE TRIGGER trg_sketches_buckets_update AFTER UPDATE OF score, flagged, verdict, model_version, client "
    f"ON sketches BEGIN {_sqlite_delta('OLD', -1)} {_sqlite_delta('NEW', 1)} END",
    f"CREATE TRIGGER trg_sketches_buckets_delete AFTER DELETE ON sketches BEGIN {_sqlite_delta('OLD', -1)} END",
]
TRIGGER_NAMES = ("trg_sketches_buckets_insert", "trg_sketches_buckets_update", "trg_sketches_buckets_delete")


def _fill_buckets(dialect: str) -> None:
    bucket = (_PG_BUCKET if dialect == "postgresql" else _SQLITE_BUCKET).format(row="sketches")
    flagged = "coalesce(flagged, false)" if dialect == "postgresql" else "coalesce(flagged, 0)"
    op.execute(
        "INSERT INTO score_buckets (client, model_version, bucket, flagged, verdict, n) "
        f"SELECT client, coalesce(model_version, ''), {bucket}, {flagged}, coalesce(verdict, ''), count(*) "
        f"FROM sketches WHERE score IS NOT NULL GROUP BY 1, 2, 3, 4, 5"
    )
    # Client '' sums every client (service.core.score_rollup.ALL_CLIENTS).
    op.execute(
        "INSERT INTO score_buckets (client, model_version, bucket, flagged, verdict, n) "
        "SELECT '', model_version, bucket, flagged, verdict, sum(n) FROM score_buckets GROUP BY 2, 3, 4, 5"
    )


def _create_side_tables() -> None:
    op.create_table(
        "sketch_refs",
        sa.Column("client", sa.String(length=100), nullable=False),
        sa.Column("client_ref", sa.String(length=200), nullable=False),
        sa.Column("sketch_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("client", "client_ref", name=op.f("pk_sketch_refs")),
    )
    op.create_index(op.f("ix_sketch_refs_sketch_id"), "sketch_refs", ["sketch_id"])
    op.execute(
        "INSERT INTO sketch_refs (client, client_ref, sketch_id) "
        "SELECT client, client_ref, id FROM sketches WHERE client_ref IS NOT NULL"
    )
    op.create_table(
        "score_buckets",
        sa.Column("client", sa.String(length=100), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("verdict", sa.String(length=10), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "client", "model_version", "bucket", "flagged", "verdict", name=op.f("pk_score_buckets")
        ),
    )
    op.create_table(
        "score_bucket_deltas",
        sa.Column("client", sa.String(length=100), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("verdict", sa.String(length=10), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
    )
    op.create_table(
        "reflag_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("done", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reflag_state")),
    )


def _drop_side_tables() -> None:
    op.drop_table("reflag_state")
    op.drop_table("score_bucket_deltas")
    op.drop_table("score_buckets")
    op.drop_index(op.f("ix_sketch_refs_sketch_id"), table_name="sketch_refs")
    op.drop_table("sketch_refs")


# --------------------------------------------------------------------------- PostgreSQL


def _period_start(t: datetime) -> datetime:
    return ORIGIN + timedelta(days=PERIOD_DAYS * ((t - ORIGIN) // timedelta(days=PERIOD_DAYS)))


def _pg_upgrade() -> None:
    bind = op.get_bind()
    _create_side_tables()
    for table, name in SKETCH_FKS:
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}")
    # Whatever other foreign key still points at sketches (none is expected) would block the swap.
    others = bind.execute(
        sa.text(
            "SELECT conrelid::regclass::text, conname FROM pg_constraint "
            "WHERE contype = 'f' AND confrelid = 'sketches'::regclass"
        )
    ).all()
    for table, name in others:
        op.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    # Secondary indexes, as they are now: re-created verbatim on the partitioned table after the copy.
    indexdefs = bind.execute(
        sa.text(
            "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "WHERE x.indrelid = 'sketches'::regclass AND NOT x.indisprimary "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)"
        )
    ).all()
    seq = bind.execute(sa.text("SELECT pg_get_serial_sequence('sketches', 'id')")).scalar()
    for name, _ in indexdefs:
        op.execute(f'DROP INDEX "{name}"')
    op.execute("ALTER TABLE sketches DROP CONSTRAINT IF EXISTS uq_sketches_client_client_ref")
    op.execute("ALTER TABLE sketches RENAME CONSTRAINT pk_sketches TO pk_sketches_unpartitioned")
    op.execute("ALTER TABLE sketches RENAME TO sketches_unpartitioned")
    op.execute(
        "CREATE TABLE sketches (LIKE sketches_unpartitioned INCLUDING DEFAULTS INCLUDING GENERATED "
        "INCLUDING STORAGE INCLUDING COMMENTS INCLUDING COMPRESSION) PARTITION BY RANGE (submitted_at)"
    )
    oldest = bind.execute(sa.text("SELECT min(submitted_at) FROM sketches_unpartitioned")).scalar()
    now = datetime.now(timezone.utc)
    start = _period_start(min(oldest, now) if oldest is not None else now)
    stop = _period_start(now) + timedelta(days=PERIOD_DAYS * (AHEAD_PERIODS + 1))
    while start < stop:
        end = start + timedelta(days=PERIOD_DAYS)
        op.execute(
            f"CREATE TABLE sketches_p{start:%Y%m%d} PARTITION OF sketches "
            f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        )
        start = end
    op.execute("CREATE TABLE sketches_default PARTITION OF sketches DEFAULT")
    op.execute("INSERT INTO sketches SELECT * FROM sketches_unpartitioned")
    if seq:
        op.execute(f"ALTER SEQUENCE {seq} OWNED BY sketches.id")
    op.execute("ALTER TABLE sketches ADD CONSTRAINT pk_sketches PRIMARY KEY (id, submitted_at)")
    for _, definition in indexdefs:
        op.execute(definition)
    op.execute("DROP TABLE sketches_unpartitioned")
    for statement in PG_TRIGGERS:
        op.execute(statement)
    _fill_buckets("postgresql")
    op.execute("ANALYZE sketches")


def _pg_downgrade() -> None:
    bind = op.get_bind()
    for name in TRIGGER_NAMES:
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON sketches")
    op.execute("DROP FUNCTION IF EXISTS sketchwatch_score_buckets()")
    indexdefs = bind.execute(
        sa.text(
            "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "WHERE x.indrelid = 'sketches'::regclass AND NOT x.indisprimary"
        )
    ).all()
    seq = bind.execute(sa.text("SELECT pg_get_serial_sequence('sketches', 'id')")).scalar()
    for name, _ in indexdefs:
        op.execute(f'DROP INDEX "{name}"')
    op.execute("ALTER TABLE sketches RENAME CONSTRAINT pk_sketches TO pk_sketches_partitioned")
    op.execute("ALTER TABLE sketches RENAME TO sketches_partitioned")
    op.execute(
        "CREATE TABLE sketches (LIKE sketches_partitioned INCLUDING DEFAULTS INCLUDING GENERATED "
        "INCLUDING STORAGE INCLUDING COMMENTS INCLUDING COMPRESSION)"
    )
    op.execute("INSERT INTO sketches SELECT * FROM sketches_partitioned")
    if seq:
        op.execute(f"ALTER SEQUENCE {seq} OWNED BY sketches.id")
    op.execute("DROP TABLE sketches_partitioned")
    op.execute("ALTER TABLE sketches ADD CONSTRAINT pk_sketches PRIMARY KEY (id)")
    for _, definition in indexdefs:
        # A partitioned table's index reads "ON ONLY sketches"; the plain table takes the same index.
        op.execute(definition.replace(" ON ONLY ", " ON ", 1))
    op.execute(
        "ALTER TABLE sketches ADD CONSTRAINT uq_sketches_client_client_ref UNIQUE (client, client_ref)"
    )
    # Reviews and samples of sketches deleted while no key held them go, as the cascade would have done.
    for table, name in SKETCH_FKS:
        op.execute(f"DELETE FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM sketches s WHERE s.id = t.sketch_id)")
        op.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY (sketch_id) REFERENCES sketches (id) "
            "ON DELETE CASCADE"
        )
    _drop_side_tables()


# --------------------------------------------------------------------------- SQLite


def _sqlite_upgrade() -> None:
    _create_side_tables()
    for table, name in SKETCH_FKS:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(name, type_="foreignkey")
    with op.batch_alter_table("sketches") as batch:
        batch.drop_constraint("uq_sketches_client_client_ref", type_="unique")
    # After the batch rebuild of sketches: a rebuild drops the triggers of the table it replaces.
    for statement in SQLITE_TRIGGERS:
        op.execute(statement)
    _fill_buckets("sqlite")


def _sqlite_downgrade() -> None:
    for name in TRIGGER_NAMES:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
    with op.batch_alter_table("sketches") as batch:
        batch.create_unique_constraint("uq_sketches_client_client_ref", ["client", "client_ref"])
    for table, name in SKETCH_FKS:
        op.execute(f"DELETE FROM {table} WHERE sketch_id NOT IN (SELECT id FROM sketches)")
        with op.batch_alter_table(table) as batch:
            batch.create_foreign_key(name, "sketches", ["sketch_id"], ["id"], ondelete="CASCADE")
    _drop_side_tables()


def upgrade() -> None:
    """Apply this revision."""
    if op.get_bind().dialect.name == "postgresql":
        _pg_upgrade()
    else:
        _sqlite_upgrade()


def downgrade() -> None:
    """Revert this revision (PostgreSQL: one unpartitioned table again, every row kept)."""
    if op.get_bind().dialect.name == "postgresql":
        _pg_downgrade()
    else:
        _sqlite_downgrade()
