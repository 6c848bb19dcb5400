"""Readers for every Quick Draw input format, all streaming (generators; a file is never loaded whole).

* ``read_ndjson(path, errors=...)``: simplified or raw ndjson lines -> :class:`Drawing`.
  ``errors="raise"`` stops at the first bad line with a :class:`FormatError`; ``"skip"`` drops bad
  lines; ``"collect"`` yields the :class:`FormatError` *instead of* each bad line, so one pass gives
  the good drawings and a report of the bad ones (``isinstance(item, FormatError)``).
* ``read_binary(path)``: the Quick Draw ``.bin`` format -> :class:`Drawing` (a corrupt or truncated
  record raises a :class:`FormatError` naming the byte offset, after the good records before it).
* ``read_npy(path)``: (N, 784) or (N, 28, 28) uint8 bitmaps (memory-mapped) -> :class:`Bitmap`.
* ``read_image(path_or_bytes)``: PNG/JPEG of any size -> (28, 28) uint8, white ink on black.
* ``read_any(path)``: dispatch on the file suffix.
* ``parse_drawing(obj, fmt)``: validate one JSON drawing (the intake API uses it per sketch).

Strokes are always returned as (2, n) float64 arrays (x row, y row) in the simplified 0..255 box;
raw drawings are converted with :func:`models.normalize.normalize_raw`.
"""

from __future__ import annotations

import io
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import orjson

from models.normalize import normalize_raw
from models.raster import SIDE

SIMPLIFIED = "simplified"
RAW = "raw"
FORMATS = (SIMPLIFIED, RAW)
_NUMBER_TYPES = frozenset((int, float))
# Little-endian header of one .bin record: key_id, countrycode, recognized, timestamp, n_strokes.
_BIN_HEADER = struct.Struct("<Q2sBIH")
_BIN_COUNT = struct.Struct("<H")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NDJSON_SUFFIXES = (".ndjson", ".jsonl")
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000
# Large images are reduced to about this side before analysis; the output is 28 px anyway.
_WORK_SIDE = 1024
_SUPERSAMPLE = 16
# Ink thresholds (fraction of full intensity): any ink at all, and the edge of a stroke.
_INK_PRESENT = 0.1
_INK_EDGE = 0.5
# In the official rendering a drawing's ink (point box 255 + line width 16) spans 271 of 304 units.
_INK_FRACTION = (255.0 + 16.0) / (256.0 + 2 * 16.0 + 16.0)


class FormatError(ValueError):
    """Bad input data, located by file and line or byte offset."""

    def __init__(self, path: str | Path | None, location: str | None, message: str):
        self.path = str(path) if path is not None else None
        self.location = location
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        return ": ".join(p for p in (self.path, self.location, self.message) if p)

    def __reduce__(self):
        return (type(self), (self.path, self.location, self.message))


@dataclass(frozen=True)
class DrawingLimits:
    """Upper bounds that keep one drawing's cost bounded (the intake API enforces them per sketch)."""

    max_strokes: int = 1_000
    max_points: int = 50_000
    max_abs_coordinate: float = 1.0e6


DEFAULT_LIMITS = DrawingLimits()


@dataclass
class Drawing:
    """One stroke drawing with its Quick Draw metadata; ``strokes`` are (2, n) arrays in the 0..255 box."""

    strokes: list[np.ndarray]
    key_id: str | None = None
    word: str | None = None
    countrycode: str | None = None
    recognized: bool | None = None
    timestamp: str | int | None = None
    fmt: str = SIMPLIFIED
    location: str | None = None


@dataclass
class Bitmap:
    """One 28x28 uint8 bitmap (white ink on black) and its row index in the source."""

    pixels: np.ndarray
    index: int
    location: str | None = None


# --------------------------------------------------------------------------- drawings


def _validate_stroke(stroke: Any, i: int, max_points: int) -> np.ndarray:
    """Check one JSON stroke ([x..], [y..][, [t..]]) and return it as a float64 (rows, n) array."""
    if isinstance(stroke, np.ndarray):
        rows = list(stroke) if stroke.ndim == 2 else None
    elif isinstance(stroke, (list, tuple)):
        rows = stroke
    else:
        rows = None
    if rows is None or len(rows) not in (2, 3):
        raise ValueError(f"stroke {i}: expected 2 or 3 coordinate lists ([x...], [y...][, [t...]])")
    if not all(isinstance(row, (list, tuple, np.ndarray)) for row in rows):
        raise ValueError(f"stroke {i}: coordinates must be lists of numbers")
    n = len(rows[0])
    if any(len(row) != n for row in rows):
        raise ValueError(f"stroke {i}: coordinate lists have different lengths")
    if n == 0:
        raise ValueError(f"stroke {i}: has no points")
    if n > max_points:
        raise ValueError(f"drawing has too many points (stroke {i} alone exceeds the remaining {max_points})")
    for row in rows:
        if isinstance(row, np.ndarray):
            if row.ndim != 1 or row.dtype.kind not in "iuf":
                raise ValueError(f"stroke {i}: coordinates must be lists of numbers")
        elif not set(map(type, row)) <= _NUMBER_TYPES:
            # type() rather than isinstance(): bools and strings are not coordinates.
            raise ValueError(f"stroke {i}: coordinates must be lists of numbers")
    try:
        return np.array(rows, dtype=np.float64)
    except OverflowError:
        raise ValueError(f"stroke {i}: coordinate out of range") from None


