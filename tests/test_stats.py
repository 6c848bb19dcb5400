"""Dashboard statistics in SQL: histogram = numpy.histogram, counts, threshold preview, F1 suggestion.

Every test runs on a temp SQLite file and on a fresh PostgreSQL database (created and dropped here).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from sqlalchemy import delete, event, insert, update
from sqlalchemy.orm import Session

from service import stats
from service.core.db import make_engine
from service.core.migrate import upgrade
from service.reviews import record_reviews
from service.core.schema import Review, Sketch, ThresholdChange
from stack_fixtures import migrated_engine

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(request, tmp_path_factory):
    """A migrated engine: a temp SQLite file, or a fresh PostgreSQL database dropped afterwards."""
    with migrated_engine(request.param, tmp_path_factory.mktemp('stats-db')) as eng:
        yield eng


@pytest.fixture
def session(engine):
    """A session on emptied tables."""
    with Session(engine) as s:
        for table in (Review, ThresholdChange, Sketch):
            s.execute(delete(table))
        s.commit()
        yield s
        s.rollback()


def seed(session: Session, scores, *, status="scored", model_version="v1", start=T0, step=timedelta(minutes=1),
         threshold=None, client="c") -> list[int]:
    """Insert sketches with the given scores (None for unscored), one per ``step`` from ``start``."""
    rows = []
    for i, score in enumerate(scores):
        score = None if score is None else float(score)
        rows.append(
            {
                "client": client,
                "source_format": "simplified",
                "submitted_at": start + i * step,
                "status": status,
                "score": score,
                "flagged": None if score is None or threshold is None else score > threshold,
                "threshold": threshold,
                "model_version": model_version if score is not None else None,
                "attempts": 0,
            }
        )
    ids = []
    for chunk in range(0, len(rows), 500):
        ids += list(session.execute(insert(Sketch).returning(Sketch.id), rows[chunk:chunk + 500]).scalars())
    session.commit()
    return ids


def numpy_hist(scores, bins, lo, hi):
    """The reference: numpy's histogram over the same fixed range."""
    counts, edges = np.histogram(np.asarray(scores, dtype=np.float64), bins=bins, range=(lo, hi))
    return counts.tolist(), edges.tolist()


# --------------------------------------------------------------------------- histogram


@pytest.mark.parametrize("bins", [1, 7, 40, 200])
def test_histogram_equals_numpy_without_filters(session, bins):
    rng = np.random.default_rng(bins)
    scores = rng.gamma(2.0, 0.02, size=3000)
    seed(session, scores)
    h = stats.histogram(session, bins=bins)
    counts, edges = numpy_hist(scores, bins, scores.min(), scores.max())
    assert h.edges == edges
    assert h.counts == counts
    assert h.total == len(scores)
    assert (h.lo, h.hi) == (scores.min(), scores.max())


def test_histogram_scores_on_bin_edges_land_where_numpy_puts_them(session):
    # Values exactly on the edges are the classic off-by-one trap of arithmetic binning.
    edges = np.linspace(0.0, 1.0, 11)
    scores = np.concatenate([edges, edges[3:6], [0.3, 0.7, 0.1 + 0.2]])
    seed(session, scores)
    for flt in (stats.StatsFilter(), stats.StatsFilter(since=T0 - timedelta(days=1))):
        h = stats.histogram(session, flt, bins=10)
        assert h.counts == numpy_hist(scores, 10, 0.0, 1.0)[0]


def test_histogram_time_window_equals_numpy_of_rows_in_window(session):
    rng = np.random.default_rng(1)
    scores = rng.normal(0.05, 0.02, size=2000)
    seed(session, scores)
    since, until = T0 + timedelta(minutes=500), T0 + timedelta(minutes=1500)
    h = stats.histogram(session, stats.StatsFilter(since=since, until=until), bins=25)
    # Edges span all stored scores so windows share the axis; the window is half-open.
    in_window = scores[500:1500]
    assert h.counts == numpy_hist(in_window, 25, scores.min(), scores.max())[0]
    only_since = stats.histogram(session, stats.StatsFilter(since=since), bins=25)
    assert only_since.counts == numpy_hist(scores[500:], 25, scores.min(), scores.max())[0]



