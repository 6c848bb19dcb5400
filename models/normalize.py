"""Turn raw Quick Draw strokes into the "simplified" representation, the way Google made the simplified files.

Google's recipe: align the drawing to the top-left corner (minimum 0), scale it uniformly so that the
larger side is 255, resample every stroke with 1-pixel spacing, simplify every stroke with
Ramer-Douglas-Peucker (epsilon 2.0), and round the coordinates to integers in 0..255.

RDP measures the distance to the chord's *line* (the classic algorithm), so like in Google's files a
short spike pointing back along a stroke can be dropped and the result does not always touch 0 or 255.
The per-stroke work runs in numba (compiled on first use, cached on disk, never at import).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

SIMPLIFIED_MAX = 255.0
RESAMPLE_SPACING = 1.0
RDP_EPSILON = 2.0


@njit(cache=True)
def _resample(xs: np.ndarray, ys: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Points at equal arc-length ``spacing`` along a polyline, both end points included."""
    n = xs.shape[0]
    total = 0.0
    for i in range(n - 1):
        total += np.hypot(xs[i + 1] - xs[i], ys[i + 1] - ys[i])
    if total == 0.0:
        return xs[:1].copy(), ys[:1].copy()
    count = int(np.ceil(total / spacing - 1e-9))
    out_x = np.empty(count + 1)
    out_y = np.empty(count + 1)
    seg = 0
    seg_start = 0.0
    seg_len = np.hypot(xs[1] - xs[0], ys[1] - ys[0])
    for k in range(count):
        target = k * spacing
        while seg < n - 2 and seg_start + seg_len < target:
            seg_start += seg_len
            seg += 1
            seg_len = np.hypot(xs[seg + 1] - xs[seg], ys[seg + 1] - ys[seg])
        t = (target - seg_start) / seg_len if seg_len > 0.0 else 0.0
        t = min(max(t, 0.0), 1.0)
        out_x[k] = xs[seg] + t * (xs[seg + 1] - xs[seg])
        out_y[k] = ys[seg] + t * (ys[seg + 1] - ys[seg])
    out_x[count] = xs[n - 1]
    out_y[count] = ys[n - 1]
    return out_x, out_y


@njit(cache=True)
def _rdp_keep(xs: np.ndarray, ys: np.ndarray, epsilon: float) -> np.ndarray:
    """Boolean mask of the points Ramer-Douglas-Peucker keeps (iterative, end points always kept)."""
    n = xs.shape[0]
    keep = np.zeros(n, dtype=np.bool_)
    keep[0] = True
    keep[n - 1] = True
    stack = np.empty((n + 1, 2), dtype=np.int64)
    stack[0, 0] = 0
    stack[0, 1] = n - 1
    top = 1
    while top > 0:
        top -= 1
        first = stack[top, 0]
        last = stack[top, 1]
        if last - first < 2:
            continue
        ax = xs[first]
        ay = ys[first]
        dx = xs[last] - ax
        dy = ys[last] - ay
        norm = np.sqrt(dx * dx + dy * dy)
        best = -1.0
        split = first
        for i in range(first + 1, last):
            px = xs[i] - ax
            py = ys[i] - ay
            # A closed chord (first == last point) has no line: fall back to the point distance.
            if norm == 0.0:
                dist = np.sqrt(px * px + py * py)
            else:
                dist = abs(px * dy - py * dx) / norm
            if dist > best:
                best = dist
                split = i
        if best > epsilon:
            keep[split] = True
            stack[top, 0] = first
            stack[top, 1] = split
            stack[top + 1, 0] = split
            stack[top + 1, 1] = last
            top += 2
    return keep


@njit(cache=True)
def _normalize_packed(px, py, ptr, spacing, epsilon, box):
    """Normalise strokes stored back to back (stroke s is px[ptr[s]:ptr[s+1]]); returns packed output."""
    low_x = px.min()
    low_y = py.min()
    extent = max(px.max() - low_x, py.max() - low_y)
    scale = box / extent if extent > 0.0 else 1.0
    if not np.isfinite(scale):
        # A denormal extent would overflow the scale: the drawing is a spot, keep it as one.
        scale = 0.0
    pieces_x = []
    pieces_y = []
    out_ptr = np.zeros(ptr.shape[0], dtype=np.int64)
    for s in range(ptr.shape[0] - 1):
        a = ptr[s]
        b = ptr[s + 1]
        xs = (px[a:b] - low_x) * scale
        ys = (py[a:b] - low_y) * scale
        if b - a > 1:
            xs, ys = _resample(xs, ys, spacing)
        if xs.shape[0] > 2:
            keep = _rdp_keep(xs, ys, epsilon)
            xs = xs[keep]
            ys = ys[keep]
        pieces_x.append(np.minimum(np.maximum(np.rint(xs), 0.0), box))
        pieces_y.append(np.minimum(np.maximum(np.rint(ys), 0.0), box))
        out_ptr[s + 1] = out_ptr[s] + xs.shape[0]
    total = out_ptr[-1]
    out_x = np.empty(total)
    out_y = np.empty(total)
    for s in range(len(pieces_x)):
        out_x[out_ptr[s] : out_ptr[s + 1]] = pieces_x[s]
        out_y[out_ptr[s] : out_ptr[s + 1]] = pieces_y[s]
    return out_x, out_y, out_ptr


def simplify_rdp(points: np.ndarray, epsilon: float = RDP_EPSILON) -> np.ndarray:
    """Ramer-Douglas-Peucker simplification of a (2, n) polyline; end points are always kept."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape[1] < 3:
        return points.copy()
    keep = _rdp_keep(np.ascontiguousarray(points[0]), np.ascontiguousarray(points[1]), float(epsilon))
    return points[:, keep]


def resample_stroke(points: np.ndarray, spacing: float = RESAMPLE_SPACING) -> np.ndarray:
    """Resample a (2, n) polyline at equal arc-length ``spacing``, keeping both end points."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape[1] < 2:
        return points.copy()
    xs, ys = _resample(np.ascontiguousarray(points[0]), np.ascontiguousarray(points[1]), float(spacing))
    return np.vstack((xs, ys))


def normalize_raw(strokes: Sequence) -> list[np.ndarray]:
    """Map raw strokes ((2 or 3, n): x, y[, t]; any range) to simplified (2, n) float64 integer-valued strokes."""
    arrays = [a for a in (np.asarray(s, dtype=np.float64)[:2] for s in strokes) if a.shape[1] > 0]
    if not arrays:
        return []
    ptr = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([a.shape[1] for a in arrays], out=ptr[1:])
    points = np.concatenate(arrays, axis=1)
    # A drawing that is a single spot has no size to scale: it stays a dot at the origin.
    out_x, out_y, out_ptr = _normalize_packed(
        np.ascontiguousarray(points[0]), np.ascontiguousarray(points[1]), ptr,
        RESAMPLE_SPACING, RDP_EPSILON, SIMPLIFIED_MAX,
    )
    packed = np.vstack((out_x, out_y))
    return [packed[:, out_ptr[s] : out_ptr[s + 1]] for s in range(len(arrays))]
