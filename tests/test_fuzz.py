"""Hostile input: every malformed, oversized or malicious request gets a clear 4xx JSON error, fast and in bounded memory.

In-process against the Flask test client on a temp SQLite database: a table of hand-written hostile
bodies (with peak-memory and time bounds for the big ones), image bombs, hypothesis on the dashboard's
draw endpoint and on arbitrary query strings and bodies of the stats and review endpoints, and corrupt
``.bin``/``.npy`` files fed to the CLI. Requests generated from the OpenAPI document, valid and invalid,
with every schemathesis check against a live server, are tests/test_contract.py.
"""

from __future__ import annotations

import io
import struct
import threading
import time
import tracemalloc
import uuid
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import orjson
import psutil
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from PIL import Image
from sqlalchemy import func, select

from service.app import create_app
from service import ratelimit
from service.extensions import db
from service.core.migrate import upgrade
from service.core.schema import ROLE_REVIEWER, ApiKey, Sketch, User
from service.core.security import hash_api_key, hash_password, new_api_key

SUBMIT = "/api/v1/sketches"
SQUARE = [[[0, 255, 255, 0, 0], [0, 0, 255, 255, 0]]]
REVIEWER = ("fuzz-reviewer", "fuzz-password-123")
MB = 1024 * 1024


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{data_dir / 'fuzz.db'}"
    upgrade(url)
    app = create_app(
        {
            "env": "testing",
            "data_dir": data_dir,
            "database_url": url,
            "broker_url": f"sqla+sqlite:///{data_dir / 'broker.db'}",
            "log_json": False,
            "log_level": "ERROR",
            "ratelimit_enabled": False,
        }
    )
    ratelimit.init_app(app, app.extensions["sketchwatch_settings"])
    key = new_api_key()
    with app.app_context(), db.session_scope() as s:
        s.add(ApiKey(name=f"fuzz-{uuid.uuid4().hex[:8]}", prefix=key[:10], key_hash=hash_api_key(key)))
        s.add(User(username=REVIEWER[0], password_hash=hash_password(REVIEWER[1]), role=ROLE_REVIEWER))
    yield {"app": app, "key": key, "dir": data_dir}
    db.dispose()


@pytest.fixture
def client(env):
    return env["app"].test_client()


def auth(env) -> dict:
    return {"Authorization": f"Bearer {env['key']}"}


def stored(env) -> int:
    with env["app"].app_context(), db.session_scope() as s:
        return s.scalar(select(func.count()).select_from(Sketch))


def assert_clear_4xx(r, context) -> None:
    """A 4xx answer with a JSON error (or a batch report whose items say what is wrong)."""
    assert 400 <= r.status_code < 500, (context, r.status_code, r.get_data()[:300])
    assert r.is_json, (context, r.headers.get("Content-Type"))
    body = r.json
    if "error" in body:
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], context
        assert "field" in body["error"], context
    else:
        assert body["accepted"] == 0 and body["rejected"] >= 1, context
        assert all(item["error"]["message"] for item in body["items"]), context


