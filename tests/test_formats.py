"""Readers for every Quick Draw format, drawing validation and raw-stroke normalisation."""

from __future__ import annotations

import io
import json
import pickle
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from models.formats import (
    Bitmap,
    Drawing,
    DrawingLimits,
    FormatError,
    load_npy,
    parse_drawing,
    read_any,
    read_binary,
    read_image,
    read_ndjson,
    read_npy,
)
from models.normalize import normalize_raw, resample_stroke, simplify_rdp
from models.raster import rasterize


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


# --------------------------------------------------------------------------- .bin


def _bin_record(key_id, country, recognized, timestamp, strokes) -> bytes:
    out = struct.pack("<Q2sBIH", key_id, country, recognized, timestamp, len(strokes))
    for xs, ys in strokes:
        out += struct.pack("<H", len(xs)) + struct.pack(f"<{len(xs)}B", *xs) + struct.pack(f"<{len(ys)}B", *ys)
    return out


RECORDS = [
    (5201136883597312, b"VE", 1, 1488497110, [([130, 113, 99], [72, 40, 27]), ([76, 28], [136, 128])]),
    (18446744073709551615, b"US", 0, 0, [([0], [255])]),
    (42, b"FR", 1, 4294967295, [([1, 2, 3, 4], [5, 6, 7, 8])]),
]


@pytest.fixture
def bin_file(tmp_path):
    path = tmp_path / "cats.bin"
    path.write_bytes(b"".join(_bin_record(*r) for r in RECORDS))
    return path


def test_binary_parses_every_field(bin_file):
    drawings = list(read_binary(bin_file))
    assert len(drawings) == 3
    first = drawings[0]
    assert first.key_id == "5201136883597312"
    assert first.countrycode == "VE" and first.recognized is True and first.timestamp == 1488497110
    assert first.fmt == "simplified" and first.location == "offset 0"
    assert [s.shape for s in first.strokes] == [(2, 3), (2, 2)]
    np.testing.assert_array_equal(first.strokes[0], [[130, 113, 99], [72, 40, 27]])
    assert drawings[1].key_id == str(2**64 - 1) and drawings[1].recognized is False
    assert drawings[2].timestamp == 2**32 - 1
    assert drawings[1].location == f"offset {len(_bin_record(*RECORDS[0]))}"


def test_binary_truncated_tail_yields_earlier_drawings_then_names_offset(tmp_path, bin_file):
    data = bin_file.read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[:-3])  # inside the last stroke's coordinates
    reader = read_binary(cut)
    assert next(reader).key_id == "5201136883597312"
    assert next(reader).countrycode == "US"
    with pytest.raises(FormatError) as info:
        next(reader)
    err = info.value
    start_of_last = len(_bin_record(*RECORDS[0])) + len(_bin_record(*RECORDS[1]))
    assert err.path == str(cut) and err.location == f"offset {start_of_last + 17 + 2}"
    assert str(err) == f"{cut}: offset {start_of_last + 19}: truncated stroke"


def test_binary_truncated_header(tmp_path, bin_file):
    cut = tmp_path / "head.bin"
    first = len(_bin_record(*RECORDS[0]))
    cut.write_bytes(bin_file.read_bytes()[: first + 5])
    with pytest.raises(FormatError, match=rf"offset {first}: truncated drawing header") as info:
        list(read_binary(cut))
    assert "head.bin" in str(info.value)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (_bin_record(1, b"US", 7, 0, [([1], [1])]), "offset 10: corrupt record: recognized"),
        (_bin_record(1, b"\xff\x01", 1, 0, [([1], [1])]), "offset 8: corrupt record: country code"),
        (_bin_record(1, b"US", 1, 0, []), "offset 15: corrupt record: drawing has no strokes"),
        (_bin_record(1, b"US", 1, 0, [([], [])]), "offset 17: corrupt record: stroke has no points"),
    ],
)
def test_binary_corrupt_records(tmp_path, record, message):
    path = tmp_path / "bad.bin"
    path.write_bytes(record)
    with pytest.raises(FormatError, match=message):
        list(read_binary(path))


