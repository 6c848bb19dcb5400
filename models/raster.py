"""Stroke rasterizer that reproduces the official Quick Draw ``numpy_bitmap`` 28x28 rendering.

Google rendered the bitmaps with cairo: canvas 256 + 2*16 padding + 16 line width, scaled to 28 px,
round caps and joins, ``ANTIALIAS_BEST``, each stroke stroked separately in white over black. The
drawing is centred with ``offset = (256 - max(x, y)) / 2`` (the bounding-box *maximum only*, as in
Google's script; simplified drawings are top-left aligned so min is usually 0).

This module re-implements that pipeline in numba instead of depending on libcairo:

* Per stroke, the covered region is the union of the segment "capsules" (rectangle body plus a pen
  at each vertex). Cairo approximates the round pen by a regular polygon whose vertex count follows
  from its 0.1 px tolerance: 12 vertices at this scale, and we use the same 12-gon, which matters
  for dots and stroke ends.
* Coverage is computed like cairo's scan converter: 15 sub-scanlines per pixel (GRID_Y = 15), with
  exact horizontal span lengths on each sub-scanline; the union inside a stroke is an interval
  merge, so overlapping segments of one stroke never double-count.
* Coverage becomes an 8-bit mask (``round(coverage * 255)``) and strokes are composited "over" one
  another with pixman's rounding: ``dst = m + div255(dst * (255 - m))``.

Measured figures (fidelity: the 25 pairs cat.ndjson line i <-> cat_bitmaps_28.npy row i, also printed by
``python -m bench.raster``, which measures throughput on one core with 5000 shared drawings):

* official bitmaps: mean Pearson r = 0.99999 (min 0.99995), mean |diff| = 0.10 grey levels, max 12.
  For reference, the same script driving libcairo 1.16 (through ctypes, development only) reproduces
  the 25 official bitmaps exactly, and our output against it on 3000 others.ndjson drawings has
  r = 0.99999, mean |diff| = 0.09: the residual is cairo's analytic full-row coverage shortcut.
* variants tried: a circular pen instead of the 12-gon: r = 0.99995, mean |diff| = 0.27; 4 sub-scanlines
  instead of 15: mean |diff| = 0.71; centring by the min/max bounding box instead of the maximum
  only: r = 0.99945, mean |diff| = 0.70 on the cats and r as low as 0.86 on others whose minimum is
  not 0, so Google's script used the maximum only and so do we. A quick PIL rendering: r ~ 0.985.
* throughput: 9,500-10,000 drawings/s for ``rasterize_batch`` (packing included) and ~7,500/s for
  one-at-a-time ``rasterize``, one core, JIT warm-up excluded.

The numba kernel compiles on the first call (and is cached on disk), never at import.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

# Side of a Quick Draw bitmap in pixels; every module that needs it imports it from here.
SIDE = 28
ORIGINAL_SIDE = 256.0
LINE_DIAMETER = 16.0
PADDING = 16.0
TOTAL_PADDING = 2.0 * PADDING + LINE_DIAMETER
SCALE = SIDE / (ORIGINAL_SIDE + TOTAL_PADDING)
PEN_RADIUS = LINE_DIAMETER / 2.0 * SCALE
SUB_ROWS = 15  # cairo's tor scan converter GRID_Y
# Device coordinates beyond this cannot touch the canvas; clamping keeps float->int casts defined.
_COORD_LIMIT = 1.0e6

_COS30 = 0.8660254037844386


@njit(cache=True, inline="always")
def _pen_half_width(dy: float, r: float) -> float:
    """Half the horizontal extent of cairo's 12-vertex pen at vertical distance ``dy`` from its centre."""
    # Vertices lie at multiples of 30 degrees, so the outline between |dy| = 0, r/2, r*cos30 and r
    # is linear: (r, 0), (r*cos30, r/2), (r/2, r*cos30), (0, r).
    a = abs(dy) / r
    if a <= 0.5:
        return r * (1.0 + (_COS30 - 1.0) * a * 2.0)
    if a <= _COS30:
        return r * (_COS30 + (0.5 - _COS30) * (a - 0.5) / (_COS30 - 0.5))
    return r * 0.5 * (1.0 - a) / (1.0 - _COS30)