@pytest.mark.parametrize(
    "start, stop",
    [(100, None), (1800, None), (None, 300), (None, 1900), (50, 1950), (900, 1100), (0, 2000)],
)
def test_histogram_windows_narrow_and_wide_equal_numpy(session, start, stop):
    # Narrow windows are counted row by row, wide ones as "all minus outside": both must be exact.
    rng = np.random.default_rng(7)
    scores = rng.exponential(0.03, size=2000)
    ids = seed(session, scores, threshold=0.05)
    record_reviews(session, ids[::7], "cat", "rev")
    session.commit()
    flt = stats.StatsFilter(
        since=None if start is None else T0 + timedelta(minutes=start),
        until=None if stop is None else T0 + timedelta(minutes=stop),
    )
    expected = numpy_hist(scores[start:stop], 30, scores.min(), scores.max())[0]
    assert stats.histogram(session, flt, bins=30).counts == expected
    edges = stats.histogram(session, bins=30).edges
    assert stats._counts_by_bucket(session, flt, edges) == expected
    assert stats._counts_by_complement(session, flt, edges) == expected
    c = stats.counts(session, flt)
    window = slice(start, stop)
    assert c.flagged == int((scores[window] > 0.05).sum())
    assert c.reviewed == sum(1 for i in range(2000)[window] if i % 7 == 0)
    assert c.scored == len(scores[window])

def test_histogram_model_version_filter(session):
    rng = np.random.default_rng(2)
    old, new = rng.uniform(0, 1, 700), rng.uniform(0.2, 0.5, 300)
    seed(session, old, model_version="old")
    seed(session, new, model_version="new", start=T0 + timedelta(days=1))
    h = stats.histogram(session, stats.StatsFilter(model_version="new"), bins=12)
    assert h.counts == numpy_hist(new, 12, new.min(), new.max())[0]
    windowed = stats.histogram(
        session, stats.StatsFilter(model_version="old", until=T0 + timedelta(minutes=350)), bins=12
    )
    assert windowed.counts == numpy_hist(old[:350], 12, old.min(), old.max())[0]
    assert stats.model_versions(session) == ["new", "old"]


def test_histogram_explicit_range_ignores_scores_outside(session):
    scores = np.array([-1.0, 0.0, 0.25, 0.5, 0.75, 1.0, 2.0])
    seed(session, scores)
    for flt in (stats.StatsFilter(), stats.StatsFilter(since=T0)):
        h = stats.histogram(session, flt, bins=4, lo=0.0, hi=1.0)
        assert h.counts == numpy_hist(scores, 4, 0.0, 1.0)[0]


def test_histogram_empty_and_degenerate(session):
    h = stats.histogram(session, bins=5)
    assert h.empty and h.counts == [0] * 5
    seed(session, [0.3] * 4)
    h = stats.histogram(session, bins=5)
    assert h.counts == numpy_hist([0.3] * 4, 5, 0.3, 0.3)[0]
    assert h.edges == numpy_hist([0.3] * 4, 5, 0.3, 0.3)[1]


def test_histogram_rejects_bad_arguments(session):
    with pytest.raises(ValueError, match="bins"):
        stats.histogram(session, bins=0)
    with pytest.raises(ValueError, match="bins"):
        stats.histogram(session, bins=stats.MAX_BINS + 1)
    with pytest.raises(ValueError, match="lo must not exceed hi"):
        stats.histogram(session, bins=3, lo=1.0, hi=0.0)
    with pytest.raises(ValueError, match="since must be earlier"):
        stats.StatsFilter(since=T0, until=T0)


def test_log_counts(session):
    seed(session, [0.1] * 9 + [0.9] * 99)
    h = stats.histogram(session, bins=2)
    assert h.counts == [9, 99]
    assert h.log_counts() == pytest.approx([1.0, 2.0])
    assert h.to_dict(log=True)["log_counts"] == pytest.approx([1.0, 2.0])


# --------------------------------------------------------------------------- counts


