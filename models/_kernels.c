/*
 * The stroke kernels of models/raster.py and models/normalize.py, compiled at install time.
 *
 * They were numba functions; in C a scoring process needs neither numba nor LLVM (about 106 MB of
 * its memory) and pays no JIT or cache load at start. The arithmetic is written operation for operation
 * like the numba code it replaces (same order, no fused multiply-add: setup.py compiles with
 * -ffp-contract=off), so the bitmaps and simplified strokes are bit-identical to it;
 * tests/test_raster.py and tests/test_formats.py pin them with digests.
 *
 * Plain CPython API with the buffer protocol, no numpy headers: the Python side packs float64 and
 * int64 arrays, this module reads them as buffers and returns bytes for numpy.frombuffer. The GIL is
 * released while a batch renders or a drawing is normalised.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Kept equal to models/raster.py (SIDE, SCALE, PEN_RADIUS, SUB_ROWS); tests/test_raster.py compares constants(). */
#define SIDE 28
#define ORIGINAL_SIDE 256.0
#define LINE_DIAMETER 16.0
#define PADDING 16.0
#define TOTAL_PADDING (2.0 * PADDING + LINE_DIAMETER)
#define SUB_ROWS 15
#define COORD_LIMIT 1.0e6
#define COS30 0.8660254037844386
/* A resampled stroke longer than this is refused rather than allocated (a 0..255 box gives thousands). */
#define MAX_RESAMPLED 100000000.0

static const double SCALE = SIDE / (ORIGINAL_SIDE + TOTAL_PADDING);
static const double PEN_RADIUS = LINE_DIAMETER / 2.0 * (SIDE / (ORIGINAL_SIDE + TOTAL_PADDING));

static inline double dmin(double a, double b) { return b < a ? b : a; }
static inline double dmax(double a, double b) { return b > a ? b : a; }

/* Half the horizontal extent of cairo's 12-vertex pen at vertical distance dy from its centre. */
static inline double pen_half_width(double dy, double r)
{
    double a = fabs(dy) / r;
    if (a <= 0.5)
        return r * (1.0 + (COS30 - 1.0) * a * 2.0);
    if (a <= COS30)
        return r * (COS30 + (0.5 - COS30) * (a - 0.5) / (COS30 - 0.5));
    return r * 0.5 * (1.0 - a) / (1.0 - COS30);
}

/* x-interval where the line y = yc crosses the stroked segment A-B (empty: lo > hi). */
static inline void capsule_span(double ax, double ay, double bx, double by, double yc, double r,
                                double *out_lo, double *out_hi)
{
    double lo = INFINITY, hi = -INFINITY;
    double da = yc - ay;
    if (-r <= da && da <= r) {
        double h = pen_half_width(da, r);
        lo = dmin(lo, ax - h);
        hi = dmax(hi, ax + h);
    }
    double db = yc - by;
    if (-r <= db && db <= r) {
        double h = pen_half_width(db, r);
        lo = dmin(lo, bx - h);
        hi = dmax(hi, bx + h);
    }
    double dx = bx - ax, dy = by - ay;
    double length = sqrt(dx * dx + dy * dy);
    if (length > 0.0) {
        double ux = dx / length, uy = dy / length;
        double blo = -INFINITY, bhi = INFINITY;
        if (ux != 0.0) {
            double e1 = ax - da * uy / ux;
            double e2 = ax + (length - da * uy) / ux;
            blo = dmax(blo, dmin(e1, e2));
            bhi = dmin(bhi, dmax(e1, e2));
        } else if (da * uy < 0.0 || da * uy > length) {
            goto done;
        }
        double c = da * ux;
        if (uy != 0.0) {
            double e1 = ax + (c + r) / uy;
            double e2 = ax + (c - r) / uy;
            blo = dmax(blo, dmin(e1, e2));
            bhi = dmin(bhi, dmax(e1, e2));
        } else if (c > r || c < -r) {
            goto done;
        }
        if (blo <= bhi) {
            lo = dmin(lo, blo);
            hi = dmax(hi, bhi);
        }
    }
done:
    *out_lo = lo;
    *out_hi = hi;
}

