"""The Models page and the admin-only ``/api/v1/models`` operations (issue 16), in-process on SQLite and PostgreSQL.

Roles (reviewers look, admins act), CSRF, the confirmation step of shadow/promote/rollback, the training
button's "not enough reviews" message, the shadow comparison against a hand count (histograms, AUROC,
precision, recall), the disagreement queue's pages, and the API's authorization and JSON errors.
"""

from __future__ import annotations

import json
import re
import shutil
from itertools import product
from pathlib import Path

import pytest
from sqlalchemy import func, select
from stack_fixtures import migrated_url

from service.app import create_app
from service.core import registry
from service.core.schema import (
    ApiKey,
    Base,
    ModelVersion,
    RescoreJob,
    ShadowScore,
    Sketch,
    User,
    utcnow,
)
from service.core.security import hash_api_key, hash_password, new_api_key
from service.extensions import db

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "shipped"
SQUARE = [[[0, 255, 255, 0, 0], [0, 0, 255, 255, 0]]]
PASSWORDS = {"admin": "admin-password-1", "rita": "reviewer-password-1"}
CSRF_INPUT = re.compile(r'<input[^>]*name="csrf_token"[^>]*value="([^"]+)"')
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')
ACTIVE_T, SHADOW_T = 0.5, 0.3
CANDIDATE = "cand-1"
API = "/api/v1"


# --------------------------------------------------------------------------- the world


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request, tmp_path_factory):
    """A migrated database for the module: a SQLite file, or a fresh PostgreSQL database."""
    with migrated_url(request.param, tmp_path_factory.mktemp("models-ui")) as url:
        try:
            yield url
        finally:
            db.dispose()


def make_artifact(root: Path, version: str) -> Path:
    """A copy of the shipped model whose model.json names ``version`` (the registry checks it)."""
    path = root / version
    if not path.exists():
        shutil.copytree(SHIPPED, path)
        meta = json.loads((path / "model.json").read_text())
        meta["version"] = version
        (path / "model.json").write_text(json.dumps(meta))
    return path


class World:
    """An app on a clean database: an admin, a reviewer, a bootstrapped active model and a candidate."""

    def __init__(self, app, tmp_path: Path) -> None:
        self.app = app
        self.tmp = tmp_path
        with app.app_context():
            s = db.session
            s.add_all([User(username=u, password_hash=hash_password(p), role="admin" if u == "admin" else "reviewer")
                       for u, p in PASSWORDS.items()])  # fmt: skip
            self.keys = {"client": new_api_key(), "admin": new_api_key()}
            for who, key in self.keys.items():
                s.add(ApiKey(name=f"{who}-key", prefix=key[:12], key_hash=hash_api_key(key), admin=who == "admin"))
            s.commit()
            self.active = registry.ensure_bootstrapped(s, app.extensions["sketchwatch_settings"]).version
            registry.register(s, version=CANDIDATE, artifact_uri=str(make_artifact(tmp_path, CANDIDATE)),
                              parent_version=self.active, created_by="trainer", threshold=SHADOW_T,
                              metrics={"auroc": 0.97, "reviewed": {"auroc": 0.91}})  # fmt: skip
            s.commit()

    def status(self, version: str) -> str:
        """A version's registry status."""
        with self.app.app_context():
            return db.session.scalar(select(ModelVersion.status).where(ModelVersion.version == version))

    def client(self, who: str | None):
        """A test client logged in as ``who`` (None: anonymous)."""
        c = self.app.test_client()
        if who is not None:
            page = c.get("/login").text
            r = c.post("/login", data={"username": who, "password": PASSWORDS[who], "csrf_token": csrf(page)})
            assert r.status_code == 302, r.text[:300]
        return c

    def headers(self, who: str) -> dict:
        """The Authorization header of the client or admin API key."""
        return {"Authorization": f"Bearer {self.keys[who]}"}


def csrf(page: str) -> str:
    """The CSRF token of a page."""
    m = CSRF_INPUT.search(page) or CSRF_META.search(page)
    assert m, "page has no CSRF token"
    return m.group(1)


