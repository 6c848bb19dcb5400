"""The reviewer's workflow on the server (issue 18): every sketch browsable and searchable (page and API),
the audit sample and its unbiased estimates, the explanation images, the review loop (previous/next,
auto-advance, progress, expired sessions), error pages, times in UTC and the CSV exports.

Pages run in-process on a migrated SQLite copy (CSRF on); the SQL of the search, the audit and the estimates
also runs on a fresh PostgreSQL database. The browser side is tests/browser/test_workflow_browser.py.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import re
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service import audit, explain, quality, stats
from service.core.migrate import upgrade
from service.core.schema import ApiKey, AuditRound, AuditSample, Review, Sketch, ThresholdChange
from service.core.security import hash_api_key, new_api_key
from service.extensions import db
from service.reviews import record_reviews
from service.search import SketchSearch
from stack_fixtures import migrated_engine
from test_dashboard import DEFAULT_THRESHOLD, T0, bitmap, csrf_token, login, make_app, token

SQUARE = [[[0, 255, 255, 0, 0], [0, 0, 255, 255, 0]]]
TRIANGLE = [[[10, 128, 245, 10], [240, 12, 240, 240]], [[60, 190], [180, 180]]]


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def template_db(tmp_path_factory):
    """One migrated SQLite file; each test works on a copy."""
    path = tmp_path_factory.mktemp("workflow-template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def app(tmp_path, template_db):
    """A testing app (CSRF on) on a fresh copy of the migrated database, with an admin and a reviewer."""
    application = make_app(tmp_path, template_db)
    yield application
    db.dispose()


def logged_in(app, username: str):
    """A test client logged in through the form."""
    c = app.test_client()
    assert login(c, username).status_code == 302
    return c


@pytest.fixture
def admin(app):
    """A client logged in as admin."""
    return logged_in(app, "admin")


@pytest.fixture
def reviewer(app):
    """A client logged in as the reviewer rita."""
    return logged_in(app, "rita")


def add(app, rows: list[dict]) -> list[int]:
    """Insert sketches given as column dicts (defaults: scored, client acme, one minute apart); returns ids."""
    ids = []
    with app.app_context():
        for i, values in enumerate(rows):
            score = values.get("score", 0.5)
            scored = score is not None
            row = dict(
                client="acme", client_ref=None, source_format="simplified", submitted_at=T0 + timedelta(minutes=len(ids)),
                status="scored" if scored else "queued", score=score,
                flagged=(score > DEFAULT_THRESHOLD) if scored else None, threshold=DEFAULT_THRESHOLD if scored else None,
                model_version="m1" if scored else None, drawing=SQUARE, meta=None,
                input_bitmap=bitmap(2 * i), reconstruction=bitmap(2 * i + 1) if scored else None,
            )
            row.update(values)
            row.setdefault("scored_at", row["submitted_at"] if row["status"] == "scored" else None)
            sk = Sketch(**row)
            db.session.add(sk)
            db.session.flush()
            ids.append(sk.id)
        db.session.commit()
    return ids


def ids_on(html: str, testid: str = "sketch-row") -> list[int]:
    """Sketch ids of the rows or cards of a page, in order."""
    return [int(i) for i in re.findall(rf'data-testid="{testid}" data-id="(\d+)"', html)]


def link(html: str, testid: str) -> str | None:
    """The href of the element with ``testid`` (HTML-unescaped)."""
    m = re.search(rf'href="([^"]*)"[^>]*data-testid="{testid}"', html)
    return m.group(1).replace("&amp;", "&") if m else None


def walk(client, url: str) -> list[int]:
    """Every row of a keyset-paginated sketches list, following its Next links."""
    seen: list[int] = []
    for _ in range(100):
        html = client.get(url).text
        seen += ids_on(html)
        url = link(html, "page-next")
        if url is None:
            return seen
    raise AssertionError("the pager never ended")


# --------------------------------------------------------------------------- the sketches page


def test_sketches_page_lists_every_sketch_with_cursor_pages_both_ways(app, reviewer):
    scored = add(app, [{"score": s} for s in (0.1, 0.9, 0.4, 0.7, 0.2, 0.95, 0.3)])
    queued = add(app, [{"score": None}, {"score": None, "status": "failed", "error": "bad"}])
    every = scored + queued
    html = reviewer.get("/sketches").text
    assert re.search(r'data-testid="sketches-total">(\d+)<', html).group(1) == str(len(every))
    assert 'data-testid="sketch-search"' in html
    assert walk(reviewer, "/sketches?per_page=3") == sorted(every, reverse=True)
    assert walk(reviewer, "/sketches?per_page=4&sort=old") == sorted(every)
    by_score = [i for _, i in sorted(((s, i) for i, s in zip(scored, (0.1, 0.9, 0.4, 0.7, 0.2, 0.95, 0.3))), reverse=True)]
    # Scored sketches by score, then the unscored ones (no NULL in the middle of a score order).
    assert walk(reviewer, "/sketches?per_page=2&sort=score") == by_score + sorted(queued, reverse=True)
    assert walk(reviewer, "/sketches?per_page=3&sort=score_asc") == by_score[::-1] + sorted(queued)
    # Previous goes back exactly one page, and the first page has no Previous.
    first = reviewer.get("/sketches?per_page=3&sort=score").text
    assert link(first, "page-prev") is None
    second = reviewer.get(link(first, "page-next")).text
    third = reviewer.get(link(second, "page-next")).text
    assert ids_on(reviewer.get(link(third, "page-prev")).text) == ids_on(second)
    assert ids_on(reviewer.get(link(second, "page-prev")).text) == ids_on(first)


def test_sketches_search_by_id_client_ref_and_metadata(app, reviewer):
    ids = add(app, [
        {"client_ref": "order-77", "meta": {"word": "cat", "countrycode": "FR"}},
        {"client_ref": "ORDER-78", "meta": {"word": "Bicycle", "note": "Scribbled on a train"}},
        {"client_ref": "x-1", "meta": {"word": "catapult"}},
        {"client_ref": "50%_off", "meta": None},
    ])
    q = lambda text: ids_on(reviewer.get("/sketches", query_string={"q": text}).text)  # noqa: E731
    assert q(str(ids[2])) == [ids[2]]  # an id
    assert q("order-7") == [ids[1], ids[0]]  # part of a client_ref, any case
    assert q("TRAIN") == [ids[1]]  # part of a metadata value, any case
    assert q("cat") == [ids[2], ids[0]]  # metadata text
    assert q("word:cat") == [ids[0]]  # one key, exactly
    assert q("word:bicycle") == [ids[1]]
    assert q("countrycode=FR") == [ids[0]]
    assert q("50%_") == [ids[3]]  # LIKE wildcards are literal
    assert q("%") == [ids[3]]
    assert q("nothing-like-it") == [] and "No sketch matches" in reviewer.get("/sketches?q=nothing-like-it").text
    # "#id" is the id alone; a plain number also offers the sketch with that id at once.
    assert q(f"#{ids[1]}") == [ids[1]] and q("#999999") == [] and q("#99999999999999999999") == []
    html = reviewer.get("/sketches", query_string={"q": str(ids[1])}).text
    assert 'data-testid="id-match"' in html and f"open sketch {ids[1]}" in html


def test_sketches_filters(app, reviewer):
    a = add(app, [{"score": 0.2, "client": "acme", "meta": {"word": "cat"}},
                  {"score": 0.8, "client": "acme", "model_version": "m2"},
                  {"score": 0.6, "client": "globex", "submitted_at": T0 + timedelta(days=3)}])
    b = add(app, [{"score": None}, {"score": 0.9, "client": "globex", "verdict": "cat"},
                  {"score": 0.4, "verdict": "anomaly"}])
    get = lambda **q: set(ids_on(reviewer.get("/sketches", query_string=q).text))  # noqa: E731
    assert get(score_min="0.5") == {a[1], a[2], b[1]}
    assert get(score_min="0.3", score_max="0.7") == {a[2], b[2]}
    assert get(client="globex") == {a[2], b[1]}
    assert get(status="queued") == {b[0]}
    assert get(flagged="yes") == {a[1], a[2], b[1]} and get(flagged="no") == {a[0], b[2]}
    assert get(verdict="none") == {a[0], a[1], a[2], b[0]}
    assert get(verdict="anomaly") == {b[2]} and get(verdict="cat") == {b[1]}
    assert get(model_version="m2") == {a[1]}
    assert get(since=(T0 + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")) == {a[2]}
    assert get(until=(T0 + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M")) == {a[0], b[0]}
    assert get(client="globex", flagged="yes", verdict="none") == {a[2]}
    html = reviewer.get("/sketches").text
    assert '<option value="globex"' in html and '<option value="m2"' in html  # the choices come from the data
    for bad, field in ((dict(score_min="high"), "score_min"), (dict(status="done"), "status"),
                       (dict(score_min="0.8", score_max="0.2"), "score_max"), (dict(since="soon"), "since"),
                       (dict(sort="random"), "sort"), (dict(after="garbage"), "after"), (dict(q="x" * 201), "q")):
        r = reviewer.get("/sketches", query_string=bad)
        assert r.status_code == 400 and f"({field})" in r.text, (bad, r.status_code)
        assert 'data-testid="search-error"' in r.text


def test_sketches_page_is_the_review_queue_too(app, reviewer):
    ids = add(app, [{"score": 0.2, "client_ref": "ref-a", "meta": {"word": "cat", "countrycode": "US"}}, {"score": 0.9}])
    html = reviewer.get("/sketches").text
    row = html[html.index(f'data-id="{ids[0]}"'):]
    assert 'data-review-item' in html and 'data-testid="bulk-confirm"' in html
    assert ">cat<" in row[:3000] and "ref-a" in row[:3000]
    resp = reviewer.post("/review/bulk", data={"ids": [str(ids[0])], "verdict": "anomaly", "csrf_token": token(reviewer, "/sketches"),
                                                "next": "/sketches?flagged=no"})
    assert resp.status_code == 302 and resp.headers["Location"] == "/sketches?flagged=no"
    with app.app_context():
        assert db.session.get(Sketch, ids[0]).verdict == "anomaly"  # a missed anomaly, found off the flagged list


# --------------------------------------------------------------------------- the API list


@pytest.fixture
def api(app):
    """(test client, headers) of a client key 'acme' and of an admin key."""
    keys = {}
    with app.app_context():
        for name, is_admin in (("acme", False), ("ops", True)):
            keys[name] = new_api_key()
            db.session.add(ApiKey(name=name, prefix=keys[name][:12], key_hash=hash_api_key(keys[name]), admin=is_admin))
        db.session.commit()
    return app.test_client(), {n: {"Authorization": f"Bearer {k}"} for n, k in keys.items()}


def test_api_list_has_the_same_search_and_filters(app, api):
    client, auth = api
    ids = add(app, [
        {"score": 0.2, "client_ref": "r-1", "meta": {"word": "cat"}},
        {"score": 0.8, "client_ref": "r-2", "meta": {"word": "bus"}, "verdict": "anomaly", "model_version": "m2"},
        {"score": 0.6, "client": "globex", "client_ref": "r-3", "meta": {"word": "cat"}},
    ])

    def listed(who="acme", **q):
        r = client.get("/api/v1/sketches", query_string=q, headers=auth[who])
        assert r.status_code == 200, r.json
        return [item["id"] for item in r.json["items"]]

    assert listed(q="word:cat") == [ids[0]]  # a client key still sees only its own sketches
    assert listed("ops", q="word:cat") == [ids[2], ids[0]]
    assert listed("ops", q="r-") == ids[::-1] and listed("ops", q=str(ids[1])) == [ids[1]]
    assert listed("ops", score_min="0.5") == [ids[2], ids[1]]
    assert listed("ops", score_min="0.5", score_max="0.7") == [ids[2]]
    assert listed("ops", verdict="anomaly") == [ids[1]] and listed("ops", verdict="none") == [ids[2], ids[0]]
    assert listed("ops", model_version="m2") == [ids[1]]
    assert listed("ops", q="cat", limit="1")[0] == ids[2]
    for bad, field in (({"score_min": "x"}, "score_min"), ({"score_min": "nan"}, "score_min"),
                       ({"verdict": "maybe"}, "verdict"), ({"score_min": "0.9", "score_max": "0.1"}, "score_max"),
                       ({"q": "x" * 201}, "q"), ({"q": "a\x00b"}, "q")):
        r = client.get("/api/v1/sketches", query_string=bad, headers=auth["ops"])
        assert r.status_code == 400 and r.json["error"]["field"] == field, (bad, r.json)
    params = {p["name"] for p in client.get("/api/v1/openapi.json").json["paths"]["/sketches"]["get"]["parameters"]}
    assert {"q", "score_min", "score_max", "verdict", "model_version"} <= params


# --------------------------------------------------------------------------- search, audit and estimates in SQL (SQLite and PostgreSQL)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(request, tmp_path_factory):
    """A migrated engine: a temp SQLite file, or a fresh PostgreSQL database dropped afterwards."""
    with migrated_engine(request.param, tmp_path_factory.mktemp('workflow-db')) as eng:
        yield eng


@pytest.fixture
def session(engine):
    """A session on emptied tables."""
    with Session(engine) as s:
        for table in (AuditSample, AuditRound, Review, ThresholdChange, Sketch):
            s.execute(delete(table))
        s.commit()
        yield s
        s.rollback()


_REFS = itertools.count()


def store(session: Session, scores, verdicts=None, meta=None) -> list[int]:
    """Scored sketches (flagged above 0.5) with optional staff verdicts; returns ids."""
    rows = []
    for i, score in enumerate(scores):
        rows.append(Sketch(client="c", client_ref=f"ref-{next(_REFS)}", source_format="simplified", submitted_at=T0 + timedelta(seconds=i),
                           status="scored", score=float(score), flagged=score > 0.5, threshold=0.5, model_version="v1",
                           scored_at=T0 + timedelta(seconds=i),
                           meta=(meta[i] if meta else {"word": "cat", "n": i})))
    session.add_all(rows)
    session.flush()
    ids = [r.id for r in rows]
    if verdicts:
        for i, v in zip(ids, verdicts):
            if v:
                record_reviews(session, [i], v, "rita")
    session.commit()
    return ids


def test_search_runs_in_sql_on_both_databases(session):
    ids = store(session, [0.1, 0.7, 0.9], meta=[{"word": "Cat", "where": "Zürich"}, {"word": "dog"}, {"word": "cat", "k": [1, 2]}])

    def found(**kw):
        return list(session.execute(select(Sketch.id).where(*SketchSearch(**kw).clauses()).order_by(Sketch.id)).scalars())

    assert found(q="word:cat") == [ids[0], ids[2]]
    assert found(q="zürich") == [ids[0]]
    for i, ref in zip(ids, ("alpha-x", "beta-y", "gamma-z")):
        session.get(Sketch, i).client_ref = ref
    session.commit()
    assert found(q="BETA") == [ids[1]]
    assert found(q=str(ids[2])) == [ids[2]]
    assert found(q="²") == []  # a digit to Python, not an id
    assert found(q="word:cat", score_min=0.5) == [ids[2]]
    assert found(verdict="none", flagged=True) == [ids[1], ids[2]]


def test_an_audit_round_draws_at_random_within_each_stratum_without_repeats(session):
    ids = store(session, np.linspace(0.01, 0.99, 40))
    r = audit.start_round(session, 0.5, "rita")
    assert (r.population_above, r.population_below, r.frame_max_id) == (20, 20, max(ids))
    first = audit.draw(session, r, 8)
    later = store(session, [0.99, 0.01])  # after the round started: outside its frame
    second = audit.draw(session, r, 15)
    session.commit()
    rows = session.execute(select(AuditSample.sketch_id, AuditSample.stratum, Sketch.score)
                           .join(Sketch, Sketch.id == AuditSample.sketch_id)).all()
    assert (first.above, first.below, second.above, second.below) == (8, 8, 12, 12)  # the strata hold 20 each
    assert len({r_.sketch_id for r_ in rows}) == len(rows) == 40
    assert all((row.score > 0.5) == (row.stratum == "above") for row in rows)
    assert not {row.sketch_id for row in rows} & set(later)
    assert audit.draw(session, r, 5).total == 0  # the frame is used up
    with pytest.raises(audit.AuditError):
        audit.draw(session, r, 0)
    assert audit.current_round(session).id == r.id


def _brute_estimate(scores, verdicts, strata, populations, t):
    """TP, FP, FN by the weighted sum over reviewed draws, written out by hand."""
    tp = fp = fn = 0.0
    for h in ("above", "below"):
        reviewed = [(s, v) for s, v, st in zip(scores, verdicts, strata) if st == h and v]
        if not reviewed:
            continue
        w = populations[h] / len(reviewed)
        tp += w * sum(1 for s, v in reviewed if v == "anomaly" and s > t)
        fp += w * sum(1 for s, v in reviewed if v == "cat" and s > t)
        fn += w * sum(1 for s, v in reviewed if v == "anomaly" and s <= t)
    return tp, fp, fn


def test_estimates_weight_each_stratum_and_the_f1_suggestion_needs_enough_reviews(session):
    rng = np.random.default_rng(7)
    scores = np.concatenate([rng.uniform(0.51, 1.0, 30), rng.uniform(0.0, 0.5, 300)])
    # Truth: most high scores are anomalies, and a few anomalies hide below the threshold.
    truth = ["anomaly" if (s > 0.7 or (s < 0.5 and rng.random() < 0.05)) else "cat" for s in scores]
    ids = store(session, scores)
    r = audit.start_round(session, 0.5, "rita")
    audit.draw(session, r, 12)
    session.commit()
    drawn = session.execute(select(AuditSample.sketch_id, AuditSample.stratum)).all()
    pos = {i: k for k, i in enumerate(ids)}
    # Too few reviews: 9 on each side.
    few = [d for d in drawn if d.stratum == "above"][:9] + [d for d in drawn if d.stratum == "below"][:9]
    for d in few:
        record_reviews(session, [d.sketch_id], truth[pos[d.sketch_id]], "rita")
    session.commit()
    est = quality.estimate(session, r, 0.5)
    assert est.reviews == 18 and not est.enough and est.needed == 2
    assert quality.f1_suggestion(session, r) is None
    for d in drawn:
        record_reviews(session, [d.sketch_id], truth[pos[d.sketch_id]], "rita")
    session.commit()
    populations = {"above": r.population_above, "below": r.population_below}
    drawn_scores = [float(scores[pos[d.sketch_id]]) for d in drawn]
    drawn_truth = [truth[pos[d.sketch_id]] for d in drawn]
    drawn_strata = [d.stratum for d in drawn]
    for t in (0.3, 0.5, 0.75):
        est = quality.estimate(session, r, t)
        tp, fp, fn = _brute_estimate(drawn_scores, drawn_truth, drawn_strata, populations, t)
        assert est.reviews == 24 and est.enough
        for m, value in ((est.precision, tp / (tp + fp) if tp + fp else None), (est.recall, tp / (tp + fn) if tp + fn else None),
                         (est.f1, 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else None)):
            assert (m.value is None) == (value is None)
            if value is not None:
                assert m.value == pytest.approx(value) and 0.0 <= m.low <= m.value <= m.high <= 1.0
    # The suggestion is the weighted-F1 optimum over every cut between reviewed scores.
    best = quality.f1_suggestion(session, r)
    cuts = sorted(set(drawn_scores))
    candidates = [math.nextafter(c, -math.inf) for c in cuts]

    def f1_at(t):
        tp, fp, fn = _brute_estimate(drawn_scores, drawn_truth, drawn_strata, populations, t)
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0

    assert best is not None and best.reviews == 24
    assert best.estimate.f1.value == pytest.approx(max(f1_at(t) for t in candidates))
    assert f1_at(best.threshold) == pytest.approx(best.estimate.f1.value)


def test_reviews_of_the_top_of_the_queue_never_make_an_f1_suggestion(session):
    # The case: 15 reviews of the highest scores, no audit.
    ids = store(session, np.linspace(0.9, 0.999, 15))
    record_reviews(session, ids[:14], "anomaly", "rita")
    record_reviews(session, ids[14:], "cat", "rita")
    session.commit()
    assert stats.f1_optimal_threshold(session) is not None  # the old, biased suggestion would exist
    assert quality.f1_suggestion(session, audit.current_round(session)) is None


def test_intervals_are_honest_about_what_was_not_reviewed():
    r = AuditRound(id=1, threshold=0.5, population_above=100, population_below=10_000, frame_max_id=1, created_by="x")
    # 20 reviewed on each side; every flagged one an anomaly, none found below.
    strata = [quality.Stratum("above", 100, drawn=20, reviewed=20, anomalies=20, tp=20, fp=0, fn=0),
              quality.Stratum("below", 10_000, drawn=20, reviewed=20, anomalies=0, tp=0, fp=0, fn=0)]
    est = quality.estimate_from(strata, 0.5, r)
    assert est.precision.value == 1.0 and est.recall.value == 1.0
    # 0 of 20 below still allows thousands of missed anomalies among 10,000: recall could be tiny.
    assert est.recall.low < 0.1 and est.precision.low > 0.7
    # A stratum without reviews: no point estimate, and the interval says so.
    strata[1] = quality.Stratum("below", 10_000)
    est = quality.estimate_from(strata, 0.5, r)
    assert est.recall.value is None and est.recall.low < 0.01 and est.recall.high == 1.0
    assert est.precision.value == 1.0  # nothing below 0.5 can be flagged at 0.5: exact, not estimated


def test_intervals_cover_the_truth_at_least_as_often_as_they_claim():
    rng = np.random.default_rng(18)
    n_above, n_below = 400, 4000
    p_above, p_below = 0.6, 0.02  # anomaly rates in each stratum
    truth_tp, truth_fn = n_above * p_above, n_below * p_below
    truth = {"precision": p_above, "recall": truth_tp / (truth_tp + truth_fn)}
    truth["f1"] = 2 * truth_tp / (2 * truth_tp + n_above * (1 - p_above) + truth_fn)
    r = AuditRound(id=1, threshold=0.5, population_above=n_above, population_below=n_below, frame_max_id=1, created_by="x")
    above = np.array([1] * int(truth_tp) + [0] * int(n_above - truth_tp))
    below = np.array([1] * int(truth_fn) + [0] * int(n_below - truth_fn))
    covered = dict.fromkeys(truth, 0)
    runs = 300
    for _ in range(runs):
        a = rng.choice(above, 30, replace=False).sum()
        b = rng.choice(below, 60, replace=False).sum()
        strata = [quality.Stratum("above", n_above, 30, 30, int(a), int(a), int(30 - a), 0),
                  quality.Stratum("below", n_below, 60, 60, int(b), 0, 0, int(b))]
        est = quality.estimate_from(strata, 0.5, r)
        for name in truth:
            m = getattr(est, name)
            covered[name] += m.low <= truth[name] <= m.high
    for name, n in covered.items():
        assert n / runs >= 0.95, (name, n / runs)


# --------------------------------------------------------------------------- the audit page and the threshold page


def test_audit_page_draws_reviews_and_estimates(app, reviewer, admin):
    rng = np.random.default_rng(3)
    scores = list(rng.uniform(0.51, 1.0, 15)) + list(rng.uniform(0.0, 0.5, 40))
    add(app, [{"score": float(s), "meta": {"word": "cat"}} for s in scores])
    html = reviewer.get("/audit").text
    assert 'data-testid="audit-empty"' in html
    resp = reviewer.post("/audit/draw", data={"per_stratum": "10", "csrf_token": csrf_token(html)})
    assert resp.status_code == 302
    html = reviewer.get("/audit").text
    drawn = ids_on(html, "flagged-item")
    assert 'data-testid="audit-sample"' in html and len(drawn) == 20
    assert html.count('data-testid="card-stratum">above<') == 10 and html.count('data-testid="card-stratum">below<') == 10
    assert 'data-testid="audit-f1-none"' in html and "20 more" in html
    with app.app_context():
        above = {i for i, in db.session.execute(select(AuditSample.sketch_id).where(AuditSample.stratum == "above"))}
    tok = token(reviewer, "/audit")
    for i in drawn:
        reviewer.post(f"/sketches/{i}/review", data={"verdict": "anomaly" if i in above else "cat", "csrf_token": tok})
    html = reviewer.get("/audit").text
    assert 'data-testid="audit-f1-suggestion"' in html and "from 20 reviews" in html
    assert re.search(r'data-testid="estimate-precision" data-value="1.0"', html)
    assert re.search(r'data-testid="audit-progress" data-reviewed="20" data-total="20"', html)
    page = reviewer.get("/threshold").text
    chip = re.search(r'data-testid="suggest-f1" data-reviews="(\d+)"', page)
    assert chip and chip.group(1) == "20" and "20 audit reviews" in page
    preview = reviewer.get("/threshold/preview?t=0.5").json
    assert preview["estimate"]["reviews"] == 20 and preview["estimate"]["precision"]["value"] == 1.0
    # Only an admin starts a new round; a reviewer's attempt changes nothing.
    assert reviewer.post("/audit/draw", data={"per_stratum": "5", "new_round": "1", "csrf_token": tok}).status_code == 403
    admin.post("/audit/draw", data={"per_stratum": "5", "new_round": "1", "csrf_token": token(admin, "/audit")})
    with app.app_context():
        assert db.session.execute(select(AuditRound.id)).scalars().all() == [1, 2]


# --------------------------------------------------------------------------- explanations


def test_strokes_are_drawn_as_vector_svg_at_full_resolution(app, reviewer):
    [sid] = add(app, [{"drawing": TRIANGLE}])
    [image_only] = add(app, [{"drawing": None, "source_format": "image"}])
    r = reviewer.get(f"/sketches/{sid}/strokes.svg")
    assert r.status_code == 200 and r.mimetype == "image/svg+xml"
    lines = re.findall(r'<polyline points="([^"]+)"', r.text)
    assert lines == ["10,240 128,12 245,240 10,240", "60,180 190,180"]  # the stored coordinates, not 28x28 pixels
    assert "<script" not in r.text
    assert reviewer.get(f"/sketches/{sid}/strokes.svg", headers={"If-None-Match": r.headers["ETag"]}).status_code == 304
    assert reviewer.get(f"/sketches/{image_only}/strokes.svg").status_code == 404
    assert reviewer.get("/sketches/9999/strokes.svg").status_code == 404


def _pixels(resp) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(resp.data)).convert("RGB")).astype(int)


def test_heatmap_is_on_a_fixed_scale_pinned_to_the_threshold(app, reviewer):
    ink = np.zeros((28, 28), dtype=np.uint8)
    ink[5:20, 10] = 255
    blank = np.zeros((28, 28), dtype=np.uint8)
    ids = add(app, [{"input_bitmap": ink.tobytes(), "reconstruction": blank.tobytes(), "score": 1.0},
                    {"input_bitmap": ink.tobytes(), "reconstruction": ink.tobytes(), "score": 0.0}])
    refused = _pixels(reviewer.get(f"/sketches/{ids[0]}/heatmap.png?t=0.3&s=1"))
    copied = _pixels(reviewer.get(f"/sketches/{ids[1]}/heatmap.png?t=0.3&s=1"))
    assert tuple(refused[10, 10]) == explain.HIGH  # erased ink: the top of the scale, where a reconstruction shows nothing
    assert tuple(copied[10, 10]) == explain.LOW  # reproduced ink: the bottom
    assert tuple(refused[0, 0]) == explain.PAPER == tuple(copied[0, 0])  # no ink either way: paper
    # Fixed scale: an error equal to the threshold is the middle colour, whatever the sketch.
    e = np.array([0.0, 0.3, 1.0])
    assert [tuple(np.rint(c).astype(int)) for c in explain.colour_scale(e, 0.3)] == [explain.LOW, explain.MID, explain.HIGH]
    for bad in ("t=2", "t=x", "", "t=0.3&s=99"):
        assert reviewer.get(f"/sketches/{ids[0]}/heatmap.png?{bad}").status_code == 400
    [queued] = add(app, [{"score": None}])
    assert reviewer.get(f"/sketches/{queued}/heatmap.png?t=0.3").status_code == 404


def test_cards_show_word_client_ref_metadata_strokes_and_heatmap(app, reviewer):
    add(app, [{"score": 0.9, "client_ref": "qd-123", "meta": {"word": "teapot", "countrycode": "NZ", "recognized": True}}])
    html = reviewer.get("/flagged").text
    assert re.search(r'data-testid="card-word">teapot<', html)
    assert re.search(r'data-testid="card-client-ref"[^>]*>qd-123<', html)
    meta = html[html.index('data-testid="card-meta"'):]
    assert "countrycode" in meta[:500] and "NZ" in meta[:500] and "recognized" in meta[:500]
    assert 'data-testid="card-strokes"' in html and "strokes.svg" in html
    assert re.search(r'heatmap\.png\?t=0\.5&amp;s=4', html)  # the threshold in force sets the scale
    assert 'data-testid="heat-legend"' in html and "pair.png" not in html


# --------------------------------------------------------------------------- the review loop


def test_previous_and_next_follow_the_list_the_detail_page_came_from(app, reviewer):
    ids = add(app, [{"score": s} for s in (0.6, 0.9, 0.7, 0.2, 0.8)])  # flagged by score: ids[1], [4], [2], [0]
    here = "/flagged?state=all&sort=score"
    html = reviewer.get(f"/sketches/{ids[4]}", query_string={"next": here}).text
    prev, nxt = link(html, "detail-prev"), link(html, "detail-next")
    assert urlsplit(prev).path == f"/sketches/{ids[1]}" and urlsplit(nxt).path == f"/sketches/{ids[2]}"
    assert parse_qs(urlsplit(nxt).query)["next"] == [here]  # the way on keeps the list
    last = reviewer.get(f"/sketches/{ids[0]}", query_string={"next": here}).text
    assert link(last, "detail-next") is None and 'data-testid="detail-last"' in last
    # Oldest-first on the sketches page: the unflagged sketch is a neighbour there.
    html = reviewer.get(f"/sketches/{ids[2]}", query_string={"next": "/sketches?sort=old"}).text
    assert urlsplit(link(html, "detail-prev")).path == f"/sketches/{ids[1]}"
    assert urlsplit(link(html, "detail-next")).path == f"/sketches/{ids[3]}"
    assert "Back to all sketches" in html
    # The unreviewed queue: a reviewed sketch's neighbours are still found from where it was.
    tok = token(reviewer)
    reviewer.post(f"/sketches/{ids[4]}/review", data={"verdict": "cat", "csrf_token": tok})
    html = reviewer.get(f"/sketches/{ids[4]}", query_string={"next": "/flagged?state=unreviewed"}).text
    assert urlsplit(link(html, "detail-next")).path == f"/sketches/{ids[2]}"
    assert re.search(r'data-testid="review-progress" data-reviewed="1" data-total="4"', html)


def test_auto_advance_goes_to_the_next_sketch_of_the_list_and_says_when_it_ends(app, reviewer):
    ids = add(app, [{"score": s} for s in (0.6, 0.9, 0.7)])  # flagged by score: ids[1], ids[2], ids[0]
    here = "/flagged?state=unreviewed&sort=score"
    tok = token(reviewer)
    form = {"verdict": "anomaly", "csrf_token": tok, "advance": "1", "list": here, "next": f"/sketches/{ids[1]}?next=x"}
    resp = reviewer.post(f"/sketches/{ids[1]}/review", data=form)
    assert resp.status_code == 302
    target = urlsplit(resp.headers["Location"])
    assert target.path == f"/sketches/{ids[2]}" and parse_qs(target.query)["next"] == [here]
    page = reviewer.get(resp.headers["Location"]).text
    assert 'data-testid="undo"' in page and f"Sketch {ids[1]}" in page  # the verdict just left behind can be undone
    resp = reviewer.post(f"/sketches/{ids[0]}/review", data=dict(form, verdict="cat"))
    assert resp.headers["Location"] == here
    assert "That was the last sketch of the flagged gallery." in reviewer.get(here).text
    # Without auto-advance the verdict stays on its page.
    resp = reviewer.post(f"/sketches/{ids[2]}/review", data={"verdict": "cat", "csrf_token": tok, "next": f"/sketches/{ids[2]}"})
    assert resp.headers["Location"] == f"/sketches/{ids[2]}"


def test_progress_and_verdicts_per_reviewer(app, reviewer, admin):
    ids = add(app, [{"score": s} for s in (0.6, 0.7, 0.8, 0.9)])
    reviewer.post("/review/bulk", data={"ids": [str(i) for i in ids[:3]], "verdict": "cat", "csrf_token": token(reviewer, "/flagged")})
    admin.post(f"/sketches/{ids[3]}/review", data={"verdict": "anomaly", "csrf_token": token(admin)})
    html = reviewer.get("/flagged").text
    assert re.search(r'data-testid="review-progress" data-reviewed="4" data-total="4"', html)
    rows = dict(re.findall(r'data-reviewer="(\w+)"><td>\w+</td><td data-testid="reviewer-recent">(\d+)<', html))
    assert rows == {"rita": "3", "admin": "1"}
    with app.app_context():
        counts = stats.reviewer_counts(db.session, since=T0 + timedelta(days=36500))
    assert [(c.reviewer, c.total, c.recent) for c in counts] == [("rita", 3, 0), ("admin", 1, 0)]


def test_an_expired_session_goes_to_login_and_back_to_the_page(app, reviewer):
    [sid] = add(app, [{"score": 0.9}])
    gallery = "/flagged?state=unreviewed&sort=time"
    page = reviewer.get(gallery).text
    tok = csrf_token(page)
    expired = app.test_client()  # the session cookie is gone
    # A bulk action: the login page, then back to the gallery with resume=1 (its script restores the selection).
    resp = expired.post("/review/bulk", data={"ids": [str(sid)], "verdict": "cat", "csrf_token": tok, "next": gallery})
    assert resp.status_code == 302
    login_url = urlsplit(resp.headers["Location"])
    assert login_url.path == "/login"
    back = parse_qs(login_url.query)["next"][0]
    assert back == "/flagged?state=unreviewed&sort=time&resume=1"
    assert "Your session has expired" in expired.get("/login").text
    # A keyboard verdict (fetch): 401 JSON naming the login page, with the page it came from as next.
    resp = expired.post(f"/sketches/{sid}/review", data={"verdict": "cat"},
                        headers={"X-Requested-With": "fetch", "X-CSRFToken": tok, "Referer": f"http://localhost{gallery}"})
    assert resp.status_code == 401 and "session has expired" in resp.json["error"]["message"]
    assert parse_qs(urlsplit(resp.json["error"]["login_url"]).query)["next"] == [back]
    # A session whose login ended (CSRF still fine): the same.
    reviewer.post("/logout", data={"csrf_token": tok})
    resp = reviewer.post(f"/sketches/{sid}/review", data={"verdict": "cat", "csrf_token": tok, "next": gallery})
    assert resp.status_code == 302 and parse_qs(urlsplit(resp.headers["Location"]).query)["next"] == [back]
    with app.app_context():
        assert db.session.get(Sketch, sid).verdict is None  # nothing was recorded on the way
    # Logging in then lands on the page.
    again = app.test_client()
    assert login(again, "rita", next_url="/flagged%3Fstate%3Dunreviewed%26sort%3Dtime%26resume%3D1").headers["Location"] == back


def test_a_page_left_open_across_a_new_login_is_a_400_that_leads_back(app, reviewer):
    [sid] = add(app, [{"score": 0.9}])
    old = csrf_token(reviewer.get("/flagged").text)
    fresh = logged_in(app, "rita")  # a new session: the old page's token does not fit it
    resp = fresh.post("/review/bulk", data={"ids": [str(sid)], "verdict": "cat", "csrf_token": old, "next": "/flagged?state=all"})
    assert resp.status_code == 400 and "out of date" in resp.text
    assert link(resp.text, "error-back") == "/flagged?state=all&resume=1"
    resp = fresh.post(f"/sketches/{sid}/review", data={"verdict": "cat"},
                      headers={"X-Requested-With": "fetch", "X-CSRFToken": old, "Referer": "http://localhost/flagged"})
    assert resp.status_code == 400 and resp.json["error"]["reload"] == "/flagged?resume=1"


# --------------------------------------------------------------------------- error pages, times, CSV


def test_error_pages_are_styled_with_the_menu_and_plain_words(app, reviewer):
    anon = app.test_client()
    r = anon.get("/no/such/page")
    assert r.status_code == 404 and r.mimetype == "text/html"
    assert 'data-testid="error-page"' in r.text and "Page not found" in r.text and "Log in" in r.text
    assert "app.css" in r.text and "requested URL was not found" not in r.text
    r = reviewer.get("/no/such/page")
    assert 'class="mainnav"' in r.text and 'data-testid="error-home"' in r.text
    r = reviewer.get("/sketches/424242")
    assert r.status_code == 404 and "There is no sketch 424242." in r.text
    r = reviewer.get("/admin/users")
    assert r.status_code == 403 and "Not for your account" in r.text and "rita (reviewer)" in r.text
    assert "read-protected" not in r.text and "permission to access the requested resource" not in r.text
    api = anon.get("/api/v1/no-such-thing")
    assert api.status_code == 404 and api.is_json and api.json["error"]["field"] is None
    assert reviewer.get("/sketches/1", headers={"X-Requested-With": "fetch"}).json["error"]["message"]


def test_an_unexpected_failure_is_a_styled_500_without_details(app, reviewer, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(stats, "flagged_progress", broken)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    r = reviewer.get("/flagged")
    assert r.status_code == 500 and 'data-testid="error-page"' in r.text and "Something went wrong" in r.text
    assert "secret internals" not in r.text and "Traceback" not in r.text and 'class="mainnav"' in r.text
    r = reviewer.get("/flagged", headers={"X-Requested-With": "fetch"})
    assert r.status_code == 500 and "secret" not in r.json["error"]["message"]


def test_times_are_shown_in_utc_and_say_so(app, reviewer):
    [sid] = add(app, [{"score": 0.9}])
    html = reviewer.get(f"/sketches/{sid}").text
    assert f'<time datetime="{T0.isoformat()}">2026-05-01 12:00:00 UTC</time>' in html
    assert "2026-05-01 12:00:00 UTC" in reviewer.get("/flagged").text
    assert "From (UTC)" in reviewer.get("/sketches").text


def test_csv_follows_the_chosen_order_and_carries_metadata(app, admin):
    ids = add(app, [{"score": s, "meta": {"word": w, "note": "=1+1"}} for s, w in ((0.6, "a"), (0.9, "b"), (0.7, "c"))])
    for sort, expected in (("score", [ids[1], ids[2], ids[0]]), ("score_asc", [ids[0], ids[2], ids[1]]),
                           ("time", ids[::-1]), ("time_asc", ids)):
        html = admin.get(f"/flagged?sort={sort}").text
        url = link(html, "export-csv")
        assert f"sort={sort}" in url
        rows = list(csv.DictReader(io.StringIO(admin.get(url).text)))
        assert [int(r["id"]) for r in rows] == expected, sort
    rows = list(csv.DictReader(io.StringIO(admin.get("/export.csv?sort=score").text)))
    assert [r["metadata"] for r in rows][0] == '{"note": "=1+1", "word": "b"}'  # JSON: starts with {, never a formula
    assert admin.get("/export.csv?sort=nope").status_code == 400
    # The sketches page exports what it shows, in its order.
    [low] = add(app, [{"score": 0.1, "client_ref": "low-one", "meta": {"word": "z"}}])
    html = admin.get("/sketches?sort=score_asc&score_max=0.65").text
    rows = list(csv.DictReader(io.StringIO(admin.get(link(html, "sketches-csv")).text)))
    assert [int(r["id"]) for r in rows] == [low, ids[0]] and rows[0]["client_ref"] == "low-one"
    assert admin.get("/sketches/export.csv?status=bad").status_code == 400


def test_every_new_page_answers_for_reviewers_and_admins(app, reviewer, admin):
    ids = add(app, [{"score": s} for s in (0.3, 0.8)])
    for c in (reviewer, admin):
        for path in ("/sketches", "/audit", f"/sketches/{ids[0]}?next=/audit", f"/sketches/{ids[1]}?next=/sketches%3Fsort%3Dscore",
                     "/sketches?q=word:cat&sort=score_asc", "/threshold"):
            assert c.get(path).status_code == 200, path
    anon = app.test_client()
    for path in ("/sketches", "/audit"):
        r = anon.get(path)
        assert r.status_code == 302 and r.headers["Location"].startswith("/login?next="), path
    # An <img> (the browser says so in Sec-Fetch-Dest) is refused outright: following the redirect, it would
    # use up the login page's message. Anything else asking for an image is sent to log in like for a page.
    for path in (f"/sketches/{ids[0]}/strokes.svg", f"/sketches/{ids[0]}/heatmap.png?t=0.5", f"/sketches/{ids[0]}/input.png"):
        assert anon.get(path, headers={"Sec-Fetch-Dest": "image"}).status_code == 401, path
        assert anon.get(path).status_code == 302, path


SQL_PAYLOADS = ("' OR '1'='1", "1; DROP TABLE sketches; --", "word:x' OR 1=1 --", "%' OR metadata IS NOT NULL --",
                "#1 OR 1=1", "\\", "_%_", "' UNION SELECT id FROM users --")


def test_search_text_is_never_sql(app, reviewer, api):
    client, auth = api
    add(app, [{"score": 0.4, "client_ref": "plain", "meta": {"word": "cat"}}])
    for payload in SQL_PAYLOADS:
        for name in ("q", "client", "model_version", "score_min"):
            page = reviewer.get("/sketches", query_string={name: payload})
            assert page.status_code in (200, 400), (name, payload, page.status_code)
            assert ids_on(page.text) == [], (name, payload)
            r = client.get("/api/v1/sketches", query_string={name: payload}, headers=auth["ops"])
            assert r.status_code in (200, 400), (name, payload, r.status_code)
            if r.status_code == 200:
                assert r.json["items"] == [], (name, payload)
    with app.app_context():
        assert db.session.execute(select(Sketch.id)).scalars().all() != []
