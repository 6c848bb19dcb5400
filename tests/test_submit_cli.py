"""``sketchwatch submit`` / ``demo`` against a live werkzeug server running the real app in a thread."""

from __future__ import annotations

import shutil
import struct
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw
from sqlalchemy import select
from werkzeug.serving import make_server

from service.app import create_app
from service.cli import main
from service.demo_sketches import DEMO
from service.extensions import db
from service.core.migrate import upgrade
from service.core.schema import ApiKey, Sketch
from service.core.security import hash_api_key, new_api_key

SHARED = Path(__file__).resolve().parents[1].parent / "shared/data/quickdraw"
needs_data = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data folder {SHARED} is absent")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on a temp SQLite DB, served over real HTTP from a background thread."""
    tmp = tmp_path_factory.mktemp("submit-cli")
    url = f"sqlite:///{tmp / 'cli.db'}"
    upgrade(url)
    app = create_app(
        {
            "env": "testing",
            "data_dir": tmp,
            "database_url": url,
            "broker_url": f"sqla+sqlite:///{tmp / 'broker.db'}",
            "ratelimit_enabled": False,
            "log_json": False,
            "log_level": "WARNING",
        }
    )
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{srv.server_port}", app=app)
    finally:
        srv.shutdown()
        thread.join(10)
        db.dispose()


@pytest.fixture
def key(server):
    """A fresh client (name, key) so each test sees only its own sketches."""
    name, key = f"cli-{uuid.uuid4().hex[:10]}", new_api_key()
    with server.app.app_context(), db.session_scope() as s:
        s.add(ApiKey(name=name, prefix=key[:8], key_hash=hash_api_key(key)))
    return name, key


def stored(server, client: str) -> list[Sketch]:
    with server.app.app_context(), db.session_scope() as s:
        return list(s.scalars(select(Sketch).where(Sketch.client == client).order_by(Sketch.id)))


def run(server, key, *args, env=None):
    return CliRunner().invoke(main, [*args, "--url", server.url, "--api-key", key[1]], env=env)


def _png_of_circle(path: Path) -> None:
    img = Image.new("L", (120, 90), 255)
    ImageDraw.Draw(img).ellipse((20, 10, 100, 80), outline=0, width=4)
    img.save(path)


@needs_data
def test_submit_ndjson_in_batches_then_resubmit_is_all_duplicates(server, key):
    cats = SHARED / "cat.ndjson"
    result = run(server, key, "submit", str(cats), "--batch-size", "7", "--concurrency", "3")
    assert result.exit_code == 0, result.output
    assert "accepted 25 (25 new, 0 duplicates), rejected 0, failed 0" in result.output
    rows = stored(server, key[0])
    key_ids = [orjson.loads(line)["key_id"] for line in cats.read_bytes().splitlines()]
    assert sorted(r.client_ref for r in rows) == sorted(key_ids)
    first = orjson.loads(cats.read_bytes().splitlines()[0])
    (row,) = [r for r in rows if r.client_ref == first["key_id"]]
    assert row.drawing == first["drawing"] and row.meta["word"] == "cat" and row.status == "queued"

    again = run(server, key, "submit", str(cats))
    assert again.exit_code == 0, again.output
    assert "accepted 25 (0 new, 25 duplicates)" in again.output
    assert len(stored(server, key[0])) == 25


@needs_data
def test_submit_npy_bitmaps_and_images_as_png_uploads(server, key, tmp_path):
    bitmaps = np.load(SHARED / "cat_bitmaps_28.npy", mmap_mode="r")[:5]
    npy = tmp_path / "five.npy"
    np.save(npy, np.ascontiguousarray(bitmaps))
    photo = tmp_path / "circle.png"
    _png_of_circle(photo)
    result = run(server, key, "submit", str(npy), str(photo), "--concurrency", "2")
    assert result.exit_code == 0, result.output
    assert "accepted 6 (6 new" in result.output
    rows = stored(server, key[0])
    assert all(r.source_format == "image" and r.drawing is None for r in rows)
    # 28x28 uploads are stored pixel for pixel.
    assert sorted(r.input_bitmap for r in rows[:-1] if r.input_bitmap in {b.tobytes() for b in bitmaps}) == sorted(
        b.tobytes() for b in bitmaps
    )


