"""Compact sketch rows: packed drawings and bitmaps round-trip exactly, migration 0010 keeps every row."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import orjson
import pytest
from alembic import command
from sqlalchemy import create_engine, text

from service.core.migrate import alembic_config
from service.core.packing import (
    BITMAP_BYTES,
    PackingError,
    pack_bitmap,
    pack_drawing,
    unpack_bitmap,
    unpack_drawing,
)
from stack_fixtures import fresh_pg_database

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "quickdraw"


def _drawings(n: int) -> list:
    path = DATA / "others.ndjson"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    out = []
    with open(path, "rb") as fh:
        for line in itertools.islice(fh, 4 * n):
            rec = orjson.loads(line)
            if rec.get("format", "simplified") == "simplified":
                out.append(rec["drawing"])
    return out[:n]


def _bitmaps(n: int) -> np.ndarray:
    path = DATA / "others_bitmaps_28.npy"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    return np.asarray(np.load(path, mmap_mode="r")[:n], dtype=np.uint8)


# --------------------------------------------------------------------------- packing


def test_drawings_round_trip_exactly_and_small():
    drawings = _drawings(500)
    packed = [pack_drawing(d) for d in drawings]
    assert [unpack_drawing(p) for p in packed] == drawings
    json_bytes = sum(len(orjson.dumps(d)) for d in drawings)
    assert sum(map(len, packed)) < json_bytes / 3


@pytest.mark.parametrize(
    "drawing",
    [
        [[[0], [255]]],
        [[[], []]],
        [[list(range(256)), list(range(255, -1, -1))]] * 3,
        [[[0, 300], [1, 2]]],  # outside 0..255: the JSON fallback
        [[[0.5, 2], [1, 2]]],
        [[[1, 2], [3, 4], [5, 6]]],  # a raw stroke with times
    ],
)
def test_unusual_drawings_round_trip(drawing):
    assert unpack_drawing(pack_drawing(drawing)) == drawing


def test_none_and_corrupt_drawings():
    assert pack_drawing(None) is None and unpack_drawing(None) is None
    with pytest.raises(PackingError):
        unpack_drawing(b"\x07abc")
    with pytest.raises(PackingError):
        unpack_drawing(pack_drawing([[[1, 2], [3, 4]]])[:-1])


def test_bitmaps_round_trip_exactly_and_small():
    bitmaps = _bitmaps(500)
    packed = [pack_bitmap(b.tobytes()) for b in bitmaps]
    assert all(unpack_bitmap(p) == b.tobytes() for p, b in zip(packed, bitmaps, strict=True))
    assert np.mean([len(p) for p in packed]) < BITMAP_BYTES / 2
    noise = np.random.default_rng(0).integers(0, 256, BITMAP_BYTES, dtype=np.uint8).tobytes()
    assert pack_bitmap(noise) == noise and unpack_bitmap(noise) == noise  # incompressible: stored raw
    blank = bytes(BITMAP_BYTES)
    assert unpack_bitmap(pack_bitmap(blank)) == blank
    assert unpack_bitmap(pack_bitmap(memoryview(blank))) == blank


# --------------------------------------------------------------------------- migration 0010


def _seed_0009(url: str, drawings: list, bitmaps: np.ndarray) -> dict[str, dict]:
    """Rows as revision 0009 stored them (JSON drawings, raw bitmaps), one of each kind; {kind: values}."""
    recon = np.clip(bitmaps[0].astype(np.int16) // 2 + 20, 0, 255).astype(np.uint8).tobytes()
    kinds = {
        "flagged": dict(fmt="simplified", drawing=drawings[0], bitmap=bitmaps[1].tobytes(), recon=recon,
                        status="scored", score=0.9, flagged=True, verdict=None),
        "unflagged": dict(fmt="simplified", drawing=drawings[1], bitmap=bitmaps[2].tobytes(), recon=recon,
                          status="scored", score=0.1, flagged=False, verdict=None),
        "reviewed": dict(fmt="raw", drawing=drawings[2], bitmap=bitmaps[3].tobytes(), recon=recon,
                         status="scored", score=0.2, flagged=False, verdict="cat"),
        "image": dict(fmt="image", drawing=None, bitmap=bitmaps[4].tobytes(), recon=recon,
                      status="scored", score=0.3, flagged=False, verdict=None),
        "queued": dict(fmt="simplified", drawing=drawings[3], bitmap=None, recon=None,
                       status="queued", score=None, flagged=None, verdict=None),
        "failed": dict(fmt="simplified", drawing=[[[0, 999], [1, 2]]], bitmap=None, recon=None,
                       status="failed", score=None, flagged=None, verdict=None),
    }  # fmt: skip
    engine = create_engine(url)
    with engine.begin() as conn:
        for kind, v in kinds.items():
            conn.execute(
                text(
                    "INSERT INTO sketches (client, client_ref, submitted_at, source_format, drawing, metadata, "
                    "input_bitmap, reconstruction, status, score, flagged, verdict, attempts) VALUES "
                    "('c', :ref, CURRENT_TIMESTAMP, :fmt, :drawing, :meta, :bitmap, :recon, :status, :score, "
                    ":flagged, :verdict, 0)"
                ),
                {**v, "ref": kind, "drawing": None if v["drawing"] is None else orjson.dumps(v["drawing"]).decode(),
                 "meta": '{"word": "x"}'},  # fmt: skip
            )
        (sketch_id,) = conn.execute(text("SELECT id FROM sketches WHERE client_ref = 'reviewed'")).one()
        conn.execute(
            text("INSERT INTO reviews (sketch_id, verdict, reviewer, created_at, by_client) "
                 "VALUES (:i, 'cat', 'r', CURRENT_TIMESTAMP, false)"),  # fmt: skip
            {"i": sketch_id},
        )
    engine.dispose()
    return kinds


def _stored(url: str) -> dict[str, dict]:
    from sqlalchemy.orm import Session

    from service.core.schema import Sketch

    engine = create_engine(url)
    with Session(engine) as session:
        rows = session.query(Sketch).all()
        out = {
            r.client_ref: dict(drawing=r.drawing, bitmap=r.input_bitmap, recon=r.reconstruction, status=r.status,
                               reviews=len(r.reviews), meta=r.meta)
            for r in rows
        }  # fmt: skip
    engine.dispose()
    return out


@pytest.fixture(params=["sqlite", "postgres"])
def url_at_0009(request, tmp_path):
    """An empty database migrated to revision 0009 (the one before data lifecycle)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'm.db'}"
        command.upgrade(alembic_config(url), "0009")
        yield url
        return
    with fresh_pg_database(migrate=False) as url:
        command.upgrade(alembic_config(url), "0009")
        yield url


