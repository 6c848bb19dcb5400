"""What a reviewer sees of a score: the strokes as drawn (vector SVG) and a heatmap of where the error is.

The heatmap colours every inked pixel by its own share of reconstruction error, the per-pixel form of the
score formula: e = (x - r)^2 / (x^2 + r^2), 0 where the model reproduced the ink, 1 where it erased or
invented it. The colour scale is fixed and pinned to the threshold t: blue at 0, amber at t, red at 1, so
the same colour means the same error on every card, and a drawing the model refused outright (its
reconstruction blank) shows up in red where its reconstruction would show nothing.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from xml.sax.saxutils import quoteattr

import numpy as np

from models import raster
from service import images

# Colour stops of the heatmap (RGB): well reconstructed, error at the threshold, nothing reconstructed.
LOW = (47, 111, 222)
MID = (240, 176, 52)
HIGH = (178, 24, 43)
PAPER = (255, 255, 255)
_EPS = 1e-6
STROKE_WIDTH = 7
MAX_POINTS = 20_000


def pixel_error(input_raw: bytes, recon_raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(per-pixel error e in [0, 1], ink presence max(x, r) in [0, 1]), both (28, 28) float."""
    x = images.bitmap_array(input_raw, "input bitmap").astype(np.float64) / 255.0
    r = images.bitmap_array(recon_raw, "reconstruction").astype(np.float64) / 255.0
    err = np.square(x - r) / (np.square(x) + np.square(r) + _EPS)
    return np.clip(err, 0.0, 1.0), np.maximum(x, r)


def colour_scale(e: np.ndarray, threshold: float) -> np.ndarray:
    """RGB (..., 3) float of errors ``e`` on the fixed scale LOW (0) .. MID (threshold) .. HIGH (1)."""
    t = min(max(float(threshold), 0.01), 0.99)
    low, mid, high = (np.array(c, dtype=np.float64) for c in (LOW, MID, HIGH))
    below = np.clip(e / t, 0.0, 1.0)[..., None]
    above = np.clip((e - t) / (1.0 - t), 0.0, 1.0)[..., None]
    return np.where(e[..., None] <= t, low + (mid - low) * below, mid + (high - mid) * above)


def heatmap_rgb(input_raw: bytes, recon_raw: bytes, threshold: float) -> np.ndarray:
    """(28, 28, 3) uint8 heatmap: each inked pixel in its error's colour, faded with its ink; paper elsewhere."""
    e, presence = pixel_error(input_raw, recon_raw)
    colour = colour_scale(e, threshold)
    paper = np.array(PAPER, dtype=np.float64)
    rgb = paper + (colour - paper) * presence[..., None]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def heatmap_png(input_raw: bytes, recon_raw: bytes, threshold: float, scale: int) -> bytes:
    """The heatmap as a PNG enlarged ``scale`` times."""
    return images.encode_png(heatmap_rgb(input_raw, recon_raw, threshold), scale)


def legend_stops(threshold: float) -> list[tuple[float, str]]:
    """(error, CSS colour) stops of the scale, for the legend drawn under the images."""
    t = min(max(float(threshold), 0.01), 0.99)
    return [(0.0, _hex(LOW)), (t, _hex(MID)), (1.0, _hex(HIGH))]


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#%02x%02x%02x" % rgb


class DrawingError(ValueError):
    """A stored drawing that is not a list of [[x..], [y..]] strokes."""


def _points(stroke) -> list[tuple[float, float]]:
    if not isinstance(stroke, (list, tuple)) or len(stroke) < 2:
        raise DrawingError("a stroke must hold an x and a y row")
    xs, ys = stroke[0], stroke[1]
    if not isinstance(xs, (list, tuple)) or not isinstance(ys, (list, tuple)) or len(xs) != len(ys):
        raise DrawingError("a stroke's x and y rows must be lists of the same length")
    out = []
    for x, y in zip(xs, ys):
        if isinstance(x, bool) or isinstance(y, bool) or not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
            raise DrawingError("coordinates must be numbers")
        if not (math.isfinite(x) and math.isfinite(y)):
            raise DrawingError("coordinates must be finite")
        out.append((float(x), float(y)))
    return out


def strokes_svg(drawing: Sequence, title: str = "") -> str:
    """The drawing as a standalone SVG: one polyline per stroke, at the stored resolution, framed like the bitmap."""
    if not isinstance(drawing, (list, tuple)) or not drawing:
        raise DrawingError("the drawing has no strokes")
    strokes = [_points(s) for s in drawing]
    if sum(len(s) for s in strokes) > MAX_POINTS:
        raise DrawingError("the drawing has too many points to draw")
    xs = [x for s in strokes for x, _ in s]
    ys = [y for s in strokes for _, y in s]
    # The frame of the 28x28 bitmap the model saw (models.raster: centred by the maximum, then padded), so the
    # strokes line up with the heatmap beside them.
    left = -((raster.ORIGINAL_SIDE - max(xs)) / 2.0 + raster.TOTAL_PADDING / 2.0)
    top = -((raster.ORIGINAL_SIDE - max(ys)) / 2.0 + raster.TOTAL_PADDING / 2.0)
    side = raster.ORIGINAL_SIDE + raster.TOTAL_PADDING
    lines = []
    for s in strokes:
        pts = " ".join(f"{_num(x)},{_num(y)}" for x, y in (s if len(s) > 1 else s * 2))
        lines.append(f'<polyline points="{pts}"/>')
    label = f"<title>{_escape(title)}</title>" if title else ""
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="{_num(left)} {_num(top)} {_num(side)} {_num(side)}" '
        'role="img">'
        f"{label}"
        '<rect x="-100000" y="-100000" width="200000" height="200000" fill="#ffffff"/>'
        f'<g fill="none" stroke="#1d2330" stroke-width="{STROKE_WIDTH}" stroke-linecap="round" stroke-linejoin="round">'
        + "".join(lines)
        + "</g></svg>"
    )


def _num(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".") if not float(v).is_integer() else str(int(v))


def _escape(text: str) -> str:
    return quoteattr(text)[1:-1]


def etag(*parts) -> str:
    """Strong validator over the parts an image is rendered from."""
    h = hashlib.blake2b(digest_size=12)
    for part in parts:
        h.update(b"\x00" + (part if isinstance(part, bytes) else str(part).encode()))
    return h.hexdigest()
