"""Intake API: submissions in every format, validation, idempotency, queueing order and the read endpoints.

Runs once on SQLite and once on a fresh PostgreSQL database (created and dropped here).
"""

from __future__ import annotations

import base64
import io
import json
import math
import sqlite3
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from PIL import Image, ImageDraw
from sqlalchemy import func, select, update

from service.app import create_app
from service.core.db import make_engine
from service.extensions import db
from service.queue import flush
from service.core.schema import ApiKey, Sketch, utcnow
from service.core.security import hash_api_key, new_api_key
from stack_fixtures import migrated_url

SHARED = Path(__file__).resolve().parents[1].parent / "shared/data/quickdraw"
needs_data = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data folder {SHARED} is absent")
URL = "/api/v1/sketches"
SQUARE = [[[0, 255, 255, 0, 0], [0, 0, 255, 255, 0]]]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request, tmp_path_factory):
    """A migrated database: a temp SQLite file, or a fresh PostgreSQL database dropped afterwards."""
    with migrated_url(request.param, tmp_path_factory.mktemp("api-db")) as url:
        try:
            yield url
        finally:
            db.dispose()


@pytest.fixture(scope="module")
def broker_dir(database_url, tmp_path_factory):
    """One throwaway sqla+sqlite broker per database (creating its tables costs a second)."""
    return tmp_path_factory.mktemp("broker")


def make_app(database_url: str, broker_dir: Path, **overrides):
    """An app in testing mode on ``database_url`` with a throwaway broker."""
    config = {
        "env": "testing",
        "data_dir": broker_dir,
        "database_url": database_url,
        "broker_url": f"sqla+sqlite:///{broker_dir / 'broker.db'}",
        "ratelimit_enabled": False,
        "log_json": False,
        "log_level": "WARNING",
    }
    config.update(overrides)
    return create_app(config)


@pytest.fixture
def app(database_url, broker_dir):
    return make_app(database_url, broker_dir)


def add_key(app, revoked: bool = False) -> tuple[str, str]:
    """Create an API key for a fresh client name; returns (name, key)."""
    name, key = f"client-{uuid.uuid4().hex[:10]}", new_api_key()
    with app.app_context(), db.session_scope() as s:
        s.add(ApiKey(name=name, prefix=key[:8], key_hash=hash_api_key(key), revoked_at=utcnow() if revoked else None))
    return name, key


@pytest.fixture
def key(app):
    return add_key(app)


@pytest.fixture
def client(app):
    return app.test_client()


def auth(key) -> dict:
    return {"Authorization": f"Bearer {key[1]}"}


def rows(app, *conditions) -> list[Sketch]:
    with app.app_context(), db.session_scope() as s:
        return list(s.scalars(select(Sketch).where(*conditions).order_by(Sketch.id)))


def count(app, *conditions) -> int:
    with app.app_context(), db.session_scope() as s:
        return s.scalar(select(func.count()).select_from(Sketch).where(*conditions))


def broker_messages(broker_dir: Path) -> list[dict]:
    """Every task message in the sqla+sqlite broker: headers and decoded body."""
    conn = sqlite3.connect(broker_dir / "broker.db")
    try:
        payloads = [json.loads(p) for (p,) in conn.execute("SELECT payload FROM kombu_message ORDER BY id")]
    finally:
        conn.close()
    return [{"headers": p["headers"], "body": json.loads(base64.b64decode(p["body"]))} for p in payloads]