/* Render n_drawings into out (n, 28, 28); returns 0, or -1 when the scratch memory is not available. */
static int render_batch(const double *px, const double *py, const int64_t *stroke_ptr, Py_ssize_t n_strokes,
                        const int64_t *drawing_ptr, Py_ssize_t n_drawings, uint8_t *out)
{
    int64_t max_pts = 1;
    for (Py_ssize_t s = 0; s < n_strokes; s++) {
        int64_t len = stroke_ptr[s + 1] - stroke_ptr[s];
        if (len > max_pts)
            max_pts = len;
    }
    double *scratch = malloc(sizeof(double) * (size_t)max_pts * 8);
    if (scratch == NULL)
        return -1;
    double *xs = scratch, *ys = xs + max_pts, *seg_ax = ys + max_pts, *seg_ay = seg_ax + max_pts;
    double *seg_bx = seg_ay + max_pts, *seg_by = seg_bx + max_pts;
    double *span_lo = seg_by + max_pts, *span_hi = span_lo + max_pts;
    double cov[SIDE][SIDE];
    int64_t dst[SIDE][SIDE];
    memset(cov, 0, sizeof cov);
    const double r = PEN_RADIUS;
    const double inv_sub = 1.0 / SUB_ROWS;

    for (Py_ssize_t d = 0; d < n_drawings; d++) {
        memset(dst, 0, sizeof dst);
        int64_t s_first = drawing_ptr[d], s_last = drawing_ptr[d + 1];
        int64_t p_first = stroke_ptr[s_first], p_last = stroke_ptr[s_last];
        if (p_last > p_first) {
            double max_x = px[p_first], max_y = py[p_first];
            for (int64_t i = p_first; i < p_last; i++) {
                max_x = dmax(max_x, px[i]);
                max_y = dmax(max_y, py[i]);
            }
            double off_x = (ORIGINAL_SIDE - max_x) / 2.0 + TOTAL_PADDING / 2.0;
            double off_y = (ORIGINAL_SIDE - max_y) / 2.0 + TOTAL_PADDING / 2.0;
            for (int64_t s = s_first; s < s_last; s++) {
                int64_t a = stroke_ptr[s];
                int64_t n = stroke_ptr[s + 1] - a;
                if (n == 0)
                    continue;
                double y_min = INFINITY, y_max = -INFINITY;
                for (int64_t i = 0; i < n; i++) {
                    xs[i] = dmin(dmax((px[a + i] + off_x) * SCALE, -COORD_LIMIT), COORD_LIMIT);
                    ys[i] = dmin(dmax((py[a + i] + off_y) * SCALE, -COORD_LIMIT), COORD_LIMIT);
                    y_min = dmin(y_min, ys[i]);
                    y_max = dmax(y_max, ys[i]);
                }
                /* A single point is a zero-length segment: cairo draws it as a round dot. */
                int64_t n_seg = n - 1 > 1 ? n - 1 : 1;
                int64_t row0 = (int64_t)floor(y_min - r);
                if (row0 < 0)
                    row0 = 0;
                int64_t row1 = (int64_t)floor(y_max + r);
                if (row1 > SIDE - 1)
                    row1 = SIDE - 1;
                int64_t col0 = SIDE, col1 = -1;
                for (int64_t j = row0; j <= row1; j++) {
                    int64_t m = 0;
                    for (int64_t k = 0; k < n_seg; k++) {
                        int64_t k2 = k + 1 < n - 1 ? k + 1 : n - 1;
                        double y0 = ys[k], y1 = ys[k2];
                        if (dmin(y0, y1) - r < (double)(j + 1) && dmax(y0, y1) + r > (double)j) {
                            seg_ax[m] = xs[k];
                            seg_ay[m] = y0;
                            seg_bx[m] = xs[k2];
                            seg_by[m] = y1;
                            m++;
                        }
                    }
                    if (m == 0)
                        continue;
                    for (int sub = 0; sub < SUB_ROWS; sub++) {
                        double yc = (double)j + ((double)sub + 0.5) * inv_sub;
                        int64_t q = 0;
                        for (int64_t k = 0; k < m; k++) {
                            double lo, hi;
                            capsule_span(seg_ax[k], seg_ay[k], seg_bx[k], seg_by[k], yc, r, &lo, &hi);
                            if (lo < hi) {
                                int64_t t = q;
                                while (t > 0 && span_lo[t - 1] > lo) {
                                    span_lo[t] = span_lo[t - 1];
                                    span_hi[t] = span_hi[t - 1];
                                    t--;
                                }
                                span_lo[t] = lo;
                                span_hi[t] = hi;
                                q++;
                            }
                        }
                        int64_t k = 0;
                        while (k < q) {
                            double lo = span_lo[k], hi = span_hi[k];
                            k++;
                            while (k < q && span_lo[k] <= hi) {
                                hi = dmax(hi, span_hi[k]);
                                k++;
                            }
                            lo = dmax(lo, 0.0);
                            hi = dmin(hi, (double)SIDE);
                            if (hi <= lo)
                                continue;
                            int64_t ca = (int64_t)lo;
                            int64_t cb = (int64_t)hi;
                            if (cb > SIDE - 1)
                                cb = SIDE - 1;
                            if (ca < col0)
                                col0 = ca;
                            if (cb > col1)
                                col1 = cb;
                            if (ca == cb) {
                                cov[j][ca] += hi - lo;
                            } else {
                                cov[j][ca] += (double)(ca + 1) - lo;
                                for (int64_t c = ca + 1; c < cb; c++)
                                    cov[j][c] += 1.0;
                                if (hi > (double)cb)
                                    cov[j][cb] += hi - (double)cb;
                            }
                        }
                    }
                }
                for (int64_t j = row0; j <= row1; j++) {
                    for (int64_t c = col0; c <= col1; c++) {
                        double v = cov[j][c];
                        if (v > 0.0) {
                            int64_t alpha = (int64_t)(v * inv_sub * 255.0 + 0.5);
                            if (alpha > 255)
                                alpha = 255;
                            int64_t t = dst[j][c] * (255 - alpha) + 128;
                            dst[j][c] = alpha + (((t >> 8) + t) >> 8);
                            cov[j][c] = 0.0;
                        }
                    }
                }
            }
        }
        uint8_t *img = out + (size_t)d * SIDE * SIDE;
        for (int j = 0; j < SIDE; j++)
            for (int c = 0; c < SIDE; c++)
                img[j * SIDE + c] = (uint8_t)dst[j][c];
    }
    free(scratch);
    return 0;
}