def _clear() -> None:
    with db.session_scope() as s:
        for table in reversed(Base.metadata.sorted_tables):
            s.execute(table.delete())


@pytest.fixture
def world(database_url, tmp_path) -> World:
    """A fresh world on the module's database (every table emptied first)."""
    app = create_app({
        "env": "testing", "data_dir": tmp_path, "database_url": database_url,
        "broker_url": f"sqla+sqlite:///{tmp_path / 'broker.db'}", "secret_key": "models-" + "x" * 32,
        "ratelimit_enabled": False, "default_threshold": ACTIVE_T, "log_json": False, "log_level": "WARNING",
    })  # fmt: skip
    with app.app_context():
        _clear()
    return World(app, tmp_path)


# The comparison's sketches: (active score, shadow score, staff verdict). Flags follow each model's threshold.
PAIRS = [
    (0.90, 0.80, "anomaly"),
    (0.70, 0.20, "anomaly"),
    (0.40, 0.60, "anomaly"),
    (0.45, 0.35, "anomaly"),
    (0.60, 0.10, "cat"),
    (0.20, 0.40, "cat"),
    (0.10, 0.05, "cat"),
    (0.30, 0.25, "cat"),
    (0.80, 0.90, None),
    (0.30, 0.35, None),
    (0.55, 0.25, None),
    (0.05, 0.01, None),
]


def seed_pairs(world: World, pairs=PAIRS, version: str = CANDIDATE) -> list[int]:
    """Sketches scored by the active model with shadow scores of ``version``; their ids in order."""
    now = utcnow()
    with world.app.app_context():
        s = db.session
        rows = [Sketch(client="acme", source_format="simplified", drawing=SQUARE, status="scored", score=a,
                       flagged=a > ACTIVE_T, threshold=ACTIVE_T, model_version=world.active, scored_at=now,
                       attempts=1, verdict=v) for a, _sh, v in pairs]  # fmt: skip
        s.add_all(rows)
        s.flush()
        s.add_all([ShadowScore(sketch_id=r.id, model_version=version, score=sh, flagged=sh > SHADOW_T, scored_at=now)
                   for r, (_a, sh, _v) in zip(rows, pairs)])  # fmt: skip
        # An unrelated sketch without a shadow score: not part of the comparison.
        s.add(Sketch(client="acme", source_format="simplified", drawing=SQUARE, status="scored", score=0.99,
                     flagged=True, threshold=ACTIVE_T, model_version=world.active, scored_at=now, attempts=1))
        s.commit()
        return [r.id for r in rows]


def shadow_candidate(world: World) -> None:
    """Put the candidate in shadow through the registry."""
    with world.app.app_context():
        registry.set_shadow(db.session, CANDIDATE, "setup")
        db.session.commit()


# --------------------------------------------------------------------------- hand counts


def hand_auroc(pos: list[float], neg: list[float]) -> float:
    """The share of (anomaly, cat) pairs the score orders right, ties counting half."""
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in product(pos, neg))
    return wins / (len(pos) * len(neg))


def hand_numbers(which: int, threshold: float) -> dict:
    """AUROC, precision and recall of one model (0: active, 1: shadow) on the reviewed PAIRS, counted by hand."""
    reviewed = [(p[which], p[2] == "anomaly") for p in PAIRS if p[2] is not None]
    pos = [s for s, y in reviewed if y]
    neg = [s for s, y in reviewed if not y]
    tp = sum(1 for s, y in reviewed if y and s > threshold)
    flagged = sum(1 for s, _y in reviewed if s > threshold)
    return {"auroc": hand_auroc(pos, neg), "precision": tp / flagged, "recall": tp / len(pos), "flagged": flagged,
            "true_positives": tp}  # fmt: skip


def hand_histogram(values: list[float], bins: int) -> list[int]:
    """Counts in ``bins`` equal bins over the values' range, the last bin closed."""
    lo, hi = min(values), max(values)
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / width), bins - 1)] += 1
    return counts


# --------------------------------------------------------------------------- the page: roles and views