def write_bin(path: Path, drawings: list[tuple[int, bytes, list]]) -> None:
    """Quick Draw's binary layout: key_id u64, country 2s, recognized u8, timestamp u32, strokes u16, then per
    stroke n u16, x u8[n], y u8[n] (little-endian)."""
    with open(path, "wb") as fh:
        for key_id, country, strokes in drawings:
            fh.write(struct.pack("<Q2sBIH", key_id, country, 1, 1_500_000_000, len(strokes)))
            for xs, ys in strokes:
                fh.write(struct.pack("<H", len(xs)) + bytes(xs) + bytes(ys))


def test_submit_bin_file(server, key, tmp_path):
    path = tmp_path / "two.bin"
    write_bin(path, [(1000 + i, b"FR", strokes) for i, (_, _, strokes) in enumerate(DEMO[:2])])
    result = run(server, key, "submit", str(path))
    assert result.exit_code == 0, result.output
    rows = stored(server, key[0])
    assert [r.client_ref for r in rows] == ["1000", "1001"]
    assert rows[0].drawing == DEMO[0][2] and rows[0].meta["countrycode"] == "FR"
    truncated = tmp_path / "cut.bin"
    truncated.write_bytes(path.read_bytes()[:-5])
    result = run(server, key, "submit", str(truncated))
    assert result.exit_code == 1 and f"{truncated}: offset" in result.output


def test_bad_lines_are_reported_with_file_and_line_and_the_rest_is_sent(server, key, tmp_path):
    path = tmp_path / "mixed.ndjson"
    good = {"key_id": "g1", "word": "line", "drawing": [[[0, 255], [0, 0]]]}
    path.write_bytes(orjson.dumps(good) + b"\n{broken\n" + orjson.dumps({**good, "key_id": "g2"}) + b"\n")
    result = run(server, key, "submit", str(path))
    assert result.exit_code == 1
    assert f"{path}: line 2" in result.output
    assert [r.client_ref for r in stored(server, key[0])] == ["g1", "g2"]


def test_server_side_rejections_name_the_file_and_line(server, key, tmp_path):
    path = tmp_path / "toolong.ndjson"
    line = {"key_id": "x" * 300, "drawing": [[[0, 255], [0, 0]]]}
    path.write_bytes(orjson.dumps(line) + b"\n")
    result = run(server, key, "submit", str(path))
    assert result.exit_code == 1
    assert "rejected 1" in result.output and f"{path}: line 1: rejected: client_ref" in result.output