def _parse_strokes(obj: Any, fmt: str | None, limits: DrawingLimits) -> tuple[list[np.ndarray], str]:
    """Validate a JSON drawing and return (simplified strokes, detected format)."""
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (expected 'simplified' or 'raw')")
    if not isinstance(obj, (list, tuple)):
        raise ValueError("drawing must be a list of strokes")
    if not obj:
        raise ValueError("drawing has no strokes")
    if len(obj) > limits.max_strokes:
        raise ValueError(f"drawing has {len(obj)} strokes (limit {limits.max_strokes})")
    strokes = []
    total = 0
    for i, stroke in enumerate(obj):
        arr = _validate_stroke(stroke, i, limits.max_points - total)
        total += arr.shape[1]
        strokes.append(arr)
    points = np.concatenate([s[:2] for s in strokes], axis=1)
    if not np.isfinite(points).all():
        raise ValueError("coordinates must be finite numbers")
    if np.abs(points).max() > limits.max_abs_coordinate:
        raise ValueError(f"coordinate magnitude exceeds {limits.max_abs_coordinate:g}")
    three_rows = any(s.shape[0] == 3 for s in strokes)
    in_box = points.min() >= 0.0 and points.max() <= 255.0
    if fmt is None:
        fmt = SIMPLIFIED if (not three_rows and in_box and (points == np.rint(points)).all()) else RAW
    elif fmt == SIMPLIFIED and (three_rows or not in_box):
        raise ValueError("simplified strokes must be [[x...], [y...]] with coordinates in 0..255")
    if fmt == RAW:
        return normalize_raw(strokes), RAW
    return strokes, SIMPLIFIED


def parse_drawing(obj: Any, fmt: str | None = None, limits: DrawingLimits = DEFAULT_LIMITS) -> list[np.ndarray]:
    """Validate one JSON drawing and return its strokes as (2, n) float64 arrays in the 0..255 box.

    ``fmt`` None detects raw input (a third time row, non-integers or coordinates outside 0..255).
    Raises ValueError with a message naming the offending stroke.
    """
    return _parse_strokes(obj, fmt, limits)[0]


def _optional(record: dict, name: str, kinds: tuple[type, ...]) -> Any:
    """Return a metadata field if present, checking its JSON type."""
    value = record.get(name)
    if value is not None and type(value) not in kinds:
        raise ValueError(f"field {name!r} has type {type(value).__name__}")
    return value


def _drawing_from_record(record: Any, limits: DrawingLimits, location: str) -> Drawing:
    """Build a Drawing from one decoded ndjson object."""
    if not isinstance(record, dict):
        raise ValueError("line is not a JSON object")
    if "drawing" not in record:
        raise ValueError("missing field 'drawing'")
    fmt = _optional(record, "format", (str,))
    strokes, detected = _parse_strokes(record["drawing"], fmt, limits)
    key_id = _optional(record, "key_id", (str, int))
    return Drawing(
        strokes=strokes,
        key_id=None if key_id is None else str(key_id),
        word=_optional(record, "word", (str,)),
        countrycode=_optional(record, "countrycode", (str,)),
        recognized=_optional(record, "recognized", (bool,)),
        timestamp=_optional(record, "timestamp", (str, int, float)),
        fmt=detected,
        location=location,
    )


def read_ndjson(
    path: str | Path,
    errors: Literal["raise", "skip", "collect"] = "raise",
    limits: DrawingLimits = DEFAULT_LIMITS,
) -> Iterator[Drawing | FormatError]:
    """Stream drawings from a Quick Draw ndjson file (simplified or raw lines, mixed allowed).

    errors="raise" raises the first FormatError, "skip" drops bad lines, "collect" yields each
    FormatError in place of its line (so callers filter with isinstance).
    """
    if errors not in ("raise", "skip", "collect"):
        raise ValueError(f"errors must be 'raise', 'skip' or 'collect', not {errors!r}")
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            location = f"line {lineno}"
            try:
                record = orjson.loads(line)
                yield _drawing_from_record(record, limits, location)
            except (orjson.JSONDecodeError, ValueError) as exc:
                err = FormatError(path, location, str(exc) or type(exc).__name__)
                if errors == "raise":
                    raise err from None
                if errors == "collect":
                    yield err