def test_reviewers_see_the_page_without_actions_and_anonymous_users_log_in(world):
    shadow_candidate(world)
    seed_pairs(world)
    anon = world.client(None)
    r = anon.get("/models/")
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    assert anon.post("/models/train").status_code == 302  # to the login page: nothing recorded
    rita = world.client("rita")
    page = rita.get("/models/")
    assert page.status_code == 200
    html = page.text
    for testid in ("models-table", "model-row", "training-progress", "shadow-compare"):
        assert f'data-testid="{testid}"' in html, testid
    assert f'data-version="{CANDIDATE}"' in html and f'data-version="{world.active}"' in html
    assert 'data-testid="train-from-reviews"' not in html and "promote-" not in html and 'data-testid="rollback"' not in html
    token = csrf(html)
    for url in ("/models/train", f"/models/{CANDIDATE}/promote", f"/models/{CANDIDATE}/shadow", "/models/rollback"):
        assert rita.post(url, data={"csrf_token": token, "confirm": "yes"}).status_code == 403, url
    for url in (f"/models/{CANDIDATE}/promote", f"/models/{CANDIDATE}/shadow", "/models/rollback"):
        assert rita.get(url).status_code == 403, url
    assert world.status(CANDIDATE) == "shadow" and world.status(world.active) == "active"
    # Reviewers may walk the disagreement queue.
    assert rita.get("/models/disagreements").status_code == 200


def test_admins_see_the_actions_of_each_version(world):
    html = world.client("admin").get("/models/").text
    # Nothing was active before the bootstrapped version: no Roll back yet.
    assert 'data-testid="train-from-reviews"' in html and 'data-testid="rollback"' not in html
    assert f'data-testid="promote-{CANDIDATE}"' in html and f'data-testid="promote-{world.active}"' not in html
    row = re.search(rf'<tr data-testid="model-row" data-version="{CANDIDATE}".*?</tr>', html, re.S).group(0)
    assert "trainer" in row and world.active in row and "0.3" in row and "reviewed.auroc" in row and "0.91" in row


def test_promote_needs_the_csrf_token_and_the_confirmation(world):
    admin = world.client("admin")
    token = csrf(admin.get("/models/").text)
    # No token: refused, nothing changed.
    assert admin.post(f"/models/{CANDIDATE}/promote", data={"confirm": "yes"}).status_code == 400
    assert world.status(CANDIDATE) == "candidate"
    # A token but no confirmation: the confirmation page, nothing changed.
    r = admin.post(f"/models/{CANDIDATE}/promote", data={"csrf_token": token})
    assert r.status_code == 200 and 'data-testid="confirm-dialog"' in r.text and 'name="confirm" value="yes"' in r.text
    assert world.status(CANDIDATE) == "candidate"
    page = admin.get(f"/models/{CANDIDATE}/promote")
    assert page.status_code == 200 and f"Promote {CANDIDATE}" in page.text and "0.3" in page.text
    assert world.status(CANDIDATE) == "candidate"
    # Confirmed: active, the old one retired, its threshold applied, a re-scoring job with progress on the page.
    r = admin.post(f"/models/{CANDIDATE}/promote", data={"csrf_token": csrf(page.text), "confirm": "yes", "rescore": "yes"})
    assert r.status_code == 302
    assert world.status(CANDIDATE) == "active" and world.status(world.active) == "retired"
    html = admin.get("/models/").text
    assert 'data-testid="rescore-progress"' in html and f"{CANDIDATE} is now the active model" in html
    assert 'data-testid="rollback"' in html
    with world.app.app_context():
        assert db.session.scalar(select(func.count()).select_from(RescoreJob)) == 1
        from service.core.thresholds import current_threshold

        assert current_threshold(db.session, world.app.extensions["sketchwatch_settings"]) == SHADOW_T
    # Roll back, confirmed, without re-scoring: the bootstrapped version and its threshold are back.
    assert admin.post("/models/rollback", data={"csrf_token": csrf(html)}).status_code == 200  # confirmation page
    assert world.status(CANDIDATE) == "active"
    r = admin.post("/models/rollback", data={"csrf_token": csrf(html), "confirm": "yes"})
    assert r.status_code == 302 and world.status(world.active) == "active" and world.status(CANDIDATE) == "retired"
    with world.app.app_context():
        assert db.session.scalar(select(func.count()).select_from(RescoreJob)) == 1
    assert "Rolled back" in admin.get("/models/").text


