"""Data lifecycle: compact sketch rows, a narrower verdict index, and the retention tables (issue 20).

- ``sketches.drawing`` becomes packed bytes (service.core.packing: one byte per coordinate, about 100 bytes
  against 350 as JSON); ``input_bitmap`` and ``reconstruction`` are zlib-packed (784 bytes: raw, as before).
- A stroke submission's input bitmap is dropped: it is its rasterized drawing (models.raster), derived
  again wherever it is shown. Image submissions keep theirs.
- Reconstructions are kept only where a reviewer will look: sketches flagged, reviewed or labelled by their
  client. The others are dropped (the dashboard has them computed again on request).
- ``ix_sketches_verdict`` holds only reviewed sketches (every query on verdict asks for reviewed ones).
- ``retention_policy`` (one row: the limits an admin set on the dashboard), ``retention_changes`` (who
  changed them, from what to what) and ``retention_runs`` (what each run removed).

Every row is kept; existing rows are converted in batches by id. Downgrading restores JSON drawings and
raw bitmaps, and renders the stroke submissions' input bitmaps again (models.raster); reconstructions
dropped here stay dropped.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 14:30:00
"""

from __future__ import annotations

import orjson
import sqlalchemy as sa
from alembic import op

from service.core.packing import pack_bitmap, pack_drawing, unpack_bitmap, unpack_drawing

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BATCH = 5000
NEW = "drawing_packed"
OLD = "drawing_json"


def _loads(value):
    """A JSON column's value as read by a driver: parsed already (psycopg) or text (SQLite)."""
    if value is None or isinstance(value, (list, dict)):
        return value
    return orjson.loads(value)


def _batches(bind, columns: str):
    """Rows of sketches (id first) in id order, BATCH at a time."""
    after = -1
    while True:
        rows = bind.execute(
            sa.text(f"SELECT id, {columns} FROM sketches WHERE id > :after ORDER BY id LIMIT {BATCH}"),
            {"after": after},
        ).all()
        if not rows:
            return
        yield rows
        after = rows[-1][0]