class PeakRss:
    """Samples this process's RSS every few milliseconds; ``growth`` is peak minus start (native allocations too)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.proc = psutil.Process()
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRss":
        self.start = self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def growth(self) -> int:
        """Peak RSS above the starting RSS, in bytes."""
        return self.peak - self.start


@contextmanager
def traced_peak():
    """Peak Python heap allocation (tracemalloc) inside the block, in bytes, as ``out[0]``."""
    out = [0]
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield out
    finally:
        out[0] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


# --------------------------------------------------------------------------- hand-written hostile bodies

N_HUGE = 10**6

HOSTILE_JSON = {
    "malformed": b'{"drawing": [[[1, 2], [3, 4]]',
    "trailing garbage": b'{"drawing": [[[1], [2]]]} {"x": 1}',
    "single quotes": b"{'drawing': [[[1], [2]]]}",
    "NaN": b'{"drawing": [[[NaN], [1]]]}',
    "Infinity": b'{"drawing": [[[Infinity], [1]]], "format": "raw"}',
    "-Infinity": b'{"drawing": [[[1], [-Infinity]]], "format": "raw"}',
    "1e400": b'{"drawing": [[[1e400], [1]]], "format": "raw"}',
    "null": b"null",
    "string": b'"drawing"',
    "number": b"42",
    "empty object": b"{}",
    "empty array": b"[]",
    "whitespace": b"   \n ",
    "drawing string": b'{"drawing": "M0 0 L 10 10"}',
    "drawing object": b'{"drawing": {"x": [1], "y": [2]}}',
    "drawing null": b'{"drawing": null}',
    "string coords": b'{"drawing": [[["1"], ["2"]]]}',
    "bool coords": b'{"drawing": [[[true], [false]]]}',
    "null coord": b'{"drawing": [[[null], [1]]]}',
    "nested coord": b'{"drawing": [[[[1]], [[2]]]]}',
    "unknown field": b'{"drawing": [[[1], [2]]], "evil": true}',
    "unknown format": b'{"drawing": [[[1], [2]]], "format": "vector"}',
    "empty drawing": b'{"drawing": []}',
    "empty stroke": b'{"drawing": [[]]}',
    "empty rows": b'{"drawing": [[[], []]]}',
    "one row": b'{"drawing": [[[1, 2]]]}',
    "four rows": b'{"drawing": [[[1], [2], [3], [4]]]}',
    "ragged rows": b'{"drawing": [[[1, 2, 3], [4]]]}',
    "negative": b'{"drawing": [[[-1, 5], [0, 5]]]}',
    "256": b'{"drawing": [[[256], [0]]]}',
    "fraction in simplified": b'{"drawing": [[[1.5], [0]]]}',
    "huge simplified": b'{"drawing": [[[1000000000], [0]]]}',
    "huge raw": b'{"drawing": [[[1e15, 0], [0, 1]]], "format": "raw"}',
    "huge int": b'{"drawing": [[[123456789012345678901234567890], [0]]]}',
    "negative time": b'{"drawing": [[[1, 2], [1, 2], [-5, 0]]], "format": "raw"}',
    "invalid utf-8": b'{"drawing": [[[1], [2]]], "metadata": {"a": "\xff\xfe"}}',
    "lone surrogate": b'{"drawing": [[[1], [2]]], "metadata": {"a": "\\ud800"}}',
    "overlong utf-8": b'{"drawing": [[[1], [2]]], "client_ref": "\xc0\xaf"}',
    "nul in ref": b'{"drawing": [[[1], [2]]], "client_ref": "a\\u0000b"}',
    "deep array": b"[" * 100_000 + b"]" * 100_000,
    "deep object": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "deep metadata": b'{"drawing": [[[1], [2]]], "metadata": ' + b'{"a": ' * 500 + b"1" + b"}" * 500 + b"}",
    "metadata list": b'{"drawing": [[[1], [2]]], "metadata": [1, 2]}',
    "huge client_ref": b'{"drawing": [[[1], [2]]], "client_ref": "' + b"x" * 10_000 + b'"}',
    "huge metadata": b'{"drawing": [[[1], [2]]], "metadata": {"a": "' + b"x" * 100_000 + b'"}}',
    "batch of junk": b'[1, "two", null, [], {"drawing": 5}]',
    "batch too long": orjson.dumps([{"drawing": SQUARE}] * 1001),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_JSON))
def test_hostile_json_is_a_clear_4xx(env, client, name):
    before = stored(env)
    r = client.post(SUBMIT, data=HOSTILE_JSON[name], headers=auth(env), content_type="application/json")
    assert_clear_4xx(r, name)
    assert stored(env) == before


HOSTILE_NDJSON = {
    "all lines malformed": b'{"a"\n[[[\n{"drawing": \n',
    "lines not objects": b"1\n2\nnull\n",
    "invalid utf-8 only line": b'{"drawing": [[[1], [2]]], "word": "\xff"}\n',
    "NaN line": b'{"drawing": [[[NaN], [2]]]}\n',
    "only blank lines": b"\n\n   \n",
    "too many lines": b'{"drawing": [[[1], [2]]]}\n' * 1001,
}


@pytest.mark.parametrize("name", sorted(HOSTILE_NDJSON))
def test_hostile_ndjson_is_a_clear_4xx(env, client, name):
    before = stored(env)
    r = client.post(SUBMIT, data=HOSTILE_NDJSON[name], headers=auth(env), content_type="application/x-ndjson")
    assert_clear_4xx(r, name)
    assert stored(env) == before


def test_one_bad_ndjson_line_rejects_only_that_line(env, client):
    body = b'{"drawing": [[[1, 2], [3, 4]]]}\n{"drawing": [[[NaN], [1]]]}\n{"drawing": "x"}\n\xff\xfe\n{"drawing": [[[5], [6]]]}\n'
    r = client.post(SUBMIT, data=body, headers=auth(env), content_type="application/x-ndjson")
    assert r.status_code == 202
    assert r.json["accepted"] == 2 and r.json["rejected"] == 3
    assert [item["index"] for item in r.json["items"] if "error" in item] == [1, 2, 3]


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/xml", "application/x-www-form-urlencoded", "image/png",
     "application/json; charset=latin-1", "application/json; charset=utf-16", "application/javascript"],
)
def test_wrong_content_types_are_415(env, client, content_type):
    r = client.post(SUBMIT, data=orjson.dumps({"drawing": SQUARE}), headers=auth(env), content_type=content_type)
    assert r.status_code == 415 and r.json["error"]["field"] == "Content-Type", content_type


def test_a_body_shorter_than_its_content_length_is_400(env, client):
    body = orjson.dumps({"drawing": SQUARE})
    r = client.post(SUBMIT, data=body, headers=auth(env), content_type="application/json",
                    environ_overrides={"CONTENT_LENGTH": str(len(body) + 4000)})
    assert_clear_4xx(r, "short body")


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "streamed"])
def test_oversized_bodies_are_413_without_reading_them(env, client, declared):
    limit = env["app"].config["MAX_CONTENT_LENGTH"]
    body = b"[" + b"1," * (limit // 2 + 10) + b"1]"
    kwargs = {"data": body} if declared else {"input_stream": io.BytesIO(body)}
    with traced_peak() as peak:
        started = time.perf_counter()
        r = client.post(SUBMIT, headers=auth(env), content_type="application/json", **kwargs)
        took = time.perf_counter() - started
    print(f"\n[figure] {len(body) / MB:.1f} MiB body ({'declared' if declared else 'streamed'}) -> 413 in {took:.3f} s, "
          f"peak Python heap {peak[0] / MB:.1f} MiB")
    assert r.status_code == 413 and r.json["error"]["field"] == "body"
    assert took < 1.0
    # At most the allowed body is ever buffered, never the whole upload.
    assert peak[0] < limit + 4 * MB, peak[0]


BIG_BODIES = {
    "1e6 points in one stroke": orjson.dumps({"drawing": [[[7] * N_HUGE, [9] * N_HUGE]]}),
    "1e6 points in a batch item": orjson.dumps([{"drawing": [[[7] * N_HUGE, [9] * N_HUGE]]}]),
    "1e4 strokes": orjson.dumps({"drawing": [[[1, 2], [3, 4]]] * 10**4}),
    "1e4 one-point strokes": orjson.dumps({"drawing": [[[1], [2]]] * 10**4}),
    "3e5 raw points": orjson.dumps({"format": "raw", "drawing": [[[1.5] * 300_000, [2.5] * 300_000, [0.0] * 300_000]]}),
}


@pytest.mark.parametrize("name", sorted(BIG_BODIES))
def test_huge_drawings_are_refused_fast_in_bounded_memory(env, client, name):
    """Over-limit drawings are refused before they are expanded: time and memory scale with the limit, not the input."""
    body = BIG_BODIES[name]
    assert len(body) <= env["app"].config["MAX_CONTENT_LENGTH"]
    started = time.perf_counter()
    r = client.post(SUBMIT, data=body, headers=auth(env), content_type="application/json")
    took = time.perf_counter() - started
    assert_clear_4xx(r, name)
    message = (r.json.get("error") or r.json["items"][0]["error"])["message"]
    assert "limit" in message, message
    with traced_peak() as peak:
        client.post(SUBMIT, data=body, headers=auth(env), content_type="application/json")
    # Decoding JSON into Python objects costs ~16-20 bytes per body byte (a list slot plus a number
    # object per 2-4 byte value), so the cost is bounded by max_content_length. Anything beyond
    # that (copies of every point, per-point error objects) would break this bound.
    print(f"\n[figure] {name}: {len(body) / MB:.1f} MiB body -> {r.status_code} in {took:.2f} s, "
          f"peak Python heap {peak[0] / MB:.1f} MiB")
    assert peak[0] < 24 * len(body) + 16 * MB, f"{name}: peak {peak[0] / MB:.1f} MiB for a {len(body) / MB:.1f} MiB body"
    assert took < 2.0, f"{name}: {took:.2f} s"


# --------------------------------------------------------------------------- images


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int, mode: int = 0) -> bytes:
    """A syntactically valid PNG header announcing ``width`` x ``height`` with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, mode, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b"")