/* ------------------------------------------------------------------ normalisation */

/* Number of points resample() writes for a polyline (-1: too long to allocate). */
static Py_ssize_t resample_count(const double *xs, const double *ys, Py_ssize_t n, double spacing, double *total_out)
{
    double total = 0.0;
    for (Py_ssize_t i = 0; i < n - 1; i++)
        total += hypot(xs[i + 1] - xs[i], ys[i + 1] - ys[i]);
    *total_out = total;
    if (total == 0.0)
        return 1;
    double count = ceil(total / spacing - 1e-9);
    /* NaN fails both comparisons' complement: refuse it together with absurd lengths. */
    if (!(count >= 0.0 && count <= MAX_RESAMPLED))
        return -1;
    return (Py_ssize_t)count + 1;
}

/* Points at equal arc-length spacing along a polyline (n >= 2), both end points included; writes m points. */
static void resample(const double *xs, const double *ys, Py_ssize_t n, double spacing, double total, Py_ssize_t m,
                     double *out_x, double *out_y)
{
    if (total == 0.0) {
        out_x[0] = xs[0];
        out_y[0] = ys[0];
        return;
    }
    Py_ssize_t count = m - 1;
    Py_ssize_t seg = 0;
    double seg_start = 0.0;
    double seg_len = hypot(xs[1] - xs[0], ys[1] - ys[0]);
    for (Py_ssize_t k = 0; k < count; k++) {
        double target = (double)k * spacing;
        while (seg < n - 2 && seg_start + seg_len < target) {
            seg_start += seg_len;
            seg++;
            seg_len = hypot(xs[seg + 1] - xs[seg], ys[seg + 1] - ys[seg]);
        }
        double t = seg_len > 0.0 ? (target - seg_start) / seg_len : 0.0;
        t = dmin(dmax(t, 0.0), 1.0);
        out_x[k] = xs[seg] + t * (xs[seg + 1] - xs[seg]);
        out_y[k] = ys[seg] + t * (ys[seg + 1] - ys[seg]);
    }
    out_x[count] = xs[n - 1];
    out_y[count] = ys[n - 1];
}