def test_binary_empty_file_has_no_drawings(tmp_path):
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    assert list(read_binary(path)) == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_binary_garbage_only_raises_format_error(tmp_path, data):
    path = tmp_path / "fuzz.bin"
    path.write_bytes(data)
    try:
        for drawing in read_binary(path):
            assert all(s.shape[0] == 2 and s.shape[1] > 0 for s in drawing.strokes)
    except FormatError as exc:
        assert exc.location.startswith("offset ")


# --------------------------------------------------------------------------- ndjson


def _line(drawing, **fields) -> str:
    record = {"key_id": "1", "word": "cat", "countrycode": "GB", "recognized": True,
              "timestamp": "2017-03-02 23:25:10.07453 UTC", "drawing": drawing}
    record.update(fields)
    return json.dumps(record)


GOOD_SIMPLIFIED = [[[0, 100, 255], [0, 200, 100]], [[50, 60], [50, 60]]]
GOOD_RAW = [[[300.5, 320.25, 700.0], [-40.0, 10.0, 90.5], [0, 16, 40]]]


def test_ndjson_reads_simplified_and_raw_and_detects_format(tmp_path):
    path = tmp_path / "mixed.ndjson"
    path.write_text(
        "\n".join([
            _line(GOOD_SIMPLIFIED, format="simplified"),
            "",
            _line(GOOD_RAW),  # no format field: 3 rows per stroke means raw
            _line([[[0, 500], [0, 10]]]),  # 2 rows but outside 0..255: raw
            _line([[[0.5, 20.25], [3.0, 4.0]]]),  # non-integers: raw
            _line(GOOD_SIMPLIFIED, key_id=123),
        ]) + "\n"
    )
    drawings = list(read_ndjson(path))
    assert [d.fmt for d in drawings] == ["simplified", "raw", "raw", "raw", "simplified"]
    assert [d.location for d in drawings] == ["line 1", "line 3", "line 4", "line 5", "line 6"]
    first = drawings[0]
    assert (first.key_id, first.word, first.countrycode, first.recognized) == ("1", "cat", "GB", True)
    assert first.timestamp.startswith("2017-03-02")
    assert drawings[4].key_id == "123"
    for d in drawings:
        for s in d.strokes:
            assert s.shape[0] == 2 and s.dtype == np.float64
            assert s.min() >= 0 and s.max() <= 255
    raw_points = np.concatenate(drawings[1].strokes, axis=1)
    assert raw_points.max() == 255 and raw_points.min() == 0


BAD_LINES = [
    ("{not json", "line 2: "),
    ("[1, 2]", "not a JSON object"),
    (json.dumps({"word": "cat"}), "missing field 'drawing'"),
    (_line([]), "drawing has no strokes"),
    (_line("abc"), "drawing must be a list of strokes"),
    (_line([[[1, 2, 3], [1, 2]]]), "stroke 0: coordinate lists have different lengths"),
    (_line([[[1, 2]]]), "stroke 0: expected 2 or 3 coordinate lists"),
    (_line([[[1, "2"], [1, 2]]]), "stroke 0: coordinates must be lists of numbers"),
    (_line([[[1, True], [1, 2]]]), "stroke 0: coordinates must be lists of numbers"),
    (_line([[[1, None], [1, 2]]]), "stroke 0: coordinates must be lists of numbers"),
    (_line([GOOD_SIMPLIFIED[0], [[], []]]), "stroke 1: has no points"),
    (_line([[[1, 2], [1, 2]]], format="vector"), "unknown format 'vector'"),
    (_line([[[1, 300], [1, 2]]], format="simplified"), "simplified strokes must be"),
    (_line(GOOD_SIMPLIFIED, recognized="yes"), "field 'recognized' has type str"),
    ('{"drawing": [[[1, NaN], [1, 2]]]}', "line 2: "),
]