@njit(cache=True, inline="always")
def _capsule_span(ax: float, ay: float, bx: float, by: float, yc: float, r: float):
    """x-interval where the horizontal line ``y = yc`` crosses the stroked segment A-B (empty: lo > hi)."""
    lo = np.inf
    hi = -np.inf
    da = yc - ay
    if -r <= da <= r:
        h = _pen_half_width(da, r)
        lo = min(lo, ax - h)
        hi = max(hi, ax + h)
    db = yc - by
    if -r <= db <= r:
        h = _pen_half_width(db, r)
        lo = min(lo, bx - h)
        hi = max(hi, bx + h)
    dx = bx - ax
    dy = by - ay
    length = np.sqrt(dx * dx + dy * dy)
    if length > 0.0:
        ux = dx / length
        uy = dy / length
        blo = -np.inf
        bhi = np.inf
        # Body: 0 <= (P-A).u <= length and |(P-A) x u| <= r, each linear in x on this line.
        if ux != 0.0:
            e1 = ax - da * uy / ux
            e2 = ax + (length - da * uy) / ux
            blo = max(blo, min(e1, e2))
            bhi = min(bhi, max(e1, e2))
        elif da * uy < 0.0 or da * uy > length:
            return lo, hi
        c = da * ux
        if uy != 0.0:
            e1 = ax + (c + r) / uy
            e2 = ax + (c - r) / uy
            blo = max(blo, min(e1, e2))
            bhi = min(bhi, max(e1, e2))
        elif c > r or c < -r:
            return lo, hi
        if blo <= bhi:
            lo = min(lo, blo)
            hi = max(hi, bhi)
    return lo, hi


@njit(cache=True)
def _render_batch(px, py, stroke_ptr, drawing_ptr, out):
    """Render drawings into ``out`` (N, 28, 28) uint8; strokes/points addressed by the two pointer arrays."""
    n_drawings = drawing_ptr.shape[0] - 1
    max_pts = 1
    for s in range(stroke_ptr.shape[0] - 1):
        max_pts = max(max_pts, stroke_ptr[s + 1] - stroke_ptr[s])
    xs = np.empty(max_pts)
    ys = np.empty(max_pts)
    seg_ax = np.empty(max_pts)
    seg_ay = np.empty(max_pts)
    seg_bx = np.empty(max_pts)
    seg_by = np.empty(max_pts)
    span_lo = np.empty(max_pts)
    span_hi = np.empty(max_pts)
    cov = np.zeros((SIDE, SIDE))
    dst = np.zeros((SIDE, SIDE), np.int64)
    r = PEN_RADIUS
    inv_sub = 1.0 / SUB_ROWS
    for d in range(n_drawings):
        dst[:, :] = 0
        s_first = drawing_ptr[d]
        s_last = drawing_ptr[d + 1]
        p_first = stroke_ptr[s_first]
        p_last = stroke_ptr[s_last]
        if p_last > p_first:
            max_x = px[p_first]
            max_y = py[p_first]
            for i in range(p_first, p_last):
                max_x = max(max_x, px[i])
                max_y = max(max_y, py[i])
            off_x = (ORIGINAL_SIDE - max_x) / 2.0 + TOTAL_PADDING / 2.0
            off_y = (ORIGINAL_SIDE - max_y) / 2.0 + TOTAL_PADDING / 2.0
            for s in range(s_first, s_last):
                a = stroke_ptr[s]
                n = stroke_ptr[s + 1] - a
                if n == 0:
                    continue
                y_min = np.inf
                y_max = -np.inf
                for i in range(n):
                    xs[i] = min(max((px[a + i] + off_x) * SCALE, -_COORD_LIMIT), _COORD_LIMIT)
                    ys[i] = min(max((py[a + i] + off_y) * SCALE, -_COORD_LIMIT), _COORD_LIMIT)
                    y_min = min(y_min, ys[i])
                    y_max = max(y_max, ys[i])
                # A single point is a zero-length segment: cairo draws it as a round dot.
                n_seg = max(n - 1, 1)
                row0 = max(int(np.floor(y_min - r)), 0)
                row1 = min(int(np.floor(y_max + r)), SIDE - 1)
                col0 = SIDE
                col1 = -1
                for j in range(row0, row1 + 1):
                    m = 0
                    for k in range(n_seg):
                        k2 = min(k + 1, n - 1)
                        y0 = ys[k]
                        y1 = ys[k2]
                        if min(y0, y1) - r < j + 1 and max(y0, y1) + r > j:
                            seg_ax[m] = xs[k]
                            seg_ay[m] = y0
                            seg_bx[m] = xs[k2]
                            seg_by[m] = y1
                            m += 1
                    if m == 0:
                        continue
                    for sub in range(SUB_ROWS):
                        yc = j + (sub + 0.5) * inv_sub
                        q = 0
                        for k in range(m):
                            lo, hi = _capsule_span(seg_ax[k], seg_ay[k], seg_bx[k], seg_by[k], yc, r)
                            if lo < hi:
                                t = q
                                while t > 0 and span_lo[t - 1] > lo:
                                    span_lo[t] = span_lo[t - 1]
                                    span_hi[t] = span_hi[t - 1]
                                    t -= 1
                                span_lo[t] = lo
                                span_hi[t] = hi
                                q += 1
                        k = 0
                        while k < q:
                            lo = span_lo[k]
                            hi = span_hi[k]
                            k += 1
                            while k < q and span_lo[k] <= hi:
                                hi = max(hi, span_hi[k])
                                k += 1
                            lo = max(lo, 0.0)
                            hi = min(hi, float(SIDE))
                            if hi <= lo:
                                continue
                            ca = int(lo)
                            cb = min(int(hi), SIDE - 1)
                            col0 = min(col0, ca)
                            col1 = max(col1, cb)
                            if ca == cb:
                                cov[j, ca] += hi - lo
                            else:
                                cov[j, ca] += ca + 1 - lo
                                for c in range(ca + 1, cb):
                                    cov[j, c] += 1.0
                                if hi > cb:
                                    cov[j, cb] += hi - cb
                for j in range(row0, row1 + 1):
                    for c in range(col0, col1 + 1):
                        v = cov[j, c]
                        if v > 0.0:
                            alpha = min(int(v * inv_sub * 255.0 + 0.5), 255)
                            t = dst[j, c] * (255 - alpha) + 128
                            dst[j, c] = alpha + (((t >> 8) + t) >> 8)
                            cov[j, c] = 0.0
        for j in range(SIDE):
            for c in range(SIDE):
                out[d, j, c] = dst[j, c]