/* Ramer-Douglas-Peucker keep mask (iterative, end points kept); stack holds 2 * (n + 1) entries. */
static void rdp_keep(const double *xs, const double *ys, Py_ssize_t n, double epsilon, uint8_t *keep,
                     Py_ssize_t *stack)
{
    memset(keep, 0, (size_t)n);
    keep[0] = 1;
    keep[n - 1] = 1;
    stack[0] = 0;
    stack[1] = n - 1;
    Py_ssize_t top = 1;
    while (top > 0) {
        top--;
        Py_ssize_t first = stack[2 * top], last = stack[2 * top + 1];
        if (last - first < 2)
            continue;
        double ax = xs[first], ay = ys[first];
        double dx = xs[last] - ax, dy = ys[last] - ay;
        double norm = sqrt(dx * dx + dy * dy);
        double best = -1.0;
        Py_ssize_t split = first;
        for (Py_ssize_t i = first + 1; i < last; i++) {
            double qx = xs[i] - ax, qy = ys[i] - ay;
            /* A closed chord (first == last point) has no line: fall back to the point distance. */
            double dist = norm == 0.0 ? sqrt(qx * qx + qy * qy) : fabs(qx * dy - qy * dx) / norm;
            if (dist > best) {
                best = dist;
                split = i;
            }
        }
        if (best > epsilon) {
            keep[split] = 1;
            stack[2 * top] = first;
            stack[2 * top + 1] = split;
            stack[2 * top + 2] = split;
            stack[2 * top + 3] = last;
            top += 2;
        }
    }
}

/* Growable output of normalize(). */
typedef struct {
    double *x, *y;
    Py_ssize_t len, cap;
} points_t;

static int points_reserve(points_t *p, Py_ssize_t extra)
{
    if (p->len + extra <= p->cap)
        return 0;
    Py_ssize_t cap = p->cap ? p->cap : 256;
    while (cap < p->len + extra)
        cap *= 2;
    double *x = realloc(p->x, sizeof(double) * (size_t)cap);
    if (x == NULL)
        return -1;
    p->x = x;
    double *y = realloc(p->y, sizeof(double) * (size_t)cap);
    if (y == NULL)
        return -1;
    p->y = y;
    p->cap = cap;
    return 0;
}

static inline double clip_round(double v, double box)
{
    /* np.minimum(np.maximum(np.rint(v), 0), box), NaN passing through like numpy's. */
    v = rint(v);
    v = v < 0.0 ? 0.0 : v;
    return v > box ? box : v;
}