def test_migration_0010_keeps_every_row_and_converts(url_at_0009):
    drawings, bitmaps = _drawings(4), _bitmaps(5)
    kinds = _seed_0009(url_at_0009, drawings, bitmaps)
    command.upgrade(alembic_config(url_at_0009), "0010")
    stored = _stored(url_at_0009)
    assert set(stored) == set(kinds)
    for kind, v in kinds.items():
        assert stored[kind]["drawing"] == v["drawing"], kind
        assert stored[kind]["status"] == v["status"] and stored[kind]["meta"] == {"word": "x"}
    # A stroke submission's input bitmap is its rasterized drawing: not kept. An image's is.
    assert stored["image"]["bitmap"] == kinds["image"]["bitmap"]
    assert all(stored[k]["bitmap"] is None for k in ("flagged", "unflagged", "reviewed", "queued"))
    # Reconstructions stay where a reviewer looks: flagged or reviewed.
    assert stored["flagged"]["recon"] == kinds["flagged"]["recon"]
    assert stored["reviewed"]["recon"] == kinds["reviewed"]["recon"] and stored["reviewed"]["reviews"] == 1
    assert stored["unflagged"]["recon"] is None and stored["image"]["recon"] is None

    engine = create_engine(url_at_0009)
    with engine.connect() as conn:
        raw = dict(conn.execute(text("SELECT client_ref, drawing FROM sketches WHERE drawing IS NOT NULL")).all())
    engine.dispose()
    assert len(bytes(raw["flagged"])) < len(orjson.dumps(drawings[0])) / 2

    command.downgrade(alembic_config(url_at_0009), "0009")
    engine = create_engine(url_at_0009)
    with engine.connect() as conn:
        rows = {r.client_ref: r for r in conn.execute(
            text("SELECT client_ref, drawing, input_bitmap, reconstruction FROM sketches"))}  # fmt: skip
    engine.dispose()
    assert set(rows) == set(kinds)
    for kind, v in kinds.items():
        drawing = rows[kind].drawing
        assert (orjson.loads(drawing) if isinstance(drawing, str) else drawing) == v["drawing"]
    assert bytes(rows["image"].input_bitmap) == kinds["image"]["bitmap"]
    assert bytes(rows["flagged"].reconstruction) == kinds["flagged"]["recon"]
    # Scored stroke submissions get their input bitmap rendered again, as the worker had stored it.
    from models.raster import rasterize

    assert bytes(rows["unflagged"].input_bitmap) == rasterize(drawings[1]).tobytes()
    command.upgrade(alembic_config(url_at_0009), "head")
    assert set(_stored(url_at_0009)) == set(kinds)


# --------------------------------------------------------------------------- images of compact rows