def _retention_tables() -> None:
    op.create_table(
        "retention_policy",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("images_days", sa.Integer(), nullable=True),
        sa.Column("sketches_days", sa.Integer(), nullable=True),
        sa.Column("kept_days", sa.Integer(), nullable=True),
        sa.Column("images_done_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_by", sa.String(100), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_retention_policy"),
    )
    op.create_table(
        "retention_changes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changed_by", sa.String(100), nullable=False),
        sa.Column("before", sa.JSON(), nullable=False),
        sa.Column("after", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_retention_changes"),
    )
    op.create_index("ix_retention_changes_changed_at", "retention_changes", ["changed_at"])
    op.create_table(
        "retention_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("trigger", sa.String(20), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("removed", sa.JSON(), nullable=False),
        sa.Column("cutoffs", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_retention_runs"),
    )
    op.create_index("ix_retention_runs_started_at", "retention_runs", ["started_at"])


# PostgreSQL: one statement per batch (the rows' values as arrays) instead of one UPDATE per row.
_PG_UPDATE = f"""
    UPDATE sketches AS s SET {NEW} = v.d, input_bitmap = v.b, reconstruction = v.r
    FROM unnest(CAST(:ids AS bigint[]), CAST(:ds AS bytea[]), CAST(:bs AS bytea[]), CAST(:rs AS bytea[]))
         AS v(id, d, b, r)
    WHERE s.id = v.id
"""


def _update_batch(bind, update, params: list[dict]) -> None:
    """Write one batch of converted rows."""
    if bind.dialect.name != "postgresql":
        bind.execute(update, params)
        return
    bind.execute(
        sa.text(_PG_UPDATE),
        {
            "ids": [p["id"] for p in params],
            "ds": [p["d"] for p in params],
            "bs": [p["b"] for p in params],
            "rs": [p["r"] for p in params],
        },
    )


def _swap_columns(new: str) -> None:
    """Drop ``drawing`` and rename ``new`` to it, in place on both databases.

    Never a batch (copy-and-rename) table on SQLite: dropping the old table there would cascade into
    reviews and audit samples (foreign keys are on, and cannot be turned off inside the migration's
    transaction). SQLite has had DROP COLUMN since 3.35 and RENAME COLUMN since 3.25.
    """
    op.execute("ALTER TABLE sketches DROP COLUMN drawing")
    op.execute(f"ALTER TABLE sketches RENAME COLUMN {new} TO drawing")


def upgrade() -> None:
    """Apply this revision."""
    bind = op.get_bind()
    _retention_tables()
    op.add_column("sketches", sa.Column(NEW, sa.LargeBinary(), nullable=True))
    update = sa.text(
        f"UPDATE sketches SET {NEW} = :d, input_bitmap = :b, reconstruction = :r WHERE id = :id"
    ).bindparams(
        sa.bindparam("d", type_=sa.LargeBinary()),
        sa.bindparam("b", type_=sa.LargeBinary()),
        sa.bindparam("r", type_=sa.LargeBinary()),
    )
    # As text: orjson parses it several times faster than the driver's json module.
    cols = "CAST(drawing AS TEXT), input_bitmap, reconstruction, flagged, verdict, client_verdict"
    for rows in _batches(bind, cols):
        params = []
        for sketch_id, drawing, bitmap, recon, flagged, verdict, client_verdict in rows:
            drawing = _loads(drawing)
            keep_recon = bool(flagged) or verdict is not None or client_verdict is not None
            params.append(
                {
                    "id": sketch_id,
                    "d": pack_drawing(drawing),
                    "b": pack_bitmap(bitmap) if drawing is None else None,
                    "r": pack_bitmap(recon) if keep_recon else None,
                }
            )
        _update_batch(bind, update, params)
    _swap_columns(NEW)
    op.drop_index("ix_sketches_verdict", table_name="sketches")
    op.create_index(
        "ix_sketches_verdict",
        "sketches",
        ["verdict"],
        postgresql_where=sa.text("verdict IS NOT NULL"),
        sqlite_where=sa.text("verdict IS NOT NULL"),
    )


def downgrade() -> None:
    """Revert this revision."""
    bind = op.get_bind()
    op.drop_index("ix_sketches_verdict", table_name="sketches")
    op.create_index("ix_sketches_verdict", "sketches", ["verdict"])
    op.add_column("sketches", sa.Column(OLD, sa.JSON(), nullable=True))
    update = sa.text(
        f"UPDATE sketches SET {OLD} = :d, input_bitmap = :b, reconstruction = :r WHERE id = :id"
    ).bindparams(
        sa.bindparam("d", type_=sa.JSON()),
        sa.bindparam("b", type_=sa.LargeBinary()),
        sa.bindparam("r", type_=sa.LargeBinary()),
    )
    for rows in _batches(bind, "drawing, input_bitmap, reconstruction, status"):
        drawings = {r[0]: unpack_drawing(r[1]) for r in rows}
        # The revision before this one stored every scored sketch's input bitmap: render the dropped ones.
        render = [r[0] for r in rows if r[2] is None and drawings[r[0]] is not None and r[4] != "queued"]
        rendered = {}
        if render:
            from models.raster import rasterize_batch

            rendered = dict(zip(render, (b.tobytes() for b in rasterize_batch([drawings[i] for i in render]))))
        bind.execute(
            update,
            [
                {
                    "id": r[0],
                    "d": drawings[r[0]],
                    "b": rendered.get(r[0], unpack_bitmap(r[2])),
                    "r": unpack_bitmap(r[3]),
                }
                for r in rows
            ],
        )
    _swap_columns(OLD)
    op.drop_index("ix_retention_runs_started_at", table_name="retention_runs")
    op.drop_table("retention_runs")
    op.drop_index("ix_retention_changes_changed_at", table_name="retention_changes")
    op.drop_table("retention_changes")
    op.drop_table("retention_policy")