def test_counts_by_state_match_python(session):
    rng = np.random.default_rng(3)
    scores = rng.uniform(0, 1, 400)
    ids = seed(session, scores, threshold=0.8)
    seed(session, [None] * 30, status="queued", start=T0 + timedelta(days=2))
    seed(session, [None] * 7, status="failed", start=T0 + timedelta(days=3))
    record_reviews(session, ids[:25], "anomaly", "ann")
    record_reviews(session, ids[20:40], "cat", "bob")
    session.commit()
    c = stats.counts(session)
    assert c.to_dict() == {
        "total": 437,
        "scored": 400,
        "flagged": int((scores > 0.8).sum()),
        "reviewed": 40,
        "queued": 30,
        "failed": 7,
    }
    hist, shared = stats.overview(session)
    assert shared == c and hist.total == 400
    window = stats.StatsFilter(since=T0 + timedelta(minutes=100), until=T0 + timedelta(days=2, minutes=10))
    w = stats.counts(session, window)
    assert (w.scored, w.queued, w.failed, w.reviewed) == (300, 10, 0, 0)
    assert w.flagged == int((scores[100:] > 0.8).sum())
    assert stats.overview(session, window)[1] == w
    mv = stats.counts(session, stats.StatsFilter(model_version="v1"))
    assert (mv.scored, mv.queued, mv.failed) == (400, 0, 0)


def _seed_two_versions(session):
    """600 'old' and 600 'new' sketches interleaved in time (old at even, new at odd minutes), some flags stale."""
    rng = np.random.default_rng(8)
    scores = {"old": rng.uniform(0.0, 1.0, 600), "new": rng.uniform(0.2, 0.9, 600)}
    ids = {
        "old": seed(session, scores["old"], model_version="old", step=timedelta(minutes=2), threshold=0.7),
        "new": seed(session, scores["new"], model_version="new", start=T0 + timedelta(minutes=1),
                    step=timedelta(minutes=2), threshold=0.7),
    }
    seed(session, [None] * 9, status="queued", start=T0 + timedelta(minutes=300))
    flagged = {v: scores[v] > 0.7 for v in scores}
    # Flags are stored state, not "score > threshold": unflag some to prove the count reads the flag.
    stale = [i for i in range(0, 600, 5) if flagged["new"][i]]
    session.execute(update(Sketch).where(Sketch.id.in_([ids["new"][i] for i in stale])).values(flagged=False))
    flagged["new"][stale] = False
    record_reviews(session, ids["old"][::11], "cat", "rev")
    session.commit()
    return scores, flagged


@pytest.mark.parametrize("start, stop", [(None, None), (100, None), (None, 1000), (30, 1170), (401, 733)])
def test_overview_by_model_version_and_window_equals_python(session, start, stop):
    """Histogram and counts for a model version and window equal numpy/Python, whichever index serves them."""
    scores, flagged = _seed_two_versions(session)
    minute = {"old": np.arange(600) * 2, "new": np.arange(600) * 2 + 1}
    for version in ("old", "new"):
        flt = stats.StatsFilter(
            since=None if start is None else T0 + timedelta(minutes=start),
            until=None if stop is None else T0 + timedelta(minutes=stop),
            model_version=version,
        )
        keep = (minute[version] >= (start or 0)) & (minute[version] < (stop or 10**6))
        hist, c = stats.overview(session, flt, bins=20)
        all_scores = scores[version]
        assert hist.counts == numpy_hist(all_scores[keep], 20, all_scores.min(), all_scores.max())[0]
        assert c.scored == int(keep.sum())
        assert c.flagged == int((flagged[version] & keep).sum())
        assert c.reviewed == (int(keep[::11].sum()) if version == "old" else 0)
        assert (c.queued, c.failed) == (0, 0)


# --------------------------------------------------------------------------- threshold preview


def _reference_confusion(scores, verdicts, t):
    tp = sum(1 for s, v in zip(scores, verdicts) if v == "anomaly" and s > t)
    fp = sum(1 for s, v in zip(scores, verdicts) if v == "cat" and s > t)
    fn = sum(1 for s, v in zip(scores, verdicts) if v == "anomaly" and s <= t)
    return tp, fp, fn