@pytest.fixture
def reviewer_app(sqlite_app):
    """The SQLite app with a logged-in reviewer's test client."""
    import re

    from service.core.schema import User
    from service.core.security import hash_password
    from service.extensions import db

    with sqlite_app.app_context():
        db.session.add(User(username="rex", password_hash=hash_password("a-long-password"), role="reviewer"))
        db.session.commit()
    c = sqlite_app.test_client()
    page = c.get("/login")
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page.text).group(1)
    assert c.post("/login", data={"username": "rex", "password": "a-long-password", "csrf_token": token}).status_code == 302
    return sqlite_app, c


def _png(resp) -> np.ndarray:
    import io

    from PIL import Image

    assert resp.status_code == 200 and resp.mimetype == "image/png"
    return np.asarray(Image.open(io.BytesIO(resp.data)))


def test_a_stroke_sketch_shows_its_rasterized_drawing_and_says_its_reconstruction_is_not_kept(reviewer_app):
    import re

    from models.raster import rasterize
    from service.core.schema import Sketch, utcnow
    from service.extensions import db

    app, c = reviewer_app
    drawing = _drawings(1)[0]
    with app.app_context():
        sk = Sketch(client="c", source_format="simplified", drawing=drawing, status="scored", score=0.1, flagged=False,
                    threshold=0.5, model_version="m", scored_at=utcnow(), attempts=1)  # fmt: skip
        db.session.add(sk)
        db.session.commit()
        sid = sk.id
    expected = 255 - rasterize(drawing)
    assert (_png(c.get(f"/sketches/{sid}/input.png?s=1")) == expected).all()
    pair = _png(c.get(f"/sketches/{sid}/pair.png?s=1"))
    assert pair.shape == (57, 28) and (pair[:28] == expected).all() and (pair[29:] == 225).all()
    for kind in ("reconstruction", "diff"):
        assert c.get(f"/sketches/{sid}/{kind}.png").status_code == 404
    assert c.get(f"/sketches/{sid}/heatmap.png?t=0.5").status_code == 404
    page = c.get(f"/sketches/{sid}")
    assert page.status_code == 200
    assert 'data-testid="image-input"' in page.text and 'data-testid="recon-not-kept"' in page.text
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page.text).group(1)
    assert c.post(f"/sketches/{sid}/reconstruct").status_code == 400  # no CSRF token
    resp = c.post(f"/sketches/{sid}/reconstruct", data={"csrf_token": token})
    assert resp.status_code == 302 and resp.headers["Location"].endswith(f"/sketches/{sid}")
    assert c.post("/sketches/987654/reconstruct", data={"csrf_token": token}).status_code == 404


def test_scored_rows_are_compact_and_a_worker_computes_a_reconstruction_on_request(stack):
    """Real web, worker, PostgreSQL and Redis: what is stored per row, and the reconstruct task."""
    import time

    from celery import Celery
    from sqlalchemy import select

    from service.core.celery_app import QUEUE, RECONSTRUCT_TASK
    from service.core.schema import Sketch

    s = stack("postgres")
    drawings = _drawings(60)
    resp = s.submit([{"drawing": d, "client_ref": f"compact-{i}"} for i, d in enumerate(drawings)])
    assert resp.status_code == 202, resp.text
    ids = [item["id"] for item in resp.json()["items"]]
    rows = s.wait_for(ids, {"scored"}, timeout=120)
    flagged = [i for i in ids if rows[i].flagged]
    plain = [i for i in ids if not rows[i].flagged]
    assert plain, "expected some unflagged sketches"
    assert all(rows[i].input_bitmap is None for i in ids)
    assert all(rows[i].reconstruction is not None for i in flagged)
    assert all(rows[i].reconstruction is None for i in plain)
    assert [rows[i].drawing for i in ids] == drawings
    with s.session() as session:
        tuple_bytes = session.execute(
            text("SELECT avg(pg_column_size(t.*)) FROM sketches t WHERE id = ANY(:ids)"), {"ids": plain}
        ).scalar_one()
    assert float(tuple_bytes) < 400  # was about 2,000 with JSON drawings and both raw bitmaps

    producer = Celery("test-producer", broker=s.broker_url)
    try:
        producer.send_task(RECONSTRUCT_TASK, args=[plain[:5]], queue=QUEUE)
    finally:
        producer.close()
    deadline = time.monotonic() + 60
    while True:
        with s.session() as session:
            done = session.execute(
                select(Sketch.id, Sketch.reconstruction).where(Sketch.id.in_(plain[:5]))
            ).all()
        if all(r.reconstruction is not None for r in done):
            break
        assert time.monotonic() < deadline, "the worker did not store the reconstructions"
        time.sleep(0.5)
    assert all(len(r.reconstruction) == BITMAP_BYTES for r in done)