def cat_lines(n: int) -> list[dict]:
    with open(SHARED / "cat.ndjson", "rb") as fh:
        return [orjson.loads(line) for line, _ in zip(fh, range(n))]


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def paper_drawing(size: int = 200, fmt: str = "PNG") -> bytes:
    """A dark circle drawn on white paper, as a phone photo of a sketch would be."""
    img = Image.new("L", (size, size), 255)
    ImageDraw.Draw(img).ellipse((size // 5, size // 5, 4 * size // 5, 4 * size // 5), outline=0, width=max(2, size // 30))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


# --------------------------------------------------------------------------- submissions


def test_single_sketch_is_stored_queued_and_answered_202(app, client, key):
    r = client.post(URL, json={"drawing": SQUARE, "metadata": {"note": "square"}}, headers=auth(key))
    assert r.status_code == 202, r.json
    assert r.json["duplicate"] is False
    assert r.json["status_url"] == f"{URL}/{r.json['id']}" == r.headers["Location"]
    (row,) = rows(app, Sketch.id == r.json["id"])
    assert row.status == "queued" and row.client == key[0] and row.source_format == "simplified"
    assert row.drawing == SQUARE and row.meta == {"note": "square"}
    assert row.enqueued_at is not None and row.score is None


def test_raw_drawing_is_normalised_into_the_simplified_box(app, client, key):
    raw = [[[1000.5, 1400, 1800], [-300, 100, 500.25], [0, 16, 33]], [[1000, 1800], [500, -300], [50, 70]]]
    r = client.post(URL, json={"drawing": raw, "format": "raw"}, headers=auth(key))
    assert r.status_code == 202, r.json
    (row,) = rows(app, Sketch.id == r.json["id"])
    assert row.source_format == "raw"
    values = [v for stroke in row.drawing for axis in stroke for v in axis]
    assert all(isinstance(v, int) and 0 <= v <= 255 for v in values)
    assert max(values) == 255 and min(values) == 0
    assert all(len(stroke) == 2 for stroke in row.drawing)


@needs_data
def test_json_batch_of_quickdraw_cats(app, client, key):
    items = [{"drawing": line["drawing"], "client_ref": line["key_id"]} for line in cat_lines(10)]
    r = client.post(URL, json=items, headers=auth(key))
    assert r.status_code == 202, r.json
    assert r.json["accepted"] == 10 and r.json["rejected"] == 0
    assert [item["index"] for item in r.json["items"]] == list(range(10))
    stored = {row.client_ref: row for row in rows(app, Sketch.client == key[0])}
    assert set(stored) == {line["key_id"] for line in cat_lines(10)}
    assert stored[items[3]["client_ref"]].drawing == items[3]["drawing"]


@needs_data
def test_ndjson_in_quickdraw_line_format(app, client, key):
    with open(SHARED / "others.ndjson", "rb") as fh:
        lines = [line for line, _ in zip(fh, range(30))]
    body = b"".join(lines[:12]) + b"\n" + b"{not json}\n" + b"".join(lines[24:30])
    r = client.post(URL, data=body, content_type="application/x-ndjson", headers=auth(key))
    assert r.status_code == 202, r.json
    assert r.json["accepted"] == 18 and r.json["rejected"] == 1
    bad = [item for item in r.json["items"] if "error" in item]
    assert bad[0]["index"] == 13 and "invalid JSON" in bad[0]["error"]["message"]
    first = orjson.loads(lines[0])
    (row,) = rows(app, Sketch.client == key[0], Sketch.client_ref == first["key_id"])
    assert row.meta["word"] == first["word"] and row.meta["countrycode"] == first["countrycode"]
    raw_line = orjson.loads(lines[25])
    assert raw_line["format"] == "raw"
    (raw_row,) = rows(app, Sketch.client == key[0], Sketch.client_ref == raw_line["key_id"])
    assert raw_row.source_format == "raw"
    assert all(0 <= v <= 255 for stroke in raw_row.drawing for axis in stroke for v in axis)


def test_ndjson_explicit_client_ref_wins_over_key_id(app, client, key):
    body = orjson.dumps({"key_id": "123", "client_ref": "mine", "word": "cat", "drawing": SQUARE}) + b"\n"
    r = client.post(URL, data=body, content_type="application/x-ndjson", headers=auth(key))
    assert r.status_code == 202
    (row,) = rows(app, Sketch.client == key[0])
    assert row.client_ref == "mine" and row.meta == {"key_id": "123", "word": "cat"}


@needs_data
def test_image_upload_of_a_28px_bitmap_is_stored_as_is(app, client, key):
    bitmap = np.load(SHARED / "cat_bitmaps_28.npy", mmap_mode="r")[0].reshape(28, 28)
    r = client.post(
        URL,
        data={"image": (io.BytesIO(png(bitmap)), "cat.png"), "client_ref": "img-1", "metadata": '{"word": "cat"}'},
        content_type="multipart/form-data",
        headers=auth(key),
    )
    assert r.status_code == 202, r.json
    (row,) = rows(app, Sketch.id == r.json["id"])
    assert row.source_format == "image" and row.drawing is None and row.meta == {"word": "cat"}
    assert row.input_bitmap == bitmap.tobytes()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_image_upload_of_a_photo_is_inverted_and_reduced(app, client, key, fmt):
    data = paper_drawing(fmt=fmt)
    r = client.post(URL, data={"image": (io.BytesIO(data), f"x.{fmt.lower()}")}, headers=auth(key))
    assert r.status_code == 202, r.json
    (row,) = rows(app, Sketch.id == r.json["id"])
    pixels = np.frombuffer(row.input_bitmap, dtype=np.uint8).reshape(28, 28)
    # White ink on black, like the dataset: dark corners, bright ring.
    assert pixels[0, 0] < 30 and pixels[14, 14] < 30 and pixels.max() > 200


def test_image_errors_name_the_field(app, database_url, broker_dir, client, key):
    def post(data):
        return client.post(URL, data=data, content_type="multipart/form-data", headers=auth(key))

    gif = io.BytesIO()
    Image.new("L", (10, 10)).save(gif, format="GIF")
    cases = {
        "not png/jpeg": ({"image": (io.BytesIO(gif.getvalue()), "x.gif")}, "image"),
        "truncated png": ({"image": (io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\0" * 40), "x.png")}, "image"),
        "empty": ({"image": (io.BytesIO(b""), "x.png")}, "image"),
        "missing": ({"client_ref": "x"}, "image"),
        "bad metadata": ({"image": (io.BytesIO(paper_drawing()), "x.png"), "metadata": "{nope"}, "metadata"),
        "metadata not object": ({"image": (io.BytesIO(paper_drawing()), "x.png"), "metadata": "[1]"}, "metadata"),
        "unknown field": ({"image": (io.BytesIO(paper_drawing()), "x.png"), "colour": "red"}, "colour"),
    }
    for label, (data, field) in cases.items():
        r = post(data)
        assert r.status_code == 400, label
        assert r.json["error"]["field"] == field, (label, r.json)
    small = make_app(database_url, broker_dir, max_image_pixels=10_000).test_client()
    r = small.post(URL, data={"image": (io.BytesIO(paper_drawing(200)), "x.png")}, headers=auth(key))
    assert r.status_code == 400 and r.json["error"]["field"] == "image"
    assert "10000" in r.json["error"]["message"]
    assert count(app, Sketch.client == key[0]) == 0


def test_mixed_batch_stores_the_good_and_reports_the_bad(app, client, key):
    items = [
        {"drawing": SQUARE, "client_ref": "good-0"},
        {"drawing": [[[0, 1, 2], [0, 1, 300]]]},
        "not an object",
        {"drawing": SQUARE, "colour": "red"},
        {"drawing": [[[0, 1], [0, True]]]},
        {"drawing": SQUARE, "client_ref": "good-5", "format": "raw"},
        {"drawing": [[[0, 1], [0]]]},
        {"drawing": SQUARE, "format": "vector"},
    ]
    r = client.post(URL, json=items, headers=auth(key))
    assert r.status_code == 202, r.json
    assert (r.json["accepted"], r.json["rejected"]) == (2, 6)
    by_index = {item["index"]: item for item in r.json["items"]}
    assert set(by_index) == set(range(8))
    assert by_index[1]["error"] == {"field": "drawing[0][1][2]", "message": "300 is outside 0..255"}
    assert by_index[2]["error"]["field"] == "body"
    assert by_index[3]["error"] == {"field": "colour", "message": "unknown field"}
    assert by_index[4]["error"]["field"] == "drawing[0][1][1]"
    assert by_index[6]["error"]["field"] == "drawing[0][1]"
    assert by_index[7]["error"]["field"] == "format"
    assert {row.client_ref for row in rows(app, Sketch.client == key[0])} == {"good-0", "good-5"}


def test_batch_with_nothing_valid_is_400_with_the_report(app, client, key):
    r = client.post(URL, json=[{"drawing": []}, {"drawing": "x"}], headers=auth(key))
    assert r.status_code == 400
    assert r.json["accepted"] == 0 and r.json["rejected"] == 2
    assert count(app, Sketch.client == key[0]) == 0


def test_batch_limits(database_url, broker_dir, key):
    small = make_app(database_url, broker_dir, max_batch=3).test_client()
    r = small.post(URL, json=[{"drawing": SQUARE}] * 4, headers=auth(key))
    assert r.status_code == 400 and r.json["error"]["field"] == "body" and "limit is 3" in r.json["error"]["message"]
    body = b"\n".join(orjson.dumps({"drawing": SQUARE}) for _ in range(4))
    r = small.post(URL, data=body, content_type="application/x-ndjson", headers=auth(key))
    assert r.status_code == 400 and "limit is 3" in r.json["error"]["message"]
    assert small.post(URL, json=[], headers=auth(key)).status_code == 400
    r = small.post(URL, data=b"\n  \n", content_type="application/x-ndjson", headers=auth(key))
    assert r.status_code == 400 and r.json["error"]["field"] == "body"


# --------------------------------------------------------------------------- idempotency


def test_resending_a_client_ref_returns_the_same_id_and_stores_once(app, client, key, broker_dir):
    first = client.post(URL, json={"drawing": SQUARE, "client_ref": "ref-1"}, headers=auth(key))
    again = client.post(URL, json={"drawing": SQUARE, "client_ref": "ref-1"}, headers=auth(key))
    assert first.status_code == 202 and again.status_code == 200
    assert again.json == {**first.json, "duplicate": True}
    in_batch = client.post(URL, json=[{"drawing": SQUARE, "client_ref": "ref-1"}, {"drawing": SQUARE, "client_ref": "ref-2"}, {"drawing": SQUARE, "client_ref": "ref-2"}], headers=auth(key))
    items = in_batch.json["items"]
    assert items[0] == {**first.json, "index": 0, "duplicate": True}
    assert items[1]["duplicate"] is False and items[2] == {**items[1], "index": 2, "duplicate": True}
    assert count(app, Sketch.client == key[0]) == 2
    flush(app)
    sent = [i for m in broker_messages(broker_dir) for i in m["body"][0][0]]
    assert sent.count(first.json["id"]) == 1 and sent.count(items[1]["id"]) == 1


def test_the_same_client_ref_from_another_client_is_another_sketch(app, client, key):
    other = add_key(app)
    a = client.post(URL, json={"drawing": SQUARE, "client_ref": "shared"}, headers=auth(key))
    b = client.post(URL, json={"drawing": SQUARE, "client_ref": "shared"}, headers=auth(other))
    assert a.status_code == b.status_code == 202 and a.json["id"] != b.json["id"]


def test_unique_violation_race_resolves_to_the_existing_id(app, client, key, monkeypatch):
    from service.core import sketches

    first = client.post(URL, json={"drawing": SQUARE, "client_ref": "race"}, headers=auth(key))
    real = sketches.existing_ids
    calls = []

    def blind_first_time(session, client_name, refs):
        # As if the conflicting row vanished (a concurrent request rolled back) before our lookup.
        calls.append(1)
        return {} if len(calls) == 1 else real(session, client_name, refs)

    monkeypatch.setattr(sketches, "existing_ids", blind_first_time)
    again = client.post(URL, json={"drawing": SQUARE, "client_ref": "race"}, headers=auth(key))
    assert len(calls) == 2
    assert again.status_code == 200 and again.json["id"] == first.json["id"] and again.json["duplicate"] is True
    assert count(app, Sketch.client == key[0]) == 1


def test_concurrent_resubmissions_store_one_row(app, key):
    def post(_):
        return app.test_client().post(URL, json={"drawing": SQUARE, "client_ref": "burst"}, headers=auth(key))

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(16)))
    assert {r.status_code for r in answers} <= {200, 202}
    assert len({r.json["id"] for r in answers}) == 1
    assert sum(not r.json["duplicate"] for r in answers) == 1
    assert count(app, Sketch.client == key[0]) == 1


# --------------------------------------------------------------------------- auth, limits and hostile input


def test_api_key_is_required_and_must_not_be_revoked(app, client):
    revoked = add_key(app, revoked=True)
    for headers in ({}, {"Authorization": "Bearer sw_nope"}, {"Authorization": "Basic abc"}, auth(revoked)):
        for r in (client.post(URL, json={"drawing": SQUARE}, headers=headers), client.get(URL, headers=headers)):
            assert r.status_code == 401
            assert r.json["error"]["field"] == "Authorization" and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert count(app, Sketch.client == revoked[0]) == 0


def test_body_over_max_content_length_is_413_json(database_url, broker_dir, key):
    small = make_app(database_url, broker_dir, max_content_length=2000).test_client()
    big = {"drawing": [[[1] * 400, [2] * 400]]}
    r = small.post(URL, json=big, headers=auth(key))
    assert r.status_code == 413 and r.json["error"]["field"] == "body" and "2000" in r.json["error"]["message"]
    r = small.post(URL, data={"image": (io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\0" * 5000), "x.png")}, headers=auth(key))
    assert r.status_code == 413 and r.json["error"]["field"] == "body"


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/xml", "application/json; charset=utf-16", "application/x-www-form-urlencoded", None],
)
def test_wrong_content_type_is_415(client, key, content_type):
    kwargs = {"content_type": content_type} if content_type else {}
    r = client.post(URL, data=orjson.dumps({"drawing": SQUARE}), headers=auth(key), **kwargs)
    assert r.status_code == 415 and r.json["error"]["field"] == "Content-Type"


@pytest.mark.parametrize(
    "body, field",
    [
        (b'{"drawing": [[[NaN, 1], [1, 2]]]}', "body"),
        (b'{"drawing": [[[Infinity, 1], [1, 2]]]}', "body"),
        (b'{"drawing": [[[-Infinity, 1], [1, 2]]]}', "body"),
        (b'{"drawing": [[[1e400, 1], [1, 2]]]}', "body"),
        (b'{"drawing": [[[1, 2], [1, 2]]], "metadata": {"a": "\xff\xfe"}}', "body"),
        (b'{"drawing": [[[1, 2], [1, 2]]]', "body"),
        (b"", "body"),
        (b"42", "body"),
        (b'"drawing"', "body"),
        (b"null", "body"),
        (b'{"drawing": [[[1e30, 1], [1, 2]]]}', "drawing[0][0][0]"),
        (b'{"drawing": [[[1, 2], [1, 12345678901234567890123456789012345678901234567890]]]}', "drawing[0][1][1]"),
        (b'{"format": "raw", "drawing": [[[1e30, 1], [1, 2]]]}', "drawing[0][0][0]"),
        (b'{"format": "raw", "drawing": [[[-1e300, 1], [1, 2]]]}', "drawing[0][0][0]"),
        (b'{"drawing": [[[1.5, 1], [1, 2]]]}', "drawing[0][0][0]"),
        (b'{"drawing": [[["1", 1], [1, 2]]]}', "drawing[0][0][0]"),
        (b'{"drawing": [[[1, 2], [1, 2], [0, 1]]]}', "drawing[0]"),
        (b'{"drawing": [[[], []]]}', "drawing[0][0]"),
        (b'{"drawing": []}', "drawing"),
        (b'{"drawing": {"x": 1}}', "drawing"),
        (b'{}', "drawing"),
        (b'{"drawing": [[[1], [1]]], "client_ref": ""}', "client_ref"),
        (b'{"drawing": [[[1], [1]]], "client_ref": 7}', "client_ref"),
        (b'{"drawing": [[[1], [1]]], "metadata": [1]}', "metadata"),
        (b'{"drawing": [[[1], [1]]], "client_ref": "a\\u0000b"}', "client_ref"),
    ],
)
def test_bad_input_is_400_naming_the_field(app, client, key, body, field):
    r = client.post(URL, data=body, content_type="application/json", headers=auth(key))
    assert r.status_code == 400, r.json
    assert r.json["error"]["field"] == field, r.json
    assert r.json["error"]["message"]
    assert count(app, Sketch.client == key[0]) == 0


def test_limits_on_strokes_points_client_ref_and_metadata(app, client, key):
    s = app.extensions["sketchwatch_settings"]
    cases = [
        ({"drawing": [[[1], [1]]] * (s.max_strokes + 1)}, "drawing", f"the limit is {s.max_strokes}"),
        ({"drawing": [[[1] * (s.max_points + 1), [1] * (s.max_points + 1)]]}, "drawing", f"the limit is {s.max_points}"),
        ({"drawing": [[[1] * (s.max_points // 2 + 1)] * 2] * 2}, "drawing", f"the limit is {s.max_points}"),
        ({"drawing": SQUARE, "client_ref": "x" * 201}, "client_ref", "200"),
        ({"drawing": SQUARE, "metadata": {"blob": "x" * 20_000}}, "metadata", "16384"),
    ]
    for body, field, text in cases:
        r = client.post(URL, json=body, headers=auth(key))
        assert r.status_code == 400 and r.json["error"]["field"] == field, r.json
        assert text in r.json["error"]["message"], r.json
    ok = client.post(URL, json={"drawing": [[[1] * s.max_points, [1] * s.max_points]]}, headers=auth(key))
    assert ok.status_code == 202


def test_nul_characters_in_metadata_round_trip(app, client, key):
    r = client.post(URL, json={"drawing": SQUARE, "metadata": {"k\x00": "a\x00b"}}, headers=auth(key))
    assert r.status_code == 202, r.json
    assert client.get(r.json["status_url"], headers=auth(key)).json["metadata"] == {"k\x00": "a\x00b"}


def test_deep_nesting_is_400(client, key):
    deep = b"[" * 5000 + b"]" * 5000
    r = client.post(URL, data=b'{"drawing": ' + deep + b"}", content_type="application/json", headers=auth(key))
    assert r.status_code == 400 and r.json["error"]["field"] in ("body", "drawing[0][0][0]")
    r = client.post(URL, data=deep, content_type="application/json", headers=auth(key))
    assert r.status_code == 400
    nested: dict = {}
    node = nested
    for _ in range(30):
        node["a"] = {}
        node = node["a"]
    r = client.post(URL, json={"drawing": SQUARE, "metadata": nested}, headers=auth(key))
    assert r.status_code == 400 and r.json["error"]["field"] == "metadata" and "nested" in r.json["error"]["message"]
    r = client.post(URL, json={"drawing": [[[[[[1]]]]]]}, headers=auth(key))
    assert r.status_code == 400 and r.json["error"]["field"].startswith("drawing[0][0][0]")


def test_invalid_utf8_in_ndjson_rejects_only_that_line(app, client, key):
    body = orjson.dumps({"drawing": SQUARE}) + b"\n" + b'{"drawing": [[[1],[1]]], "word": "\xc3\x28"}\n'
    r = client.post(URL, data=body, content_type="application/x-ndjson", headers=auth(key))
    assert r.status_code == 202 and (r.json["accepted"], r.json["rejected"]) == (1, 1)
    assert r.json["items"][1]["index"] == 1 and "UTF-8" in r.json["items"][1]["error"]["message"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(["drawing", "format", "client_ref", "metadata", "x"]), children, max_size=4),
    max_leaves=30,
)
coords = st.lists(
    st.one_of(st.integers(-300, 600), st.floats(-1e7, 1e7, allow_nan=False), st.integers(-(2**70), 2**70)), min_size=1, max_size=6
)
near_valid = st.fixed_dictionaries(
    {"drawing": st.lists(st.lists(coords, min_size=2, max_size=3), min_size=1, max_size=4)},
    optional={"format": st.sampled_from(["simplified", "raw"]), "client_ref": st.text(max_size=5)},
)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(json_values, near_valid, st.lists(near_valid, max_size=3)))
def test_no_input_gives_a_server_error(client, key, body):
    r = client.post(URL, data=json.dumps(body).encode(), content_type="application/json", headers=auth(key))
    assert r.status_code in (200, 202, 400), r.json
    if r.status_code == 400:
        assert "error" in r.json or "items" in r.json


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_no_byte_string_gives_a_server_error(client, key, data):
    for ctype in ("application/json", "application/x-ndjson"):
        r = client.post(URL, data=data, content_type=ctype, headers=auth(key))
        assert r.status_code in (202, 400)


# --------------------------------------------------------------------------- queueing


def test_row_is_committed_queued_before_the_task_is_sent(app, client, key, monkeypatch, database_url):
    celery = app.extensions["celery"]
    real = celery.send_task
    observed = []
    probe = make_engine(database_url)

    def spy(name, args=None, **kwargs):
        # A separate engine sees only committed rows.
        with probe.connect() as conn:
            found = conn.execute(
                select(Sketch.id, Sketch.status, Sketch.enqueued_at).where(Sketch.id.in_(args[0]))
            ).all()
        observed.append((name, args, kwargs, found))
        return real(name, args=args, **kwargs)

    monkeypatch.setattr(celery, "send_task", spy)
    try:
        r = client.post(URL, json=[{"drawing": SQUARE}] * 3, headers=auth(key))
        flush(app)
    finally:
        probe.dispose()
    ids = [item["id"] for item in r.json["items"]]
    ((name, args, kwargs, found),) = observed
    assert name == "sketchwatch.score_sketches"
    assert args == [ids] and "kwargs" not in kwargs
    assert sorted(f.id for f in found) == ids
    # Stamped in the INSERT: one row version per sketch; a failed send clears it again.
    assert all(f.status == "queued" and f.enqueued_at is not None for f in found)


def test_task_message_carries_only_ids(app, client, key, broker_dir):
    r = client.post(URL, json=[{"drawing": SQUARE, "metadata": {"secret": "drawing data"}}] * 2, headers=auth(key))
    flush(app)
    ids = [item["id"] for item in r.json["items"]]
    (msg,) = [m for m in broker_messages(broker_dir) if m["body"][0] == [ids]]
    args, kwargs, _embed = msg["body"]
    assert msg["headers"]["task"] == "sketchwatch.score_sketches"
    assert args == [ids] and kwargs == {}
    assert all(isinstance(i, int) for i in args[0])


def test_large_batches_are_enqueued_in_chunks(database_url, broker_dir, key, monkeypatch):
    chunked = make_app(database_url, broker_dir, worker_batch_size=4)
    sent = []
    monkeypatch.setattr(chunked.extensions["celery"], "send_task", lambda name, args=None, **kw: sent.append(args[0]))
    r = chunked.test_client().post(URL, json=[{"drawing": SQUARE}] * 10, headers=auth(key))
    flush(chunked)
    ids = [item["id"] for item in r.json["items"]]
    assert sent == [ids[0:4], ids[4:8], ids[8:10]]


def test_broker_down_still_stores_and_answers_202(app, client, key, monkeypatch):
    from kombu.exceptions import OperationalError

    def down(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(app.extensions["celery"], "send_task", down)
    r = client.post(URL, json={"drawing": SQUARE}, headers=auth(key))
    assert r.status_code == 202
    flush(app)
    (row,) = rows(app, Sketch.id == r.json["id"])
    assert row.status == "queued" and row.enqueued_at is None


def test_unreachable_redis_broker_still_stores(database_url, broker_dir, key):
    down = make_app(database_url, broker_dir, broker_url="redis://127.0.0.1:9/0")
    r = down.test_client().post(URL, json={"drawing": SQUARE}, headers=auth(key))
    assert r.status_code == 202
    flush(down)
    (row,) = rows(down, Sketch.id == r.json["id"])
    assert row.status == "queued" and row.enqueued_at is None


def test_database_down_is_503_with_retry_after(tmp_path, broker_dir, key):
    down = make_app(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}", broker_dir)
    for r in (
        down.test_client().post(URL, json={"drawing": SQUARE}, headers=auth(key)),
        down.test_client().get(URL, headers=auth(key)),
    ):
        assert r.status_code == 503
        assert int(r.headers["Retry-After"]) > 0 and "database" in r.json["error"]["message"]


def test_database_failure_while_storing_is_503_and_stores_nothing(app, client, key, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from service.core import sketches

    def lost(*args, **kwargs):
        raise OperationalError("INSERT INTO sketches ...", {}, ConnectionError("server closed the connection"))

    monkeypatch.setattr(sketches, "insert_queued", lost)
    r = client.post(URL, json={"drawing": SQUARE}, headers=auth(key))
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert count(app, Sketch.client == key[0]) == 0


# --------------------------------------------------------------------------- reading


def score(app, sketch_id: int, value: float, threshold: float = 0.5, when: datetime | None = None) -> None:
    with app.app_context(), db.session_scope() as s:
        s.execute(
            update(Sketch)
            .where(Sketch.id == sketch_id)
            .values(status="scored", score=value, flagged=value > threshold, threshold=threshold,
                    model_version="v-test", scored_at=when or utcnow())
        )


def test_get_sketch_returns_status_and_result_for_its_owner_only(app, client, key):
    r = client.post(URL, json={"drawing": SQUARE, "client_ref": "g1", "metadata": {"k": 1}}, headers=auth(key))
    url = r.json["status_url"]
    queued = client.get(url, headers=auth(key)).json
    assert queued["status"] == "queued" and queued["score"] is None and queued["client_ref"] == "g1"
    score(app, r.json["id"], 0.9)
    got = client.get(url, headers=auth(key))
    assert got.status_code == 200
    body = got.json
    assert body["status"] == "scored" and body["score"] == 0.9 and body["flagged"] is True
    assert body["threshold"] == 0.5 and body["model_version"] == "v-test" and body["metadata"] == {"k": 1}
    assert datetime.fromisoformat(body["submitted_at"]) <= datetime.fromisoformat(body["scored_at"])
    assert {"id", "status", "score", "flagged", "threshold", "model_version", "submitted_at", "scored_at", "error",
            "client_ref", "metadata"} <= set(body)
    other = add_key(app)
    assert client.get(url, headers=auth(other)).status_code == 404
    for missing in (f"{URL}/999999999", f"{URL}/{2**70}", f"{URL}/-1", f"{URL}/abc"):
        r = client.get(missing, headers=auth(key))
        assert r.status_code == 404 and "error" in r.json


def test_sketch_json_carries_the_score_log_odds(app, client, key):
    from service.core.sketches import write_scores

    items = client.post(URL, json=[{"drawing": SQUARE, "client_ref": f"lo{i}"} for i in range(4)], headers=auth(key))
    ids = [item["id"] for item in items.json["items"]]
    blank = bytes(784)
    with app.app_context(), db.session_scope() as s:
        # Two scores that both round to 1 keep distinct log-odds; a writer without them gets the score's own.
        write_scores(s, [(ids[0], 1.0, blank, blank, 40.5), (ids[1], 1.0, blank, blank, 25.25),
                         (ids[2], 0.2, blank, blank)], 0.5, "v-test", utcnow())
    got = {i: client.get(f"{URL}/{i}", headers=auth(key)).json for i in ids}
    assert got[ids[0]]["score"] == got[ids[1]]["score"] == 1.0
    assert got[ids[0]]["score_logit"] == 40.5 and got[ids[1]]["score_logit"] == 25.25
    assert got[ids[2]]["score_logit"] == pytest.approx(math.log(0.2 / 0.8), abs=1e-12)
    assert got[ids[3]]["status"] == "queued" and got[ids[3]]["score_logit"] is None
    listed = client.get(f"{URL}?status=scored&client_ref=lo0", headers=auth(key)).json["items"]
    assert [item["score_logit"] for item in listed] == [40.5]


def test_list_filters_and_keyset_pagination(app, client, key):
    other = add_key(app)
    client.post(URL, json={"drawing": SQUARE}, headers=auth(other))
    ids = [item["id"] for item in client.post(URL, json=[{"drawing": SQUARE, "client_ref": f"l{i}"} for i in range(7)], headers=auth(key)).json["items"]]
    score(app, ids[0], 0.9)
    score(app, ids[1], 0.8)
    score(app, ids[2], 0.1)

    def listed(query: str) -> list[int]:
        r = client.get(f"{URL}?{query}", headers=auth(key))
        assert r.status_code == 200, r.json
        return [item["id"] for item in r.json["items"]]

    assert listed("") == ids[::-1]
    assert listed("status=scored") == [ids[2], ids[1], ids[0]]
    assert listed("status=queued") == ids[3:][::-1]
    assert listed("flagged=true") == [ids[1], ids[0]]
    assert listed("flagged=false") == [ids[2]]
    assert listed("flagged=true&status=queued") == []
    assert listed(f"client={key[0]}&client_ref=l4") == [ids[4]]
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    past = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    assert listed(f"since={future}") == []
    assert listed(f"until={past.replace('+00:00', 'Z')}") == []
    assert listed(f"since={past.replace('+00:00', '%2B00:00')}&until={future}Z") == ids[::-1]
    in_paris = (datetime.now(timezone.utc) + timedelta(hours=1, minutes=1)).astimezone(timezone(timedelta(hours=1)))
    assert listed(f"until={in_paris.isoformat().replace('+', '%2B')}") == ids[::-1]

    seen, cursor, pages = [], None, 0
    while True:
        r = client.get(URL, query_string={"limit": 3, **({"cursor": cursor} if cursor else {})}, headers=auth(key))
        seen += [item["id"] for item in r.json["items"]]
        pages += 1
        cursor = r.json["next"]
        if cursor is None:
            break
    assert seen == ids[::-1] and pages == 3


@pytest.mark.parametrize(
    "query, field",
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=abc", "limit"),
        ("status=done", "status"),
        ("status=scored'%20OR%20'1'='1", "status"),
        ("flagged=maybe", "flagged"),
        ("since=yesterday", "since"),
        ("until=2024-13-45", "until"),
        ("since=2025-01-02&until=2025-01-01", "until"),
        ("cursor=garbage!", "cursor"),
        ("cursor=" + base64.urlsafe_b64encode(b"v1:-5").decode(), "cursor"),
        ("colour=red", "colour"),
        ("limit=1&limit=2", "limit"),
        ("client_ref=a%00b", "client_ref"),
        ("since=0001-01-01T00:00:00%2B14:00", "since"),
    ],
)
def test_bad_list_parameters_are_400_naming_the_parameter(client, key, query, field):
    r = client.get(f"{URL}?{query}", headers=auth(key))
    assert r.status_code == 400, r.json
    assert r.json["error"]["field"] == field


def test_listing_another_client_is_forbidden_and_filters_are_bound(app, client, key):
    other = add_key(app)
    client.post(URL, json={"drawing": SQUARE, "client_ref": "x"}, headers=auth(other))
    r = client.get(f"{URL}?client={other[0]}", headers=auth(key))
    assert r.status_code == 403 and r.json["error"]["field"] == "client"
    r = client.get(URL, query_string={"client_ref": "x' OR '1'='1"}, headers=auth(key))
    assert r.status_code == 200 and r.json["items"] == []


# --------------------------------------------------------------------------- errors and documentation


def test_routing_errors_under_api_are_json_and_elsewhere_are_not(client, key):
    r = client.delete(URL, headers=auth(key))
    assert r.status_code == 405 and r.json["error"]["field"] == "method" and "POST" in r.headers["Allow"]
    r = client.get("/api/v1/no-such-thing", headers=auth(key))
    assert r.status_code == 404 and r.is_json
    r = client.get("/no-such-page")
    assert r.status_code == 404 and not r.is_json


def test_unexpected_errors_are_500_json_without_details(database_url, broker_dir, key, monkeypatch):
    from service import intake

    def bug(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(intake, "accept", bug)
    live = make_app(database_url, broker_dir, env="development").test_client()
    r = live.post(URL, json={"drawing": SQUARE}, headers=auth(key))
    assert r.status_code == 500
    assert r.json == {"error": {"field": None, "message": "internal server error"}}


def test_rate_limit_is_429_json(database_url, broker_dir, key):
    limited = make_app(database_url, broker_dir, ratelimit_enabled=True, ratelimit_submit="2 per minute").test_client()
    answers = [limited.post(URL, json={"drawing": SQUARE}, headers=auth(key)) for _ in range(3)]
    assert [r.status_code for r in answers] == [202, 202, 429]
    assert "rate limit" in answers[2].json["error"]["message"] and "Retry-After" in answers[2].headers


def test_openapi_document_describes_the_api_and_its_limits(client, app):
    r = client.get("/api/v1/openapi.json")
    assert r.status_code == 200
    doc = r.json
    assert doc["openapi"].startswith("3.1")
    s = app.extensions["sketchwatch_settings"]
    post = doc["paths"]["/sketches"]["post"]
    assert set(post["requestBody"]["content"]) == {"application/json", "application/x-ndjson", "multipart/form-data"}
    assert {"202", "400", "401", "413", "415", "429", "503"} <= set(post["responses"])
    assert f"{s.max_strokes} strokes" in post["description"] and f"{s.max_points} points" in post["description"]
    assert doc["x-limits"]["max_batch"] == s.max_batch
    params = {p["name"] for p in doc["paths"]["/sketches"]["get"]["parameters"]}
    assert {"limit", "cursor", "status", "flagged", "since", "until", "client"} <= params
    sketch_in = doc["components"]["schemas"]["SketchIn"]
    assert sketch_in["properties"]["drawing"]["maxItems"] == s.max_strokes
    refs = {v for v in _walk(doc) if isinstance(v, str) and v.startswith("#/components/schemas/")}
    assert {ref.rsplit("/", 1)[1] for ref in refs} <= set(doc["components"]["schemas"])
    pytest.importorskip("openapi_spec_validator").validate(doc)


def _walk(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)
    else:
        yield node