/* Errors of normalize_packed: 0 ok, 1 no memory, 2 a stroke too long to resample. */
static int normalize_packed(const double *px, const double *py, const int64_t *ptr, Py_ssize_t n_strokes,
                            double spacing, double epsilon, double box, points_t *out, int64_t *out_ptr)
{
    Py_ssize_t n_points = (Py_ssize_t)ptr[n_strokes];
    int status = 0;
    double low_x = px[0], low_y = py[0], high_x = px[0], high_y = py[0];
    for (Py_ssize_t i = 1; i < n_points; i++) {
        /* numpy's min/max propagate NaN; finite input is validated before this point. */
        low_x = dmin(low_x, px[i]);
        low_y = dmin(low_y, py[i]);
        high_x = dmax(high_x, px[i]);
        high_y = dmax(high_y, py[i]);
    }
    double extent = dmax(high_x - low_x, high_y - low_y);
    double scale = extent > 0.0 ? box / extent : 1.0;
    if (!isfinite(scale))
        scale = 0.0; /* a denormal extent would overflow the scale: the drawing is a spot, keep it as one */

    Py_ssize_t max_in = 1;
    for (Py_ssize_t s = 0; s < n_strokes; s++)
        if (ptr[s + 1] - ptr[s] > max_in)
            max_in = (Py_ssize_t)(ptr[s + 1] - ptr[s]);
    double *xs = malloc(sizeof(double) * (size_t)max_in * 2);
    double *rx = NULL, *ry = NULL;
    uint8_t *keep = NULL;
    Py_ssize_t *stack = NULL;
    Py_ssize_t work_cap = 0;
    if (xs == NULL)
        return 1;
    double *ys = xs + max_in;
    out_ptr[0] = 0;
    for (Py_ssize_t s = 0; s < n_strokes; s++) {
        Py_ssize_t a = (Py_ssize_t)ptr[s], n = (Py_ssize_t)(ptr[s + 1] - ptr[s]);
        for (Py_ssize_t i = 0; i < n; i++) {
            xs[i] = (px[a + i] - low_x) * scale;
            ys[i] = (py[a + i] - low_y) * scale;
        }
        const double *cx = xs, *cy = ys;
        Py_ssize_t m = n;
        if (n > 1) {
            double total;
            m = resample_count(xs, ys, n, spacing, &total);
            if (m < 0) {
                status = 2;
                goto end;
            }
            if (m > work_cap) {
                free(rx);
                free(keep);
                free(stack);
                rx = malloc(sizeof(double) * (size_t)m * 2);
                keep = malloc((size_t)m);
                stack = malloc(sizeof(Py_ssize_t) * 2 * (size_t)(m + 1));
                if (rx == NULL || keep == NULL || stack == NULL) {
                    status = 1;
                    goto end;
                }
                work_cap = m;
            }
            ry = rx + work_cap;
            resample(xs, ys, n, spacing, total, m, rx, ry);
            cx = rx;
            cy = ry;
        }
        if (points_reserve(out, m) < 0) {
            status = 1;
            goto end;
        }
        Py_ssize_t kept = m;
        if (m > 2) {
            rdp_keep(cx, cy, m, epsilon, keep, stack);
            kept = 0;
            for (Py_ssize_t i = 0; i < m; i++) {
                if (keep[i]) {
                    out->x[out->len + kept] = clip_round(cx[i], box);
                    out->y[out->len + kept] = clip_round(cy[i], box);
                    kept++;
                }
            }
        } else {
            for (Py_ssize_t i = 0; i < m; i++) {
                out->x[out->len + i] = clip_round(cx[i], box);
                out->y[out->len + i] = clip_round(cy[i], box);
            }
        }
        out->len += kept;
        out_ptr[s + 1] = out_ptr[s] + kept;
    }
end:
    free(xs);
    free(rx);
    free(keep);
    free(stack);
    return status;
}

/* ------------------------------------------------------------------ Python bindings */

/* Checks a buffer holds a whole number of items of `size` bytes; returns the count or -1 with an exception. */
static Py_ssize_t items(const Py_buffer *buf, Py_ssize_t size, const char *name)
{
    if (buf->len % size != 0) {
        PyErr_Format(PyExc_ValueError, "%s: buffer of %zd bytes is not a whole number of %zd-byte items", name,
                     buf->len, size);
        return -1;
    }
    return buf->len / size;
}

