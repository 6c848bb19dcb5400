"""The score's log-odds (issue 15): the formula, the migration that stores them, and the calibrated threshold."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command

from models.formulas import ink_normalized_error, ink_normalized_error_and_logit, ink_normalized_logit, logit_of_score
from service.core.migrate import alembic_config, upgrade
from service.core.model_info import _percentile_fallback, _recorded
from service.core.sketches import SATURATED_LOGIT, score_logit_of
from stack_fixtures import fresh_pg_database


def _reference_logit(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """log(s / (1 - s)) with s and 1 - s both in float64 from their own sums (no cancellation in either)."""
    x64, r64 = x.astype(np.float64), r.astype(np.float64)
    err = ((x64 - r64) ** 2).sum(axis=(1, 2)) + 1e-3
    ink = (x64**2).sum(axis=(1, 2)) + (r64**2).sum(axis=(1, 2)) + 1e-3
    shared = 2.0 * (x64 * r64).sum(axis=(1, 2))
    return np.log(err / ink) - np.log(shared / ink)


def _drawings(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n, 28, 28)) > 0.85).astype(np.float32) * rng.uniform(0.5, 1.0, (n, 1, 1)).astype(np.float32)


def test_logit_matches_float64_reference_and_score():
    x = _drawings(64)
    rng = np.random.default_rng(1)
    r = np.clip(x * rng.uniform(0.0, 1.0, (64, 1, 1)) + rng.normal(0, 0.05, x.shape), 0, 1).astype(np.float32)
    scores, logits = ink_normalized_error_and_logit(x, r)
    assert logits.dtype == np.float64
    np.testing.assert_array_equal(scores, ink_normalized_error(x, r))  # the score itself is unchanged, bit for bit
    # Per-pixel products are float32 (as in the score), their sums float64: 1e-7 in the log-odds at most.
    np.testing.assert_allclose(logits, _reference_logit(x, r), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ink_normalized_logit(x, r), logits, rtol=0, atol=0)
    # Where float32 still resolves s, the log-odds of the score agree (up to the score's own rounding).
    ok = scores < 0.999
    np.testing.assert_allclose(logit_of_score(scores[ok]), logits[ok], atol=1e-5)


def test_logit_keeps_resolution_where_the_score_saturates():
    x = np.repeat(_drawings(1, seed=3), 7, axis=0)
    # Reconstructions fading towards nothing: every score rounds to 1 in float32, the log-odds keep their order.
    fades = np.array([1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10], dtype=np.float32)
    r = (x * fades[:, None, None]).astype(np.float32)
    scores, logits = ink_normalized_error_and_logit(x, r)
    assert np.all(scores >= np.float32(0.999))
    assert len(set(scores.tolist())) < len(scores)  # the bounded score ties
    assert np.all(np.isfinite(logits)) and np.all(np.diff(logits) > 1.0)  # the log-odds do not
    np.testing.assert_allclose(logits, _reference_logit(x, r), rtol=0, atol=1e-6)
    # A drawing the model erases completely (no shared ink) is finite and above all of them.
    blank_s, blank_l = ink_normalized_error_and_logit(x[:1], np.zeros_like(x[:1]))
    assert blank_s[0] == 1.0 and np.isfinite(blank_l[0]) and blank_l[0] > logits.max()


def test_stored_logit_of_a_legacy_score():
    assert score_logit_of(None) is None
    assert score_logit_of(0.5) == 0.0
    assert score_logit_of(0.8) == pytest.approx(math.log(4.0))
    assert score_logit_of(1.0) == SATURATED_LOGIT == pytest.approx(17.33, abs=0.01)


def test_calibration_record_of_the_pipeline_is_shown_as_recorded():
    record = {"method": "split-conformal", "nominal_fpr": 0.05, "threshold": 0.8069,
              "fpr_on_new_cats": {"n": 525, "rank": 500, "expected_fpr": 26 / 526, "low": 0.0326, "high": 0.0695,
                                  "level": 0.95}}
    got = _recorded(record)
    assert got == {"method": "split_conformal", "threshold": 0.8069, "n": 525, "rank": 500.0,
                   "nominal_false_flag_rate": 0.05, "expected_false_flag_rate": 26 / 526,
                   "interval": [0.0326, 0.0695], "confidence": 0.95}
    assert _recorded({"threshold": 0.8}) is None and _recorded(None) is None


def test_a_percentile_threshold_gets_the_interval_of_its_order_statistic():
    got = _percentile_fallback({"heldout_cat_score": {"n": 525}, "suggested_threshold": 0.8019})
    # numpy's p95 of 525 scores is rank 0.95 * 524 + 1 = 498.8: the flag rate is Beta(27.2, 498.8).
    assert got["method"] == "percentile" and got["rank"] == pytest.approx(498.8)
    assert got["expected_false_flag_rate"] == pytest.approx(27.2 / 526)
    low, high = got["interval"]
    assert 0.033 < low < 0.036 and 0.070 < high < 0.074
    assert _percentile_fallback({"suggested_threshold": 0.8}) is None


def _legacy_rows():
    scores = [0.2, 0.8018, 0.9, 0.99999, 1.0, 1.0, None]
    return [
        {"id": i + 1, "client": "c", "submitted_at": datetime(2026, 12, 1, tzinfo=timezone.utc),
         "source_format": "strokes", "status": "scored" if s is not None else "queued", "attempts": 0,
         "score": s, "flagged": None if s is None else s > 0.8018907904624939, "threshold": 0.8018907904624939}
        for i, s in enumerate(scores)
    ]


_T = sa.table(
    "sketches",
    *(sa.column(c) for c in ("id", "client", "submitted_at", "source_format", "status", "attempts", "score",
                              "flagged", "threshold")),
)


def _flags(eng) -> dict:
    with eng.connect() as conn:
        return {r.id: (r.score, r.flagged) for r in conn.execute(sa.text("SELECT id, score, flagged FROM sketches"))}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0007_backfills_and_keeps_flags(backend, tmp_path):
    def run(url: str) -> None:
        upgrade(url, "0006")
        eng = sa.create_engine(url)
        with eng.begin() as conn:
            conn.execute(_T.insert(), _legacy_rows())
        before = _flags(eng)
        upgrade(url, "0007")
        assert _flags(eng) == before
        with eng.connect() as conn:
            logits = dict(conn.execute(sa.text("SELECT id, score_logit FROM sketches")).all())
            names = {ix["name"] for ix in sa.inspect(conn).get_indexes("sketches")}
        assert logits[1] == pytest.approx(math.log(0.2 / 0.8), abs=1e-9)
        assert logits[4] == pytest.approx(math.log(0.99999 / 0.00001), rel=1e-6)
        assert logits[5] == logits[6] == pytest.approx(SATURATED_LOGIT)
        assert logits[7] is None
        assert [i for i, _ in sorted(logits.items(), key=lambda kv: -(kv[1] or -1e9))][:4] == [5, 6, 4, 3]
        assert {"ix_sketches_flagged_score_logit", "ix_sketches_score_logit"} <= names
        command.downgrade(alembic_config(url), "0006")
        assert _flags(eng) == before
        with eng.connect() as conn:
            assert "score_logit" not in {c["name"] for c in sa.inspect(conn).get_columns("sketches")}
        eng.dispose()

    if backend == "sqlite":
        run(f"sqlite:///{tmp_path / 'm.db'}")
    else:
        with fresh_pg_database(migrate=False) as url:
            run(url)