@pytest.mark.parametrize(("bad", "message"), BAD_LINES)
def test_ndjson_bad_line_raises_naming_file_and_line(tmp_path, bad, message):
    path = tmp_path / "bad.ndjson"
    path.write_text(_line(GOOD_SIMPLIFIED) + "\n" + bad + "\n" + _line(GOOD_SIMPLIFIED) + "\n")
    reader = read_ndjson(path)
    assert next(reader).location == "line 1"
    with pytest.raises(FormatError) as info:
        next(reader)
    err = info.value
    assert err.path == str(path) and err.location == "line 2"
    assert str(err).startswith(f"{path}: line 2: ")
    assert message in str(err)


def test_ndjson_skip_and_collect_keep_reading(tmp_path):
    path = tmp_path / "some_bad.ndjson"
    lines = [_line(GOOD_SIMPLIFIED), "{oops", _line(GOOD_RAW), _line([[[1], [2], [3], [4]]]), _line(GOOD_SIMPLIFIED)]
    path.write_text("\n".join(lines))  # no trailing newline on purpose
    skipped = list(read_ndjson(path, errors="skip"))
    assert [d.location for d in skipped] == ["line 1", "line 3", "line 5"]
    collected = list(read_ndjson(path, errors="collect"))
    assert [type(x) for x in collected] == [Drawing, FormatError, Drawing, FormatError, Drawing]
    assert [x.location for x in collected] == [f"line {i}" for i in range(1, 6)]
    with pytest.raises(ValueError, match="errors must be"):
        list(read_ndjson(path, errors="ignore"))


def test_ndjson_limits_are_enforced(tmp_path):
    path = tmp_path / "big.ndjson"
    path.write_text(_line([[[1, 2], [3, 4]]] * 5) + "\n")
    with pytest.raises(FormatError, match="5 strokes"):
        list(read_ndjson(path, limits=DrawingLimits(max_strokes=4)))
    assert len(list(read_ndjson(path, limits=DrawingLimits(max_strokes=5)))) == 1


def test_shared_ndjson_files_read_cleanly(shared_data):
    cats = list(read_ndjson(shared_data / "cat.ndjson"))
    assert len(cats) == 25 and all(d.word == "cat" and d.fmt == "simplified" for d in cats)
    others = list(read_ndjson(shared_data / "others.ndjson", errors="collect"))
    assert not [x for x in others if isinstance(x, FormatError)]
    raw = [d for d in others if d.fmt == "raw"]
    assert len(others) == 9637 and len(raw) == 2137
    # The normaliser puts raw drawings in the simplified box: top-left near 0, larger side near 255.
    lows = np.array([np.concatenate(d.strokes, axis=1).min(axis=1) for d in raw])
    highs = np.array([np.concatenate(d.strokes, axis=1).max(axis=1) for d in raw])
    assert lows.min() >= 0 and highs.max() <= 255
    assert np.median(lows.max(axis=1)) == 0 and lows.max() <= 8
    assert np.median(highs.max(axis=1)) == 255 and highs.max(axis=1).min() >= 240
    assert (highs.max(axis=1) == 255).mean() > 0.8


# --------------------------------------------------------------------------- parse_drawing


def test_parse_drawing_returns_float_strokes_and_validates():
    strokes = parse_drawing(GOOD_SIMPLIFIED)
    assert len(strokes) == 2 and all(s.dtype == np.float64 and s.shape[0] == 2 for s in strokes)
    np.testing.assert_array_equal(strokes[0], GOOD_SIMPLIFIED[0])
    # Explicit raw normalises even data that would pass as simplified.
    raw = parse_drawing([[[0, 10], [0, 5]]], fmt="raw")
    np.testing.assert_array_equal(raw[0], [[0, 255], [0, 128]])
    # numpy input works too (internal callers).
    np.testing.assert_array_equal(parse_drawing([np.array(GOOD_SIMPLIFIED[0])])[0], GOOD_SIMPLIFIED[0])