/* Offsets must start at 0 (pointers) or be within range, and never decrease. */
static int check_offsets(const int64_t *ptr, Py_ssize_t n, int64_t limit, const char *name)
{
    if (n < 1 || ptr[0] != 0) {
        PyErr_Format(PyExc_ValueError, "%s must start at 0", name);
        return -1;
    }
    for (Py_ssize_t i = 1; i < n; i++) {
        if (ptr[i] < ptr[i - 1]) {
            PyErr_Format(PyExc_ValueError, "%s must not decrease", name);
            return -1;
        }
    }
    if (ptr[n - 1] > limit) {
        PyErr_Format(PyExc_ValueError, "%s points past the end of its data", name);
        return -1;
    }
    return 0;
}

static PyObject *py_render(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer bx, by, bsp, bdp, bout;
    if (!PyArg_ParseTuple(args, "y*y*y*y*w*:render", &bx, &by, &bsp, &bdp, &bout))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n_x = items(&bx, 8, "px"), n_y = items(&by, 8, "py");
    Py_ssize_t n_sp = items(&bsp, 8, "stroke_ptr"), n_dp = items(&bdp, 8, "drawing_ptr");
    if (n_x < 0 || n_y < 0 || n_sp < 0 || n_dp < 0)
        goto end;
    if (n_x != n_y) {
        PyErr_SetString(PyExc_ValueError, "px and py differ in length");
        goto end;
    }
    if (check_offsets(bsp.buf, n_sp, n_x, "stroke_ptr") < 0 || check_offsets(bdp.buf, n_dp, n_sp - 1, "drawing_ptr") < 0)
        goto end;
    Py_ssize_t n_drawings = n_dp - 1;
    if (bout.len != n_drawings * SIDE * SIDE) {
        PyErr_SetString(PyExc_ValueError, "out must hold n_drawings * 28 * 28 bytes");
        goto end;
    }
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = render_batch(bx.buf, by.buf, bsp.buf, n_sp - 1, bdp.buf, n_drawings, bout.buf);
    Py_END_ALLOW_THREADS
    if (status < 0) {
        PyErr_NoMemory();
        goto end;
    }
    result = Py_NewRef(Py_None);
end:
    PyBuffer_Release(&bx);
    PyBuffer_Release(&by);
    PyBuffer_Release(&bsp);
    PyBuffer_Release(&bdp);
    PyBuffer_Release(&bout);
    return result;
}

static PyObject *py_normalize(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer bx, by, bp;
    double spacing, epsilon, box;
    if (!PyArg_ParseTuple(args, "y*y*y*ddd:normalize", &bx, &by, &bp, &spacing, &epsilon, &box))
        return NULL;
    PyObject *result = NULL;
    points_t out = {NULL, NULL, 0, 0};
    int64_t *out_ptr = NULL;
    Py_ssize_t n_x = items(&bx, 8, "px"), n_y = items(&by, 8, "py"), n_p = items(&bp, 8, "ptr");
    if (n_x < 0 || n_y < 0 || n_p < 0)
        goto end;
    if (n_x != n_y || n_x == 0) {
        PyErr_SetString(PyExc_ValueError, "px and py must be non-empty and of one length");
        goto end;
    }
    if (check_offsets(bp.buf, n_p, n_x, "ptr") < 0)
        goto end;
    if (!(spacing > 0.0)) {
        PyErr_SetString(PyExc_ValueError, "spacing must be positive");
        goto end;
    }
    out_ptr = malloc(sizeof(int64_t) * (size_t)n_p);
    if (out_ptr == NULL) {
        PyErr_NoMemory();
        goto end;
    }
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = normalize_packed(bx.buf, by.buf, bp.buf, n_p - 1, spacing, epsilon, box, &out, out_ptr);
    Py_END_ALLOW_THREADS
    if (status == 1) {
        PyErr_NoMemory();
        goto end;
    }
    if (status == 2) {
        PyErr_SetString(PyExc_ValueError, "a stroke is too long to resample at this spacing");
        goto end;
    }
    result = Py_BuildValue("(y#y#y#)", (const char *)out.x, out.len * 8, (const char *)out.y, out.len * 8,
                           (const char *)out_ptr, n_p * 8);
end:
    free(out.x);
    free(out.y);
    free(out_ptr);
    PyBuffer_Release(&bx);
    PyBuffer_Release(&by);
    PyBuffer_Release(&bp);
    return result;
}