def test_unsupported_and_corrupt_files_fail_naming_the_file(server, key, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    result = run(server, key, "submit", str(text))
    assert result.exit_code == 1 and str(text) in result.output and "unsupported" in result.output
    npy = tmp_path / "floats.npy"
    np.save(npy, np.zeros((2, 784), dtype=np.float32))
    result = run(server, key, "submit", str(npy))
    assert result.exit_code == 1 and str(npy) in result.output and "uint8" in result.output
    result = run(server, key, "submit", str(tmp_path / "missing.ndjson"))
    assert result.exit_code != 0 and "missing.ndjson" in result.output
    assert stored(server, key[0]) == []


def test_bad_key_and_unreachable_server_are_clear_errors(server, tmp_path):
    path = tmp_path / "one.ndjson"
    path.write_bytes(orjson.dumps({"drawing": [[[0, 255], [0, 0]]]}) + b"\n")
    result = CliRunner().invoke(main, ["submit", str(path), "--url", server.url, "--api-key", "sw_wrong"])
    assert result.exit_code == 1 and "API key rejected" in result.output
    result = CliRunner().invoke(main, ["submit", str(path), "--url", server.url], env={"SKETCHWATCH_API_KEY": ""})
    assert result.exit_code == 2 and "no API key" in result.output
    dead = "http://127.0.0.1:9"
    result = CliRunner().invoke(main, ["submit", str(path), "--url", dead, "--api-key", "sw_x"])
    assert result.exit_code == 1 and f"cannot reach SketchWatch at {dead}" in result.output


def test_api_key_defaults_to_the_environment(server, key, tmp_path):
    path = tmp_path / "one.ndjson"
    path.write_bytes(orjson.dumps({"drawing": [[[0, 255], [0, 0]]]}) + b"\n")
    result = CliRunner().invoke(main, ["submit", str(path), "--url", server.url], env={"SKETCHWATCH_API_KEY": key[1]})
    assert result.exit_code == 0, result.output
    assert len(stored(server, key[0])) == 1


@needs_data
def test_demo_uses_the_shared_quickdraw_samples(server, key, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run(server, key, "demo", "--count", "12", env={"SKETCHWATCH_SHARED_DIR": str(SHARED.parent.parent)})
    assert result.exit_code == 0, result.output
    assert f"Dashboard: {server.url}/" in result.output
    rows = stored(server, key[0])
    words = [r.meta["word"] for r in rows]
    assert len(rows) == 12 and words.count("cat") == 8 and len(set(words) - {"cat"}) == 4


def test_demo_falls_back_to_built_in_sketches(server, key, tmp_path, monkeypatch):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    monkeypatch.chdir(empty)
    result = run(server, key, "demo", env={"SKETCHWATCH_SHARED_DIR": str(empty)})
    assert result.exit_code == 0, result.output
    assert "built-in" in result.output and f"Dashboard: {server.url}/" in result.output
    rows = stored(server, key[0])
    assert sorted(r.client_ref for r in rows) == sorted(f"demo:{name}" for name, _, _ in DEMO)
    assert {r.meta["word"] for r in rows} >= {"cat", "house", "circle", "line"}


@needs_data
def test_demo_finds_shared_relative_to_the_current_directory(server, key, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (tmp_path / "shared" / "data" / "quickdraw").mkdir(parents=True)
    shutil.copy(SHARED / "cat.ndjson", tmp_path / "shared" / "data" / "quickdraw" / "cat.ndjson")
    repo.mkdir()
    monkeypatch.chdir(repo)
    result = run(server, key, "demo", "--count", "3", env={"SKETCHWATCH_SHARED_DIR": None})
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "shared") in result.output
    assert [r.meta["word"] for r in stored(server, key[0])] == ["cat"] * 3


def test_submit_retries_503_and_429_then_reports_server_errors(tmp_path):
    from werkzeug.wrappers import Request, Response

    script = [(503, {"Retry-After": "0"}), (429, {"Retry-After": "0"}), (202, {}), (500, {})]
    calls = []

    @Request.application
    def flaky(request):
        items = orjson.loads(request.get_data())
        status, headers = script[len(calls)]
        calls.append(len(items))
        if status == 202:
            body = {"items": [{"index": i, "id": i + 1, "status_url": "/x", "duplicate": False} for i in range(len(items))],
                    "accepted": len(items), "rejected": 0}
        else:
            body = {"error": {"field": None, "message": f"status {status}"}}
        return Response(orjson.dumps(body), status, {"Content-Type": "application/json", **headers})

    srv = make_server("127.0.0.1", 0, flaky)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    path = tmp_path / "two.ndjson"
    path.write_bytes(b"".join(orjson.dumps({"key_id": str(i), "drawing": [[[0, 255], [0, 0]]]}) + b"\n" for i in range(2)))
    try:
        url = f"http://127.0.0.1:{srv.server_port}"
        result = CliRunner().invoke(main, ["submit", str(path), "--url", url, "--api-key", "k", "--batch-size", "1",
                                           "--concurrency", "1"])
    finally:
        srv.shutdown()
        thread.join(10)
    assert calls == [1, 1, 1, 1]
    assert result.exit_code == 1
    assert "accepted 1 (1 new, 0 duplicates), rejected 0, failed 1" in result.output
    assert f"{path}: line 2: HTTP 500" in result.output