def test_invalid_transitions_and_unknown_versions(world):
    admin = world.client("admin")
    token = csrf(admin.get("/models/").text)
    assert admin.get("/models/nope/promote").status_code == 404
    assert admin.post("/models/nope/promote", data={"csrf_token": token, "confirm": "yes"}).status_code == 404
    r = admin.post(f"/models/{world.active}/promote", data={"csrf_token": token, "confirm": "yes"}, follow_redirects=True)
    assert r.status_code == 200 and "Nothing changed" in r.text and "already active" in r.text
    r = admin.post("/models/rollback", data={"csrf_token": token, "confirm": "yes"}, follow_redirects=True)
    assert "Nothing changed" in r.text and "nothing to roll back" in r.text
    assert world.status(world.active) == "active"


def test_shadow_with_confirmation_then_the_comparison_matches_a_hand_count(world):
    admin = world.client("admin")
    page = admin.get(f"/models/{CANDIDATE}/shadow")
    assert page.status_code == 200 and "flags do not change" in page.text
    assert admin.post(f"/models/{CANDIDATE}/shadow", data={"csrf_token": csrf(page.text)}).status_code == 200
    assert world.status(CANDIDATE) == "candidate"
    r = admin.post(f"/models/{CANDIDATE}/shadow", data={"csrf_token": csrf(page.text), "confirm": "yes"})
    assert r.status_code == 302 and world.status(CANDIDATE) == "shadow"
    seed_pairs(world)
    html = admin.get("/models/?bins=4").text
    compare = re.search(r'data-testid="shadow-compare".*?</section>', html, re.S).group(0)
    assert f'data-testid="scored-by-both">{len(PAIRS)}<' in compare
    for which, name, t in ((0, "active", ACTIVE_T), (1, "shadow", SHADOW_T)):
        expected = hand_numbers(which, t)
        for key in ("auroc", "precision", "recall"):
            shown = float(re.search(rf'data-testid="{name}-{key}" data-value="([^"]+)"', compare).group(1))
            assert shown == pytest.approx(expected[key]), (name, key)
        counts = [int(c) for c in re.findall(r'data-count="(\d+)"', compare.split(f'data-testid="hist-{name}"')[1].split("</svg>")[0])]
        assert counts == hand_histogram([p[which] for p in PAIRS], 4), name
    disagreeing = sum(1 for a, sh, _v in PAIRS if (a > ACTIVE_T) != (sh > SHADOW_T))
    assert f'data-testid="disagreement-count">{disagreeing}<' in compare
    # The API gives the same numbers.
    r = world.app.test_client().get(f"{API}/models/compare", query_string={"bins": 4}, headers=world.headers("admin"))
    assert r.status_code == 200, r.json
    out = r.json["comparison"]
    assert r.json["shadow_version"] == CANDIDATE and r.json["active_version"] == world.active
    assert out["reviewed"] == 8 and out["anomalies"] == 4 and out["disagreements"] == disagreeing
    for which, name, t in ((0, "active", ACTIVE_T), (1, "shadow", SHADOW_T)):
        expected = hand_numbers(which, t)
        assert out["metrics"][name] == pytest.approx(expected), name
        assert out["histograms"][name]["counts"] == hand_histogram([p[which] for p in PAIRS], 4)