def _read_exact(fh: BinaryIO, n: int, path: str | Path, offset: int, what: str) -> bytes:
    """Read exactly n bytes or raise a FormatError for a truncated file."""
    data = fh.read(n)
    if len(data) != n:
        raise FormatError(path, f"offset {offset}", f"truncated {what}")
    return data


def read_binary(path: str | Path) -> Iterator[Drawing]:
    """Stream drawings from a Quick Draw ``.bin`` file (little-endian packed records)."""
    with open(path, "rb") as fh:
        offset = 0
        while True:
            head = fh.read(_BIN_HEADER.size)
            if not head:
                return
            start = offset
            if len(head) != _BIN_HEADER.size:
                raise FormatError(path, f"offset {start}", "truncated drawing header")
            key_id, country, recognized, timestamp, n_strokes = _BIN_HEADER.unpack(head)
            if recognized > 1:
                raise FormatError(path, f"offset {start + 10}", f"corrupt record: recognized byte is {recognized}")
            if not all(32 <= b < 127 or b == 0 for b in country):
                raise FormatError(path, f"offset {start + 8}", f"corrupt record: country code {country!r}")
            if n_strokes == 0:
                raise FormatError(path, f"offset {start + 15}", "corrupt record: drawing has no strokes")
            offset += _BIN_HEADER.size
            strokes = []
            for _ in range(n_strokes):
                (n_points,) = _BIN_COUNT.unpack(_read_exact(fh, 2, path, offset, "stroke header"))
                if n_points == 0:
                    raise FormatError(path, f"offset {offset}", "corrupt record: stroke has no points")
                offset += 2
                xy = _read_exact(fh, 2 * n_points, path, offset, "stroke")
                offset += 2 * n_points
                strokes.append(np.frombuffer(xy, dtype=np.uint8).reshape(2, n_points).astype(np.float64))
            yield Drawing(
                strokes=strokes,
                key_id=str(key_id),
                countrycode=country.rstrip(b"\x00").decode("ascii"),
                recognized=bool(recognized),
                timestamp=timestamp,
                fmt=SIMPLIFIED,
                location=f"offset {start}",
            )


# --------------------------------------------------------------------------- bitmaps


def load_npy(path: str | Path) -> np.ndarray:
    """Memory-map a bitmap .npy file and return it as a read-only (N, 28, 28) uint8 view."""
    _check_npy_length(path)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise FormatError(path, None, f"not a readable .npy file ({exc})") from None
    if not isinstance(arr, np.ndarray):
        raise FormatError(path, None, "expected a single array, not an archive")
    if arr.dtype != np.uint8:
        raise FormatError(path, None, f"expected dtype uint8, got {arr.dtype}")
    if arr.ndim == 2 and arr.shape[1] == SIDE * SIDE:
        return arr.reshape(arr.shape[0], SIDE, SIDE)
    if arr.ndim == 3 and arr.shape[1:] == (SIDE, SIDE):
        return arr
    raise FormatError(path, None, f"expected shape (N, 784) or (N, 28, 28), got {arr.shape}")


def _check_npy_length(path: str | Path) -> None:
    """Name the offset where a truncated .npy ends, which np.load's own error does not."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            data_offset = fh.tell()
    except (ValueError, OSError, EOFError):
        return  # np.load reports unreadable headers itself
    have = os.path.getsize(path) - data_offset
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if have < need:
        row_bytes = max(1, need // max(1, shape[0])) if shape else need
        rows = shape[0] if shape else 1
        raise FormatError(
            path,
            f"offset {data_offset + have}",
            f"file ends inside row {have // row_bytes} of {rows}: the header declares shape {shape} "
            f"({need} bytes of {dtype} from offset {data_offset}) but only {have} bytes follow",
        )


def read_npy(path: str | Path) -> Iterator[Bitmap]:
    """Stream 28x28 bitmaps from a (N, 784) or (N, 28, 28) uint8 .npy file."""
    arr = load_npy(path)
    for i in range(arr.shape[0]):
        yield Bitmap(np.array(arr[i]), i, f"row {i}")


def _open_image(source: str | Path | bytes | bytearray | memoryview, max_pixels: int):
    """Open a PNG/JPEG with PIL, refusing oversized images before decoding and shrinking big ones."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    is_bytes = isinstance(source, (bytes, bytearray, memoryview))
    name = "<bytes>" if is_bytes else str(source)
    try:
        img = Image.open(io.BytesIO(bytes(source)) if is_bytes else source, formats=("PNG", "JPEG"))
    except FileNotFoundError:
        raise
    except Image.DecompressionBombError as exc:
        raise FormatError(name, None, f"image too large ({exc})") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise FormatError(name, None, f"not a PNG or JPEG image ({exc})") from None
    width, height = img.size
    if width * height > max_pixels:
        raise FormatError(name, None, f"image is {width}x{height}, above the {max_pixels} pixel limit")
    try:
        if img.format == "JPEG":
            # Let the JPEG decoder downscale by itself: far less memory for photos.
            img.draft("RGB", (_WORK_SIDE, _WORK_SIDE))
        img = ImageOps.exif_transpose(img)
        img = img.convert("RGBA" if _has_alpha(img) else "L")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise FormatError(name, None, f"corrupt image ({exc})") from None
    factor = math.ceil(max(img.size) / _WORK_SIDE)
    if factor > 1:
        img = img.reduce(factor)
    return img