@pytest.mark.parametrize(
    ("obj", "kwargs", "message"),
    [
        ([[[1, 2], [3, 4]]] * 3, {"limits": DrawingLimits(max_strokes=2)}, "3 strokes"),
        ([[list(range(50)), list(range(50))]] * 3, {"limits": DrawingLimits(max_points=120)}, "too many points"),
        ([[[1, 1e12], [3, 4]]], {}, "coordinate magnitude"),
        ([[[1, 10**400], [3, 4]]], {}, "out of range"),
        ([[[1, float("nan")], [3, 4]]], {}, "finite"),
        ([[[1, float("inf")], [3, 4]]], {}, "finite"),
        ({"strokes": []}, {}, "list of strokes"),
        ([[[1, 2], [3, 4], [5, 6]]], {"fmt": "simplified"}, "simplified strokes must be"),
    ],
)
def test_parse_drawing_rejects(obj, kwargs, message):
    with pytest.raises(ValueError, match=message):
        parse_drawing(obj, **kwargs)


json_number = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False, width=32))
json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), json_number, st.text(max_size=3)),
    lambda children: st.lists(children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(obj=json_value)
def test_parse_drawing_never_fails_with_anything_but_value_error(obj):
    try:
        strokes = parse_drawing(obj)
    except ValueError:
        return
    assert strokes and all(s.shape[0] == 2 and s.min() >= 0 and s.max() <= 255 for s in strokes)
    assert rasterize(strokes).shape == (28, 28)


coordinate = st.floats(-1e5, 1e5, allow_nan=False, allow_infinity=False)


@st.composite
def stroke_lists(draw):
    n = draw(st.integers(1, 12))
    rows = draw(st.sampled_from([2, 3]))
    return [draw(st.lists(coordinate, min_size=n, max_size=n)) for _ in range(rows)]


@settings(max_examples=200, deadline=None)
@given(obj=st.lists(stroke_lists(), min_size=1, max_size=6))
def test_any_well_formed_drawing_parses_into_the_box(obj):
    strokes = parse_drawing(obj)
    assert len(strokes) == len(obj)
    for s in strokes:
        assert s.shape[0] == 2 and s.shape[1] >= 1
        assert np.isfinite(s).all() and s.min() >= 0 and s.max() <= 255
    assert rasterize(strokes).shape == (28, 28)


def test_tiny_and_denormal_extents_stay_finite():
    for extent in (5e-324, 1e-300, 1e-12):
        strokes = normalize_raw([[[0.0, extent], [0.0, 0.0]]])
        assert np.isfinite(strokes[0]).all()


# --------------------------------------------------------------------------- normalisation


def _fake_raw(strokes, rng):
    """Raw-looking copy of a simplified drawing: scaled x3.7, offset, denser points, float jitter < 0.5 px."""
    out = []
    for s in strokes:
        pts = s * 3.7 + np.array([[123.4], [-56.7]])
        if pts.shape[1] > 1:
            t = np.linspace(0.0, 1.0, 4)[:-1]
            pieces = [pts[:, i : i + 1] + (pts[:, i + 1 : i + 2] - pts[:, i : i + 1]) * t for i in range(pts.shape[1] - 1)]
            pts = np.concatenate(pieces + [pts[:, -1:]], axis=1)
        pts = pts + rng.uniform(-0.45, 0.45, pts.shape)
        out.append(np.vstack([pts, np.arange(pts.shape[1]) * 17.0]).tolist())
    return out


def test_raw_and_simplified_copies_rasterize_alike(shared_data):
    rng = np.random.default_rng(7)
    cats = [d.strokes for d in read_ndjson(shared_data / "cat.ndjson")]
    corr = []
    for strokes in cats:
        raw = _fake_raw(strokes, rng)
        normalised = parse_drawing(raw)  # 3 rows: detected as raw
        assert len(normalised) == len(strokes)
        corr.append(_corr(rasterize(normalised), rasterize(strokes)))
    assert min(corr) > 0.98
    assert np.mean(corr) > 0.995


def test_normalize_raw_geometry():
    raw = [[[1000.0, 1100.0, 1200.0], [500.0, 500.0, 550.0]], [[1000.0], [580.0]]]
    line, dot = normalize_raw(raw)
    # Aligned to the top-left and scaled by 255/200: the corner survives RDP, resampled points do not.
    assert line.shape == (2, 3)
    assert line[:, 0].tolist() == [0, 0] and line[:, -1].tolist() == [255, 64]
    assert abs(line[0, 1] - 127.5) <= 1 and line[1, 1] == 0
    assert dot.tolist() == [[0], [102]]
    assert normalize_raw([]) == []
    assert [s.tolist() for s in normalize_raw([[[7.0, 7.0], [3.0, 3.0]]])] == [[[0], [0]]]


def test_resample_and_rdp_helpers():
    line = np.array([[0.0, 3.0], [0.0, 4.0]])
    resampled = resample_stroke(line)
    np.testing.assert_allclose(np.hypot(*np.diff(resampled, axis=1)), 1.0)
    assert resampled[:, -1].tolist() == [3.0, 4.0]
    zigzag = np.array([[0.0, 1.0, 2.0, 3.0, 10.0], [0.0, 0.5, -0.5, 0.0, 9.0]])
    simplified = simplify_rdp(zigzag, epsilon=2.0)
    assert simplified.tolist() == [[0.0, 3.0, 10.0], [0.0, 0.0, 9.0]]


# --------------------------------------------------------------------------- .npy


def test_npy_flat_and_square(tmp_path):
    flat = np.arange(3 * 784, dtype=np.uint32).astype(np.uint8).reshape(3, 784)
    np.save(tmp_path / "flat.npy", flat)
    np.save(tmp_path / "square.npy", flat.reshape(3, 28, 28))
    for name in ("flat.npy", "square.npy"):
        bitmaps = list(read_npy(tmp_path / name))
        assert [b.index for b in bitmaps] == [0, 1, 2]
        np.testing.assert_array_equal(bitmaps[2].pixels, flat[2].reshape(28, 28))
        assert bitmaps[0].pixels.dtype == np.uint8 and bitmaps[0].pixels.shape == (28, 28)
    assert isinstance(load_npy(tmp_path / "flat.npy").base, np.memmap)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((3, 100), dtype=np.uint8), r"expected shape \(N, 784\) or \(N, 28, 28\), got \(3, 100\)"),
        (np.zeros((3, 784), dtype=np.float32), "expected dtype uint8, got float32"),
        (np.zeros((784,), dtype=np.uint8), "expected shape"),
        (np.array([{"a": 1}], dtype=object), "not a readable .npy file"),
    ],
)
def test_npy_wrong_content_names_the_file(tmp_path, array, message):
    path = tmp_path / "wrong.npy"
    np.save(path, array, allow_pickle=True)
    with pytest.raises(FormatError, match=message) as info:
        list(read_npy(path))
    assert info.value.path == str(path)