def _seed_reviewed(session, n=300, seed_=4):
    rng = np.random.default_rng(seed_)
    scores = rng.uniform(0, 1, n)
    ids = seed(session, scores)
    reviewed = rng.choice(n, size=n // 3, replace=False)
    verdicts = [None] * n
    for i in reviewed:
        # Higher scores are more often real anomalies, as with a useful model.
        verdicts[i] = "anomaly" if rng.uniform() < scores[i] else "cat"
    for verdict in ("anomaly", "cat"):
        record_reviews(session, [ids[i] for i in range(n) if verdicts[i] == verdict], verdict, "rev")
    session.commit()
    return scores, verdicts


@pytest.mark.parametrize("t", [-1.0, 0.0, 0.3, 0.5, 0.77, 1.0, 5.0])
def test_preview_counts_and_precision_recall(session, t):
    scores, verdicts = _seed_reviewed(session)
    p = stats.preview(session, t, [(50.0, 0.2), (95.0, 0.6), (99.0, 0.9)])
    assert p.flagged == int((scores > t).sum())
    tp, fp, fn = _reference_confusion(scores, verdicts, t)
    assert (p.true_positives, p.false_positives, p.false_negatives) == (tp, fp, fn)
    assert p.reviewed == sum(v is not None for v in verdicts)
    assert p.precision == (pytest.approx(tp / (tp + fp)) if tp + fp else None)
    assert p.recall == pytest.approx(tp / (tp + fn))
    d = p.to_dict()
    assert d["flagged"] == p.flagged and "text" in d["position"]


def test_preview_rejects_non_finite(session):
    with pytest.raises(ValueError, match="finite"):
        stats.preview(session, math.nan)


def test_f1_optimal_threshold_is_the_best_cut(session):
    scores, verdicts = _seed_reviewed(session, n=240, seed_=5)
    best = stats.f1_optimal_threshold(session)
    assert best is not None
    reviewed = [(s, v) for s, v in zip(scores, verdicts) if v is not None]
    positives = sum(v == "anomaly" for _s, v in reviewed)

    def f1_at(t):
        tp, fp, fn = _reference_confusion([s for s, _ in reviewed], [v for _, v in reviewed], t)
        return 2 * tp / (2 * tp + fp + fn) if positives else 0.0

    candidates = sorted({s for s, _ in reviewed}) + [min(s for s, _ in reviewed) - 1]
    brute = max(f1_at(math.nextafter(c, -math.inf)) for c in candidates)
    assert f1_at(best.threshold) == pytest.approx(brute)
    assert best.f1 == pytest.approx(brute)
    tp, fp, fn = _reference_confusion([s for s, _ in reviewed], [v for _, v in reviewed], best.threshold)
    assert best.precision == pytest.approx(tp / (tp + fp))
    assert best.recall == pytest.approx(tp / (tp + fn))
    assert best.reviewed == len(reviewed)


def test_f1_needs_a_confirmed_anomaly(session):
    ids = seed(session, [0.1, 0.2, 0.3])
    assert stats.f1_optimal_threshold(session) is None
    record_reviews(session, ids, "cat", "rev")
    session.commit()
    assert stats.f1_optimal_threshold(session) is None
    record_reviews(session, [ids[2]], "anomaly", "rev")
    session.commit()
    best = stats.f1_optimal_threshold(session)
    # Only the top sketch is an anomaly: the best cut flags it alone.
    assert 0.2 <= best.threshold < 0.3 and best.f1 == 1.0


def test_f1_flagging_everything_can_be_best(session):
    ids = seed(session, [0.1, 0.2])
    record_reviews(session, ids, "anomaly", "rev")
    session.commit()
    best = stats.f1_optimal_threshold(session)
    assert best.threshold < 0.1 and best.f1 == 1.0


# --------------------------------------------------------------------------- percentiles (no database)


def test_parse_percentiles_accepts_common_shapes():
    assert stats.parse_percentiles({"percentiles": {"p50": 0.1, "p99": 0.5, "95": 0.3}}) == [
        (50.0, 0.1), (95.0, 0.3), (99.0, 0.5)
    ]
    assert stats.parse_percentiles({"percentiles": {"0.95": 0.3}}) == [(95.0, 0.3)]
    assert stats.parse_percentiles({"cat_percentiles": [{"p": 90, "value": 0.2}, [99, 0.4]]}) == [
        (90.0, 0.2), (99.0, 0.4)
    ]
    assert stats.parse_percentiles({"percentiles": {"bogus": "x", "p200": 1.0}}) == []
    assert stats.parse_percentiles({}) == []


def test_percentile_position():
    pcts = [(50.0, 0.1), (95.0, 0.3), (99.0, 0.5)]
    mid = stats.percentile_position(0.2, pcts)
    assert mid.below == (50.0, 0.1) and mid.above == (95.0, 0.3)
    assert mid.cat_flag_rate == pytest.approx(1 - 0.725)
    assert "between p50" in mid.describe()
    low = stats.percentile_position(0.01, pcts)
    assert low.below is None and low.above == (50.0, 0.1) and low.cat_flag_rate is None
    high = stats.percentile_position(0.9, pcts)
    assert high.above is None and high.cat_flag_rate == pytest.approx(0.01)
    assert stats.percentile_position(0.2, []).describe() == "the model has no held-out percentiles"


# --------------------------------------------------------------------------- indexes only


def _sqlite_plans(session, work):
    """Run ``work`` and return SQLite's query plan for every statement it sent."""
    captured = []

    def grab(_conn, _cursor, statement, parameters, _context, _executemany):
        captured.append((statement, parameters))

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", grab)
    try:
        work()
    finally:
        event.remove(engine, "before_cursor_execute", grab)
    plans = []
    raw = session.connection().connection.driver_connection
    for statement, parameters in captured:
        rows = raw.execute("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
        plans.append((statement, [r[-1] for r in rows]))
    return plans


@pytest.fixture
def sqlite_session(tmp_path):
    """A session on a fresh migrated SQLite file (SQLite plans without statistics, so its plans are fixed)."""
    url = f"sqlite:///{tmp_path / 'plans.db'}"
    upgrade(url)
    eng = make_engine(url)
    with Session(eng) as s:
        yield s
    eng.dispose()


def test_statistics_only_use_indexes_on_sqlite(sqlite_session):
    session = sqlite_session
    rng = np.random.default_rng(6)
    ids = seed(session, rng.uniform(0, 1, 200), threshold=0.9)
    seed(session, [None] * 5, status="queued")
    record_reviews(session, ids[:10], "cat", "rev")
    session.commit()
    window = stats.StatsFilter(since=T0 + timedelta(minutes=5), until=T0 + timedelta(minutes=50))

    def work():
        stats.overview(session)
        stats.overview(session, window)
        stats.overview(session, stats.StatsFilter(model_version="v1"))
        stats.overview(session, stats.StatsFilter(client="c"))
        stats.overview(session, stats.StatsFilter(since=window.since, until=window.until, client="c"))
        stats.overview(session, stats.StatsFilter(model_version="v1", client="c"))
        stats.preview(session, 0.5)
        stats.flag_changes(session, 0.5)
        stats.threshold_bounds(session)
        stats.f1_optimal_threshold(session)
        stats.model_versions(session)

    plans = _sqlite_plans(session, work)
    assert plans
    for statement, steps in plans:
        for step in steps:
            # "SCAN sketches" without an index would read every row of the table.
            assert not (step.startswith("SCAN") and "sketches" in step and "INDEX" not in step), (statement, steps)



# --------------------------------------------------------------------------- one client's statistics (API keys)


@pytest.mark.parametrize("window", [None, (100, 900), (0, 1200), (1100, None)])
def test_one_clients_histogram_and_counts_cover_only_its_sketches(session, window):
    rng = np.random.default_rng(11)
    mine, theirs = rng.uniform(0.2, 0.6, 1200), rng.uniform(0.0, 1.0, 1500)
    # Interleaved in time, so no time window separates the two clients.
    seed(session, mine, threshold=0.5, client="mine", step=timedelta(minutes=2))
    seed(session, theirs, threshold=0.5, client="theirs", start=T0 + timedelta(minutes=1), step=timedelta(minutes=2))
    seed(session, [None] * 3, status="queued", client="mine", start=T0 + timedelta(days=30))
    seed(session, [None] * 4, status="queued", client="theirs", start=T0 + timedelta(days=30))
    since = until = None
    keep = np.ones(len(mine), dtype=bool)
    if window:
        start, stop = window
        since = T0 + timedelta(minutes=2 * start) if start is not None else None
        until = T0 + timedelta(minutes=2 * stop) if stop is not None else None
        idx = np.arange(len(mine))
        keep = (idx >= (start or 0)) & (idx < (stop if stop is not None else len(mine)))
    flt = stats.StatsFilter(since=since, until=until, client="mine")
    hist, counts = stats.overview(session, flt, bins=15)
    # The axis is this client's stored range, whatever the window.
    assert hist.counts == numpy_hist(mine[keep], 15, mine.min(), mine.max())[0]
    assert counts.scored == int(keep.sum()) and counts.flagged == int((mine[keep] > 0.5).sum())
    assert counts.queued == (3 if until is None else 0) and counts.failed == 0
    everyone = stats.overview(session, stats.StatsFilter(since=since, until=until), bins=15)[1]
    assert everyone.scored > counts.scored


def test_flag_changes_count_exactly_the_sketches_whose_flag_flips(session):
    rng = np.random.default_rng(12)
    scores = rng.uniform(0, 1, 800)
    seed(session, scores, threshold=0.5)
    seed(session, [None] * 5, status="queued")
    for t in (0.0, 0.25, 0.5, 0.5 + 1e-12, 0.77, 1.0):
        ch = stats.flag_changes(session, t)
        assert ch.to_flagged == int(((scores > t) & ~(scores > 0.5)).sum())
        assert ch.to_unflagged == int((~(scores > t) & (scores > 0.5)).sum())
        assert ch.total == int(((scores > t) != (scores > 0.5)).sum())
    with pytest.raises(ValueError):
        stats.flag_changes(session, math.inf)


def test_threshold_bounds_are_the_score_range_widened_by_stored_scores(session):
    assert stats.threshold_bounds(session) == stats.SCORE_RANGE == (0.0, 1.0)
    seed(session, [0.2, 0.7])
    assert stats.threshold_bounds(session) == (0.0, 1.0)
    seed(session, [1.4])
    assert stats.threshold_bounds(session) == (0.0, 1.4)


# --------------------------------------------------------------------------- the log-odds axis (issue 15)


def test_log_odds_histogram_equals_numpy_and_resolves_scores_that_round_to_1(session):
    rng = np.random.default_rng(7)
    scores = rng.uniform(0.01, 0.99, 300).tolist() + [1.0] * 20
    ids = seed(session, scores)
    # Rows inserted without log-odds get those of their score (1.0: 17.33); the last ones get the model's own.
    logits = [math.log(s / (1 - s)) for s in scores[:300]] + [math.log(2.0**25 - 1.0)] * 10
    logits += [18.0 + i for i in range(10)]
    for sketch_id, value in zip(ids[310:], logits[310:]):
        session.execute(update(Sketch).where(Sketch.id == sketch_id).values(score_logit=value))
    session.commit()
    hist = stats.logit_histogram(session, bins=25)
    expected, edges = numpy_hist(logits, 25, min(logits), max(logits))
    assert hist.axis == "logit" and hist.counts == expected and hist.edges == pytest.approx(edges)
    # The bounded histogram puts all 20 in its last bin; on the log-odds axis they spread over several.
    assert stats.histogram(session, bins=25).counts[-1] >= 20
    assert sum(1 for c in hist.counts[-8:] if c) >= 4
    window = stats.StatsFilter(since=T0 + timedelta(minutes=100), until=T0 + timedelta(minutes=315))
    got = stats.logit_histogram(session, window, bins=25)
    expected_window, _ = numpy_hist(logits[100:315], 25, min(logits), max(logits))
    assert got.counts == expected_window and got.edges == hist.edges
    assert stats.logit_histogram(session, stats.StatsFilter(model_version="none"), bins=3).empty