def test_the_disagreement_queue_pages_through_every_disagreement_once(world):
    shadow_candidate(world)
    # 23 disagreements (alternating which model flags) among 40 pairs.
    pairs = [((0.9, 0.1, None) if i % 2 else (0.1, 0.9, None)) if i < 23 else (0.9, 0.9, None) for i in range(40)]
    ids = seed_pairs(world, pairs)
    expected = sorted(ids[:23], reverse=True)
    rita = world.client("rita")
    url, seen, pages = "/models/disagreements?per_page=7", [], 0
    while url:
        r = rita.get(url)
        assert r.status_code == 200
        page_ids = [int(i) for i in re.findall(r'data-testid="flagged-item" data-id="(\d+)"', r.text)]
        assert page_ids and len(page_ids) <= 7
        assert 'data-testid="disagreements"' in r.text and 'data-testid="review-confirm"' in r.text
        seen += page_ids
        pages += 1
        nxt = re.search(r'<a rel="next" href="([^"]+)"', r.text)
        url = nxt.group(1).replace("&amp;", "&") if nxt else None
    assert seen == expected and pages == 4
    # Reviewable like flagged ones: the card's verdict button posts to the review endpoint and comes back here.
    first = rita.get("/models/disagreements?per_page=7")
    r = rita.post(f"/sketches/{expected[0]}/review", data={"verdict": "cat", "csrf_token": csrf(first.text),
                                                          "next": "/models/disagreements?per_page=7"})  # fmt: skip
    assert r.status_code == 302 and r.headers["Location"].endswith("/models/disagreements?per_page=7")
    with world.app.app_context():
        assert db.session.get(Sketch, expected[0]).verdict == "cat"
    # A bad cursor is a 400 page, not a crash.
    assert rita.get("/models/disagreements?after=%%%").status_code == 400


def test_train_from_reviews_without_reviews_says_why_and_queues_nothing(world):
    from service.core.schema import TrainingRun

    admin = world.client("admin")
    r = admin.post("/models/train", data={"csrf_token": csrf(admin.get("/models/").text)}, follow_redirects=True)
    assert r.status_code == 200
    message = re.search(r'<p class="flash flash-error"[^>]*>(.*?)</p>', r.text, re.S)
    assert message and "Not trained" in message.group(1) and "review" in message.group(1).lower()
    with world.app.app_context():
        assert db.session.scalar(select(func.count()).select_from(TrainingRun)) == 0
    r = world.app.test_client().post(f"{API}/models/train", headers=world.headers("admin"))
    assert r.status_code == 409 and r.json["error"]["field"] == "reviews" and r.json["error"]["message"]
    with world.app.app_context():
        assert db.session.scalar(select(func.count()).select_from(TrainingRun)) == 0


# --------------------------------------------------------------------------- the API


OPERATIONS = [
    ("GET", "/models"),
    ("POST", "/models/train"),
    ("GET", "/models/training/1"),
    ("POST", f"/models/{CANDIDATE}/shadow"),
    ("POST", f"/models/{CANDIDATE}/promote"),
    ("POST", "/models/rollback"),
    ("GET", "/models/compare"),
]


def test_the_api_is_for_admin_keys_only(world):
    api = world.app.test_client()
    before = [(v.version, v.status) for v in _versions(world)]
    for method, path in OPERATIONS:
        r = api.open(API + path, method=method)
        assert r.status_code == 401 and r.json["error"]["field"] == "Authorization", (method, path)
        r = api.open(API + path, method=method, headers=world.headers("client"))
        assert r.status_code == 403 and r.json["error"]["message"], (method, path, r.status_code)
    assert [(v.version, v.status) for v in _versions(world)] == before
    # A dashboard login is no API key.
    assert world.client("admin").get(f"{API}/models").status_code == 401


def _versions(world: World) -> list[ModelVersion]:
    with world.app.app_context():
        rows = list(db.session.scalars(select(ModelVersion).order_by(ModelVersion.id)))
        db.session.expunge_all()
        return rows