def test_npy_not_numpy(tmp_path):
    path = tmp_path / "fake.npy"
    path.write_bytes(b"this is not numpy")
    with pytest.raises(FormatError, match="fake.npy: not a readable .npy file"):
        load_npy(path)


def test_shared_bitmaps_stream(shared_data):
    rows = list(read_npy(shared_data / "cat_bitmaps_28.npy"))
    assert len(rows) == 3500 and rows[-1].index == 3499


# --------------------------------------------------------------------------- images


def _paper_drawing(size=(400, 300), ink=0, paper=255, mode="L") -> Image.Image:
    img = Image.new(mode, size, paper)
    draw = ImageDraw.Draw(img)
    draw.ellipse((100, 60, 260, 220), outline=ink, width=10)
    return img


def _png_bytes(img: Image.Image, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def test_image_dark_ink_on_paper_becomes_centred_white_on_black(tmp_path):
    path = tmp_path / "circle.png"
    _paper_drawing().save(path)
    img = read_image(path)
    assert img.shape == (28, 28) and img.dtype == np.uint8
    assert img[0].max() == 0 and img[:, 0].max() == 0 and img.max() >= 200
    ys, xs = np.nonzero(img > 25)
    # Ink spans about 271/304 of the frame (like the official rendering) and is centred.
    assert 23 <= xs.max() - xs.min() + 1 <= 27 and 23 <= ys.max() - ys.min() + 1 <= 27
    weights = img.astype(float)
    assert abs((weights.sum(axis=0) * np.arange(28)).sum() / weights.sum() - 13.5) < 0.5
    assert abs((weights.sum(axis=1) * np.arange(28)).sum() / weights.sum() - 13.5) < 0.5
    assert img[14, 14] == 0  # the inside of the circle stays background


def test_image_polarity_transparency_and_jpeg_agree():
    reference = read_image(_png_bytes(_paper_drawing()))
    white_on_black = read_image(_png_bytes(_paper_drawing(ink=255, paper=0)))
    assert _corr(reference, white_on_black) > 0.99
    transparent = _paper_drawing(mode="RGBA", ink=(0, 0, 0, 255), paper=(255, 255, 255, 0))
    assert _corr(reference, read_image(_png_bytes(transparent))) > 0.95
    jpeg = read_image(_png_bytes(_paper_drawing().convert("RGB"), fmt="JPEG"))
    assert _corr(reference, jpeg) > 0.95


def test_image_of_strokes_matches_rasterizer(shared_data):
    # Render a cat at 4x with the official line width, dark on light and off-centre; read_image must frame it.
    strokes = next(read_ndjson(shared_data / "cat.ndjson")).strokes
    k = 4 * 28 / 304
    img = Image.new("L", (1400, 1300), 230)
    draw = ImageDraw.Draw(img)
    for s in strokes:
        pts = [(300 + x * k * 4, 200 + y * k * 4) for x, y in s.T]
        draw.line(pts, fill=20, width=round(16 * k * 4), joint="curve")
        for x, y in pts:
            r = 8 * k * 4
            draw.ellipse((x - r, y - r, x + r, y + r), fill=20)
    assert _corr(read_image(_png_bytes(img)), rasterize(strokes)) > 0.9


def test_image_limits_and_errors(tmp_path):
    with pytest.raises(FormatError, match="above the 1000 pixel limit"):
        read_image(_png_bytes(_paper_drawing()), max_pixels=1000)
    with pytest.raises(FormatError, match="<bytes>: not a PNG or JPEG image"):
        read_image(b"definitely not an image")
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(FormatError, match="notes.png: not a PNG or JPEG image"):
        read_image(text)
    truncated = _png_bytes(_paper_drawing())[:200]
    with pytest.raises(FormatError):
        read_image(truncated)
    blank = read_image(_png_bytes(Image.new("L", (50, 50), 255)))
    assert blank.shape == (28, 28) and not blank.any()


# --------------------------------------------------------------------------- dispatch and errors


def test_read_any_dispatches_by_suffix(tmp_path, bin_file):
    (tmp_path / "a.ndjson").write_text(_line(GOOD_SIMPLIFIED) + "\n")
    (tmp_path / "b.JSONL").write_text(_line(GOOD_RAW) + "\n")
    np.save(tmp_path / "c.npy", np.zeros((2, 784), dtype=np.uint8))
    _paper_drawing().save(tmp_path / "d.png")
    _paper_drawing().convert("RGB").save(tmp_path / "e.jpeg")
    assert len(list(read_any(bin_file))) == 3
    assert isinstance(next(read_any(tmp_path / "a.ndjson")), Drawing)
    assert next(read_any(tmp_path / "b.JSONL")).fmt == "raw"
    assert [b.index for b in read_any(tmp_path / "c.npy")] == [0, 1]
    for name in ("d.png", "e.jpeg"):
        (item,) = list(read_any(tmp_path / name))
        assert isinstance(item, Bitmap) and item.pixels.shape == (28, 28) and item.pixels.any()
    (tmp_path / "f.csv").write_text("x,y\n")
    with pytest.raises(FormatError, match=r"f.csv: unsupported file type '.csv'"):
        list(read_any(tmp_path / "f.csv"))


def test_format_error_fields_and_pickling():
    err = FormatError("cats.bin", "offset 1234", "truncated stroke")
    assert str(err) == "cats.bin: offset 1234: truncated stroke"
    assert (err.path, err.location, err.message) == ("cats.bin", "offset 1234", "truncated stroke")
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.location == "offset 1234"
    assert str(FormatError("x.npy", None, "bad")) == "x.npy: bad"