def _has_alpha(img) -> bool:
    """Whether an image carries transparency."""
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def _ink_map(img) -> np.ndarray:
    """Ink intensity (float32, 0 = background, up to 255) of an "L" or "RGBA" image."""
    if img.mode == "RGBA":
        alpha = np.asarray(img.getchannel("A"), dtype=np.float32)
        # On a transparent canvas the opaque pixels are the ink, whatever their colour.
        if alpha.min() < 255:
            return alpha
        img = img.convert("L")
    grey = np.asarray(img, dtype=np.float32)
    border = np.concatenate((grey[0], grey[-1], grey[:, 0], grey[:, -1]))
    background = float(np.median(border))
    if background > 127.5:
        # Dark ink on light paper: flip to the dataset's white-on-black.
        grey = 255.0 - grey
        background = 255.0 - background
    peak = float(grey.max())
    if peak - background < 1.0:
        return np.zeros_like(grey)
    return np.clip((grey - background) * (255.0 / (peak - background)), 0.0, 255.0)


def _bounds(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) half-open bounding box of a mask, None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def read_image(
    source: str | Path | bytes | bytearray | memoryview, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> np.ndarray:
    """Convert a PNG/JPEG (path or bytes) to a (28, 28) uint8 bitmap framed like the official rendering.

    Light backgrounds are inverted (dark ink on paper becomes white on black), the ink is cropped,
    scaled with its aspect kept so its larger side spans 271/304 of the frame, centred, and area-resized.
    """
    from PIL import Image

    ink = _ink_map(_open_image(source, max_pixels))
    present = _bounds(ink > _INK_PRESENT * 255.0)
    if present is None:
        return np.zeros((SIDE, SIDE), dtype=np.uint8)
    # Frame by the half-intensity outline (where an antialiased stroke edge really is); the faint
    # fringe beyond it is still copied, into the padding, so no ink is cut off.
    edges = _bounds(ink > _INK_EDGE * 255.0) or present
    top, bottom, left, right = present
    g_top, g_bottom, g_left, g_right = edges
    grid = SIDE * _SUPERSAMPLE  # a finer grid first, so centring is exact to 1/32 px after the box filter
    scale = grid * _INK_FRACTION / max(g_bottom - g_top, g_right - g_left)
    centre_x = (g_left + g_right) / 2.0
    centre_y = (g_top + g_bottom) / 2.0
    crop = np.ascontiguousarray(ink[top:bottom, left:right], dtype=np.float32)
    new_w = max(int(round((right - left) * scale)), 1)
    new_h = max(int(round((bottom - top) * scale)), 1)
    resample = Image.Resampling.BOX if scale < 1.0 else Image.Resampling.BILINEAR
    ink_img = Image.fromarray(crop).resize((new_w, new_h), resample=resample)
    canvas = Image.new("F", (grid, grid), 0.0)
    canvas.paste(ink_img, (int(round(grid / 2 + (left - centre_x) * scale)), int(round(grid / 2 + (top - centre_y) * scale))))
    small = canvas.resize((SIDE, SIDE), resample=Image.Resampling.BOX)
    return np.clip(np.rint(np.asarray(small)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- dispatch


def read_any(path: str | Path, **kwargs: Any) -> Iterator[Drawing | Bitmap | FormatError]:
    """Stream the records of any supported file, chosen by suffix (.bin, .ndjson/.jsonl, .npy, .png/.jpg/.jpeg)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".bin":
        yield from read_binary(path, **kwargs)
    elif suffix in NDJSON_SUFFIXES:
        yield from read_ndjson(path, **kwargs)
    elif suffix == ".npy":
        yield from read_npy(path, **kwargs)
    elif suffix in IMAGE_SUFFIXES:
        yield Bitmap(read_image(path, **kwargs), 0, None)
    else:
        raise FormatError(
            path, None, f"unsupported file type {suffix or '(none)'!r}: expected .bin, .ndjson, .jsonl, .npy, .png, .jpg or .jpeg"
        )