def test_the_api_lists_shadows_promotes_and_rolls_back(world):
    api, h = world.app.test_client(), world.headers("admin")
    r = api.get(f"{API}/models", headers=h)
    assert r.status_code == 200 and r.json["active"] == world.active and r.json["shadow"] is None
    assert [v["version"] for v in r.json["items"]] == [CANDIDATE, world.active]
    assert r.json["items"][0]["metrics"]["reviewed"]["auroc"] == 0.91
    assert api.post(f"{API}/models/nope/promote", headers=h).status_code == 404
    assert api.post(f"{API}/models/nope/shadow", headers=h).json["error"]["field"] == "version"
    assert api.get(f"{API}/models/training/999", headers=h).status_code == 404
    assert api.get(f"{API}/models/training/{2**63 - 2}", headers=h).status_code == 404  # past the id column's range
    r = api.post(f"{API}/models/{world.active}/promote", headers=h)
    assert r.status_code == 409 and "already active" in r.json["error"]["message"]
    r = api.post(f"{API}/models/rollback", headers=h)
    assert r.status_code == 409 and "roll back" in r.json["error"]["message"]
    assert api.get(f"{API}/models/compare", headers=h).json == {"active_version": world.active, "shadow_version": None,
                                                              "comparison": None}  # fmt: skip
    r = api.post(f"{API}/models/{CANDIDATE}/shadow", headers=h)
    assert r.status_code == 200 and r.json["status"] == "shadow"
    assert api.get(f"{API}/models/compare", query_string={"bins": 0}, headers=h).json["error"]["field"] == "bins"
    assert api.get(f"{API}/models/compare", query_string={"bogus": 1}, headers=h).json["error"]["field"] == "bogus"
    r = api.post(f"{API}/models/{CANDIDATE}/promote", query_string={"rescore": "no"}, headers=h)
    assert r.status_code == 200 and r.json["status"] == "active" and r.json["rescore"] is None
    assert r.json["promoted_by"] == "api:admin-key"
    r = api.post(f"{API}/models/rollback", query_string={"rescore": "true"}, headers=h)
    assert r.status_code == 200 and r.json["version"] == world.active and r.json["rescore"]["model_version"] == world.active
    assert r.json["rescore"]["status"] == "queued" and r.json["rescore"]["total"] == 0
    assert {v.version: v.status for v in _versions(world)} == {world.active: "active", CANDIDATE: "retired"}


def test_train_from_reviews_queues_a_run_whose_progress_the_page_and_the_api_show(world):
    from service.core import training_runs

    now = utcnow()
    with world.app.app_context():
        db.session.add_all([Sketch(client="acme", source_format="simplified", drawing=SQUARE, status="scored",
                                   score=0.1 + i / 100, flagged=False, threshold=ACTIVE_T, model_version=world.active,
                                   scored_at=now, attempts=1, verdict="anomaly" if i % 4 == 0 else "cat",
                                   input_bitmap=bytes(784)) for i in range(20)])  # fmt: skip
        db.session.commit()
    admin = world.client("admin")
    r = admin.post("/models/train", data={"csrf_token": csrf(admin.get("/models/").text)}, follow_redirects=True)
    assert r.status_code == 200 and "queued" in r.text
    with world.app.app_context():
        run = training_runs.latest(db.session)
        assert run.status == "queued" and run.requested_by == "admin"
        run_id = run.id
    box = re.search(r'data-testid="training-progress".*?</section>', r.text, re.S).group(0)
    assert f'data-testid="training-run-id">{run_id}<' in box and 'data-status="queued"' in r.text
    # The training worker's progress reports show on the page, in its JSON and in the API.
    with world.app.app_context():
        attempt = training_runs.begin(db.session, run_id, max_attempts=2)
        training_runs.record_progress(db.session, run_id, attempt, epoch=3, epochs=12, loss=0.01234, eta_s=42.0)
        db.session.commit()
    box = re.search(r'data-testid="training-progress".*?</section>', admin.get("/models/").text, re.S).group(0)
    assert 'data-testid="training-epoch">3<' in box and "of 12" in box and "0.01234" in box and "42 s" in box
    progress = admin.get("/models/progress.json").json
    assert progress["training"]["epoch"] == 3 and progress["training"]["status"] == "running"
    api, h = world.app.test_client(), world.headers("admin")
    r = api.post(f"{API}/models/train", headers=h)
    assert r.status_code == 202 and r.json["status"] == "queued" and r.json["requested_by"] == "api:admin-key"
    assert r.headers["Location"].endswith(f"/api/v1/models/training/{r.json['id']}")
    got = api.get(f"{API}/models/training/{run_id}", headers=h)
    assert got.status_code == 200 and got.json["epoch"] == 3 and got.json["loss"] == pytest.approx(0.01234)
