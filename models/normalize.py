"""Turn raw Quick Draw strokes into the "simplified" representation, the way Google made the simplified files.

Google's recipe: align the drawing to the top-left corner (minimum 0), scale it uniformly so that the
larger side is 255, resample every stroke with 1-pixel spacing, simplify every stroke with
Ramer-Douglas-Peucker (epsilon 2.0), and round the coordinates to integers in 0..255.

RDP measures the distance to the chord's *line* (the classic algorithm), so like in Google's files a
short spike pointing back along a stroke can be dropped and the result does not always touch 0 or 255.
The per-stroke work runs in C (``models/_kernels.c``, built at install, bit-identical to the numba
code it replaced), so nothing compiles at run time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models import _kernels

SIMPLIFIED_MAX = 255.0
RESAMPLE_SPACING = 1.0
RDP_EPSILON = 2.0


def _xy(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The x and y rows of a (2, n) array as contiguous float64 buffers for the kernels."""
    return np.ascontiguousarray(points[0], dtype=np.float64), np.ascontiguousarray(points[1], dtype=np.float64)


def simplify_rdp(points: np.ndarray, epsilon: float = RDP_EPSILON) -> np.ndarray:
    """Ramer-Douglas-Peucker simplification of a (2, n) polyline; end points are always kept."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape[1] < 3:
        return points.copy()
    keep = np.frombuffer(_kernels.rdp_keep(*_xy(points), float(epsilon)), dtype=np.bool_)
    return points[:, keep]


def resample_stroke(points: np.ndarray, spacing: float = RESAMPLE_SPACING) -> np.ndarray:
    """Resample a (2, n) polyline at equal arc-length ``spacing``, keeping both end points."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape[1] < 2:
        return points.copy()
    xs, ys = _kernels.resample(*_xy(points), float(spacing))
    return np.vstack((np.frombuffer(xs), np.frombuffer(ys)))


def normalize_raw(strokes: Sequence) -> list[np.ndarray]:
    """Map raw strokes ((2 or 3, n): x, y[, t]; any range) to simplified (2, n) float64 integer-valued strokes."""
    arrays = [a for a in (np.asarray(s, dtype=np.float64)[:2] for s in strokes) if a.shape[1] > 0]
    if not arrays:
        return []
    ptr = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([a.shape[1] for a in arrays], out=ptr[1:])
    points = np.concatenate(arrays, axis=1)
    # A drawing that is a single spot has no size to scale: it stays a dot at the origin.
    out_x, out_y, out_ptr = _kernels.normalize(
        *_xy(points), ptr, RESAMPLE_SPACING, RDP_EPSILON, SIMPLIFIED_MAX,
    )
    packed = np.vstack((np.frombuffer(out_x), np.frombuffer(out_y)))
    bounds = np.frombuffer(out_ptr, dtype=np.int64)
    return [packed[:, bounds[s] : bounds[s + 1]] for s in range(len(arrays))]