def zero_png(side: int, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (side, side), 0).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def jpeg_declaring(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (255, 255, 255)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def upload(client, env, data: bytes, filename: str = "x.png", mimetype: str = "image/png", **form):
    return client.post(
        SUBMIT,
        data={"image": (io.BytesIO(data), filename, mimetype), **form},
        headers=auth(env),
        content_type="multipart/form-data",
    )


BAD_IMAGES = {
    "text": (b"hello, world", "x.png", "image/png"),
    "empty": (b"", "x.png", "image/png"),
    "html": (b"<html><script>alert(1)</script></html>", "x.png", "text/html"),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', "x.svg", "image/svg+xml"),
    "gif": (b"GIF89a" + bytes(64), "x.gif", "image/gif"),
    "pdf": (b"%PDF-1.4\n" + bytes(64), "x.pdf", "application/pdf"),
    "zip": (b"PK\x03\x04" + bytes(64), "x.zip", "application/zip"),
    "png magic only": (b"\x89PNG\r\n\x1a\n", "x.png", "image/png"),
    "truncated png": (zero_png(64)[:60], "x.png", "image/png"),
    "png bad crc": (zero_png(64)[:29] + b"\x00\x00\x00\x00" + zero_png(64)[33:], "x.png", "image/png"),
    "jpeg magic only": (b"\xff\xd8\xff", "x.jpg", "image/jpeg"),
    "png 100000x100000": (png_declaring(100_000, 100_000), "bomb.png", "image/png"),
    "png 2^31 wide": (png_declaring(2**31 - 1, 1), "bomb.png", "image/png"),
    "png 20000x20000 rgba": (png_declaring(20_000, 20_000, 6), "bomb.png", "image/png"),
    "jpeg 65000x65000": (jpeg_declaring(65_000, 65_000), "bomb.jpg", "image/jpeg"),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_non_images_and_image_bombs_are_a_clear_4xx(env, client, name):
    data, filename, mimetype = BAD_IMAGES[name]
    before = stored(env)
    with PeakRss() as rss:
        started = time.perf_counter()
        r = upload(client, env, data, filename, mimetype)
        took = time.perf_counter() - started
    print(f"\n[figure] image {name}: {len(data)} bytes -> {r.status_code} in {took:.3f} s, RSS +{rss.growth / MB:.1f} MiB")
    assert_clear_4xx(r, name)
    assert r.json["error"]["field"] == "image", r.json
    assert stored(env) == before
    assert took < 2.0, f"{name}: {took:.2f} s"
    assert rss.growth < 64 * MB, f"{name}: RSS grew {rss.growth / MB:.0f} MiB"


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the (large) parent across fork and exec.
_DECODE_PEAK = """
import sys
from service.intake import image_to_bitmap

def hwm():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))

data = sys.stdin.buffer.read()
base = hwm()
try:
    image_to_bitmap(data, int(sys.argv[1]))
except Exception:
    pass
print(hwm() - base)
"""


def decode_peak_bytes(data: bytes, max_pixels: int) -> int:
    """Extra peak RSS of decoding ``data`` the way the intake does, measured in a fresh process."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _DECODE_PEAK, str(max_pixels)], input=data, capture_output=True,
                         timeout=120, check=True, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    return int(out.stdout.decode().split()[-1]) * 1024  # VmHWM is in KiB


def test_a_compressed_bomb_at_the_pixel_limit_is_decoded_in_bounded_memory(env, client):
    """A 16 MP all-black RGBA PNG is 60 kB on the wire; decoding it is bounded by max_image_pixels."""
    limit = env["app"].extensions["sketchwatch_settings"].max_image_pixels
    side = int(limit**0.5)
    data = zero_png(side, "RGBA")
    assert len(data) < 200_000
    started = time.perf_counter()
    r = upload(client, env, data)
    took = time.perf_counter() - started
    peak = decode_peak_bytes(data, limit)
    print(f"\n[figure] {side}x{side} RGBA PNG of {len(data)} bytes -> {r.status_code} in {took:.2f} s, "
          f"decode peak RSS +{peak / MB:.0f} MiB")
    assert r.status_code in (202, 400), r.json
    assert took < 10.0
    # 4 bytes per decoded pixel plus a greyscale copy; anything far beyond means an unbounded path.
    assert peak < 3 * 4 * side * side + 64 * MB, f"decode peak {peak / MB:.0f} MiB"
    # A declared-size bomb is refused before any pixel is decoded.
    bomb_peak = decode_peak_bytes(png_declaring(100_000, 100_000), limit)
    assert bomb_peak < 16 * MB, f"declared bomb peak {bomb_peak / MB:.0f} MiB"
    over = zero_png(side + 64)
    r = upload(client, env, over)
    assert_clear_4xx(r, "over the pixel limit")
    assert "pixel" in r.json["error"]["message"]


@pytest.mark.parametrize(
    "form, field",
    [
        ({"metadata": "{not json"}, "metadata"),
        ({"metadata": "[1, 2]"}, "metadata"),
        ({"client_ref": "x" * 1000}, "client_ref"),
        ({"evil": "1"}, "evil"),
    ],
)
def test_image_form_fields_are_validated(env, client, form, field):
    r = upload(client, env, zero_png(28), **form)
    assert_clear_4xx(r, form)
    assert r.json["error"]["field"] == field


def test_multipart_without_an_image_is_400(env, client):
    r = client.post(SUBMIT, data={"metadata": "{}"}, headers=auth(env), content_type="multipart/form-data")
    assert_clear_4xx(r, "no file")
    r = client.post(SUBMIT, data=b"--x\r\nbroken", headers=auth(env), content_type="multipart/form-data; boundary=x")
    assert_clear_4xx(r, "broken multipart")


# --------------------------------------------------------------------------- hypothesis on arbitrary input

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
    max_leaves=40,
)
drawing_like = st.fixed_dictionaries(
    {"drawing": st.lists(st.lists(st.lists(st.one_of(st.integers(-10, 300), st.floats(), st.text(max_size=3)), max_size=6), max_size=4), max_size=4)},
    optional={"format": st.sampled_from(["raw", "simplified", "x", ""]), "metadata": json_values, "client_ref": json_values},
)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=st.one_of(drawing_like, json_values))
def test_dashboard_draw_endpoint_never_fails(env, body):
    app = env["app"]
    client = app.test_client()
    app.config["WTF_CSRF_ENABLED"] = False  # the token is not what is being fuzzed here
    try:
        with client.session_transaction() as sess:
            with app.app_context(), db.session_scope() as s:
                sess["_user_id"] = str(s.scalar(select(User.id).where(User.username == REVIEWER[0])))
            sess["_fresh"] = True
        r = client.post("/draw", json=body)
    finally:
        app.config["WTF_CSRF_ENABLED"] = True
    assert r.status_code in (202, 400), (body, r.status_code, r.get_data()[:200])
    assert r.is_json


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    path=st.sampled_from(["/api/v1/stats/histogram", "/api/v1/sketches/1/review"]),
    params=st.dictionaries(st.sampled_from(["since", "until", "range", "model_version", "bins", "log", "x"]), st.text(max_size=30), max_size=4),
    body=json_values,
)
def test_stats_and_review_endpoints_never_fail(env, client, path, params, body):
    """Any query string or body (not only those the document allows): a JSON answer, never a 5xx."""
    if path.endswith("review"):
        r = client.post(path, json=body, headers=auth(env))
    else:
        r = client.get(path, query_string=params, headers=auth(env))
    assert r.status_code < 500, (path, params, body, r.get_data()[:200])
    assert r.is_json


# --------------------------------------------------------------------------- corrupt files fed to the CLI


def _bin_record(key_id: int, strokes: list[tuple[list[int], list[int]]], recognized: int = 1, country: bytes = b"US") -> bytes:
    out = struct.pack("<Q2sBIH", key_id, country, recognized, 1_490_000_000, len(strokes))
    for xs, ys in strokes:
        out += struct.pack("<H", len(xs)) + bytes(xs) + bytes(ys)
    return out


GOOD_RECORD = _bin_record(1, [([0, 255], [0, 255])])
CORRUPT_BIN = {
    # (bytes, the byte offset the message must name)
    "recognized byte": (_bin_record(1, [([0, 255], [0, 255])], recognized=7), 10),
    "country code": (_bin_record(1, [([0, 1], [0, 1])], country=b"\x01\x02"), 8),
    "no strokes": (_bin_record(1, []), 15),
    "truncated header": (GOOD_RECORD[:9], 0),
    "truncated stroke": (GOOD_RECORD[:-1], 19),
}


def _run_cli(args: list[str]):
    from service.cli import main

    return CliRunner().invoke(main, args, catch_exceptions=False)


def _cli_args(command: str, path: Path) -> list[str]:
    if command == "submit":
        # Nothing valid precedes the corruption, so no request is ever sent to the (absent) server.
        return ["submit", str(path), "--api-key", "sw_x", "--url", "http://127.0.0.1:9"]
    # Files are read before the model is loaded, so this needs no model either.
    return ["evaluate", "--normal", str(path), "--anomalous", str(path)]


@pytest.mark.parametrize("command", ["submit", "evaluate"])
@pytest.mark.parametrize("name", sorted(CORRUPT_BIN))
def test_corrupt_bin_file_error_names_the_file_and_offset(tmp_path, name, command):
    data, offset = CORRUPT_BIN[name]
    path = tmp_path / f"corrupt-{name.replace(' ', '-')}.bin"
    path.write_bytes(data)
    result = _run_cli(_cli_args(command, path))
    assert result.exit_code == 1
    assert str(path) in result.output and f"offset {offset}" in result.output, result.output
    assert "Traceback" not in result.output


def _npy_header(shape: tuple, dtype: str = "|u1") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


CORRUPT_NPY = {
    "not npy": b"this is not a numpy file at all",
    "bad magic": b"\x93NUMPX" + bytes(200),
    "truncated header": _npy_header((10, 784))[:20],
    "truncated data": _npy_header((10, 784)) + bytes(784 * 3 + 100),
    "wrong dtype": _npy_header((2, 784), "<f8") + bytes(2 * 784 * 8),
    "wrong shape": _npy_header((2, 100)) + bytes(200),
    "pickle": b"\x93NUMPY\x01\x00" + b"v\x00{'descr': '|O', 'fortran_order': False, 'shape': (1,), }".ljust(118) + b"\n" + bytes(16),
}


@pytest.mark.parametrize("command", ["submit", "evaluate"])
@pytest.mark.parametrize("name", sorted(CORRUPT_NPY))
def test_corrupt_npy_file_error_names_the_file_and_where(tmp_path, name, command):
    path = tmp_path / f"corrupt-{name.replace(' ', '-')}.npy"
    path.write_bytes(CORRUPT_NPY[name])
    result = _run_cli(_cli_args(command, path))
    assert result.exit_code == 1
    assert str(path) in result.output and "Traceback" not in result.output, result.output
    if name == "truncated data":
        # Where the file stops matching its header: a byte offset (or the row it cuts through).
        assert "offset" in result.output or "row" in result.output, result.output
    if name == "truncated header":
        assert "header" in result.output, result.output