def _pack(drawings: Sequence[Sequence]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flatten drawings into point arrays plus stroke and drawing offset arrays for the kernel."""
    arrays: list[np.ndarray] = []
    stroke_counts = np.zeros(len(drawings), dtype=np.int64)
    for d, strokes in enumerate(drawings):
        for stroke in strokes:
            arr = stroke if isinstance(stroke, np.ndarray) else np.asarray(stroke, dtype=np.float64)
            if arr.ndim != 2 or arr.shape[0] != 2:
                raise ValueError(
                    f"drawing {d}: each stroke must have shape (2, n) (x row, y row), got {arr.shape}; "
                    "raw strokes go through models.normalize.normalize_raw first"
                )
            arrays.append(arr)
        stroke_counts[d] = len(strokes)
    drawing_ptr = np.zeros(len(drawings) + 1, dtype=np.int64)
    np.cumsum(stroke_counts, out=drawing_ptr[1:])
    stroke_ptr = np.zeros(len(arrays) + 1, dtype=np.int64)
    if not arrays:
        empty = np.zeros(0, dtype=np.float64)
        return empty, empty, stroke_ptr, drawing_ptr
    np.cumsum([a.shape[1] for a in arrays], out=stroke_ptr[1:])
    try:
        points = np.concatenate(arrays, axis=1, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"stroke coordinates must be numeric: {exc}") from None
    if not np.isfinite(points).all():
        raise ValueError("stroke coordinates must be finite numbers")
    return np.ascontiguousarray(points[0]), np.ascontiguousarray(points[1]), stroke_ptr, drawing_ptr


def rasterize_batch(drawings: Sequence[Sequence]) -> np.ndarray:
    """Render drawings (each a list of (2, n) strokes in the 0..255 box) to (N, 28, 28) uint8 bitmaps."""
    px, py, stroke_ptr, drawing_ptr = _pack(drawings)
    out = np.zeros((len(drawings), SIDE, SIDE), dtype=np.uint8)
    if len(drawings):
        _render_batch(px, py, stroke_ptr, drawing_ptr, out)
    return out


def rasterize(strokes: Sequence) -> np.ndarray:
    """Render one drawing (list of (2, n) strokes in the 0..255 box) to a (28, 28) uint8 bitmap."""
    return rasterize_batch([strokes])[0]