static PyObject *py_rdp_keep(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer bx, by;
    double epsilon;
    if (!PyArg_ParseTuple(args, "y*y*d:rdp_keep", &bx, &by, &epsilon))
        return NULL;
    PyObject *result = NULL;
    uint8_t *keep = NULL;
    Py_ssize_t *stack = NULL;
    Py_ssize_t n = items(&bx, 8, "xs"), n_y = items(&by, 8, "ys");
    if (n < 0 || n_y < 0)
        goto end;
    if (n != n_y || n == 0) {
        PyErr_SetString(PyExc_ValueError, "xs and ys must be non-empty and of one length");
        goto end;
    }
    keep = malloc((size_t)n);
    stack = malloc(sizeof(Py_ssize_t) * 2 * (size_t)(n + 1));
    if (keep == NULL || stack == NULL) {
        PyErr_NoMemory();
        goto end;
    }
    rdp_keep(bx.buf, by.buf, n, epsilon, keep, stack);
    result = PyBytes_FromStringAndSize((const char *)keep, n);
end:
    free(keep);
    free(stack);
    PyBuffer_Release(&bx);
    PyBuffer_Release(&by);
    return result;
}

static PyObject *py_resample(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer bx, by;
    double spacing;
    if (!PyArg_ParseTuple(args, "y*y*d:resample", &bx, &by, &spacing))
        return NULL;
    PyObject *result = NULL;
    double *out = NULL;
    Py_ssize_t n = items(&bx, 8, "xs"), n_y = items(&by, 8, "ys");
    if (n < 0 || n_y < 0)
        goto end;
    if (n != n_y || n < 2) {
        PyErr_SetString(PyExc_ValueError, "xs and ys must have one length of at least 2");
        goto end;
    }
    if (!(spacing > 0.0)) {
        PyErr_SetString(PyExc_ValueError, "spacing must be positive");
        goto end;
    }
    double total;
    Py_ssize_t m = resample_count(bx.buf, by.buf, n, spacing, &total);
    if (m < 0) {
        PyErr_SetString(PyExc_ValueError, "the stroke is too long to resample at this spacing");
        goto end;
    }
    out = malloc(sizeof(double) * 2 * (size_t)m);
    if (out == NULL) {
        PyErr_NoMemory();
        goto end;
    }
    resample(bx.buf, by.buf, n, spacing, total, m, out, out + m);
    result = Py_BuildValue("(y#y#)", (const char *)out, m * 8, (const char *)(out + m), m * 8);
end:
    free(out);
    PyBuffer_Release(&bx);
    PyBuffer_Release(&by);
    return result;
}

static PyObject *py_constants(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return Py_BuildValue("{s:i,s:d,s:d,s:i}", "SIDE", SIDE, "SCALE", SCALE, "PEN_RADIUS", PEN_RADIUS, "SUB_ROWS",
                         SUB_ROWS);
}

static PyMethodDef methods[] = {
    {"render", py_render, METH_VARARGS,
     "render(px, py, stroke_ptr, drawing_ptr, out): rasterize packed drawings into out (n*28*28 uint8)."},
    {"normalize", py_normalize, METH_VARARGS,
     "normalize(px, py, ptr, spacing, epsilon, box) -> (x bytes, y bytes, ptr bytes): simplify packed raw strokes."},
    {"rdp_keep", py_rdp_keep, METH_VARARGS, "rdp_keep(xs, ys, epsilon) -> bytes: Ramer-Douglas-Peucker keep mask."},
    {"resample", py_resample, METH_VARARGS, "resample(xs, ys, spacing) -> (x bytes, y bytes): equal arc-length points."},
    {"constants", py_constants, METH_NOARGS, "constants() -> dict: the geometry compiled into the kernels."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "models._kernels",
    "Stroke rasterizer and raw-stroke simplification kernels (see models/raster.py, models/normalize.py).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
