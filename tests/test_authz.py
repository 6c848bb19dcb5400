"""Tenant isolation of the API: an authorization matrix generated from the OpenAPI document, verdicts that
cannot steer the shared threshold, admin keys made with the CLI, and the migration behind them.

The matrix covers every operation the served OpenAPI document lists, each called by every principal:
no key, a revoked key, another client's key, the owner's key, an admin key, and a logged-in dashboard
admin without a key. Each cell has its expected status and, where it matters, a check that the answer
holds only what the caller may see and that nothing changed that the caller may not change. An
operation added to the API without a matrix entry fails ``test_every_documented_operation_has_a_matrix_entry``
(and its own matrix cells).

Runs in-process (CSRF on) on SQLite and on a fresh PostgreSQL database.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Callable

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, func, select, text
from stack_fixtures import fresh_pg_database, migrated_url

from service import stats
from service.api.openapi import build_document
from service.app import create_app
from service.core.migrate import alembic_config, upgrade
from service.core.schema import ApiKey, Review, Sketch, User, utcnow
from service.core.security import hash_api_key, hash_password, new_api_key
from service.core.settings import get_settings
from service.extensions import db

SQUARE = [[[0, 255, 255, 0, 0], [0, 0, 255, 255, 0]]]
API = "/api/v1"
PRINCIPALS = ("none", "revoked", "other", "own", "admin", "session")
ADMIN_USER = ("ada-admin", "ada-password-123")
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')


# --------------------------------------------------------------------------- the world the matrix runs in


@dataclass
class World:
    """One database with two clients' sketches, four API keys and a logged-in dashboard admin."""

    app: object
    url: str
    keys: dict[str, str]  # principal -> API key
    names: dict[str, str]  # principal -> client name
    own_ids: list[int]
    other_ids: list[int]
    anon: object = None
    staff: object = None

    def client_for(self, who: str):
        """The Flask test client a principal calls with (the session one carries the login cookie)."""
        return self.staff if who == "session" else self.anon

    def headers(self, who: str) -> dict:
        """Authorization header of a principal (none for no key and the dashboard session)."""
        key = self.keys.get(who)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def snapshot(self) -> dict:
        """What an API call could change: every sketch's verdicts, the reviews, the sketch count per client."""
        with self.app.app_context(), db.session_scope() as s:
            sketches = {r.id: (r.verdict, r.client_verdict) for r in s.execute(select(Sketch.id, Sketch.verdict, Sketch.client_verdict))}
            reviews = [tuple(r) for r in s.execute(select(Review.sketch_id, Review.reviewer, Review.by_client).order_by(Review.id))]
            per_client = dict(s.execute(select(Sketch.client, func.count()).group_by(Sketch.client)).all())
        return {"sketches": sketches, "reviews": reviews, "per_client": per_client}


def _seed(app, url: str) -> World:
    suffix = uuid.uuid4().hex[:8]
    names = {"own": f"acme-{suffix}", "other": f"globex-{suffix}", "revoked": f"gone-{suffix}", "admin": f"ops-{suffix}"}
    keys = {who: new_api_key() for who in names}
    with app.app_context(), db.session_scope() as s:
        if s.scalar(select(User).where(User.username == ADMIN_USER[0])) is None:
            s.add(User(username=ADMIN_USER[0], password_hash=hash_password(ADMIN_USER[1]), role="admin"))
        for who, name in names.items():
            s.add(ApiKey(name=name, prefix=keys[who][:12], key_hash=hash_api_key(keys[who]),
                         revoked_at=utcnow() if who == "revoked" else None, admin=who == "admin"))
        ids = {}
        for who, scores in (("own", [0.2, 0.6, 0.9]), ("other", [0.3, 0.95])):
            rows = [Sketch(client=names[who], source_format="simplified", drawing=SQUARE, status="scored", score=sc,
                           flagged=sc > 0.5, threshold=0.5, model_version="m-test", scored_at=utcnow(), attempts=1)
                    for sc in scores]
            s.add_all(rows)
            s.flush()
            ids[who] = [r.id for r in rows]
    world = World(app=app, url=url, keys=keys, names=names, own_ids=ids["own"], other_ids=ids["other"])
    world.anon = app.test_client()
    world.staff = app.test_client()
    page = world.staff.get("/login").get_data(as_text=True)
    token = CSRF_META.search(page).group(1)
    r = world.staff.post("/login", data={"username": ADMIN_USER[0], "password": ADMIN_USER[1], "csrf_token": token})
    assert r.status_code == 302, r.get_data(as_text=True)[:300]
    return world


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request, tmp_path_factory):
    """A migrated database: a temp SQLite file, or a fresh PostgreSQL database dropped afterwards."""
    with migrated_url(request.param, tmp_path_factory.mktemp("authz")) as url:
        try:
            yield url
        finally:
            db.dispose()


def make_app(database_url: str, data_dir):
    """A testing app (CSRF on, no rate limit) on ``database_url``."""
    return create_app({
        "env": "testing",
        "data_dir": data_dir,
        "database_url": database_url,
        "broker_url": f"sqla+sqlite:///{data_dir / 'broker.db'}",
        "secret_key": "authz-" + "x" * 32,
        "ratelimit_enabled": False,
        "default_threshold": 0.5,
        "log_json": False,
        "log_level": "WARNING",
    })


@pytest.fixture(scope="module")
def seeded(database_url, tmp_path_factory) -> World:
    """The seeded world on this module's database."""
    app = make_app(database_url, tmp_path_factory.mktemp("authz-data"))
    return _seed(app, database_url)


@pytest.fixture
def world(seeded) -> World:
    """The seeded world, its database bound (the db holder is process-global; another test may have moved it)."""
    db.configure(seeded.url)
    return seeded


# --------------------------------------------------------------------------- the matrix


@dataclass
class Case:
    """One way of calling an operation, with the status each principal must get."""

    name: str
    expect: dict[str, int]
    query: dict = field(default_factory=dict)
    body: Callable[[World, str], dict] | None = None
    check: Callable[[World, str, object, dict, dict], None] | None = None


def _ids(resp) -> set[int]:
    return {item["id"] for item in resp.json["items"]}


def _check_list(world: World, who: str, resp, before: dict, after: dict) -> None:
    if resp.status_code != 200:
        return
    clients = {item["client"] for item in resp.json["items"]}
    if who in ("own", "other"):
        assert clients == {world.names[who]}, (who, clients)  # only its own, never the other's
    else:
        assert set(world.own_ids) | set(world.other_ids) <= _ids(resp)


def _check_list_of_own(world: World, who: str, resp, before: dict, after: dict) -> None:
    if resp.status_code == 200:
        assert {item["client"] for item in resp.json["items"]} == {world.names["own"]}
        assert set(world.own_ids) <= _ids(resp)


def _check_get(world: World, who: str, resp, before: dict, after: dict) -> None:
    if resp.status_code == 200:
        assert resp.json["id"] == world.own_ids[0] and resp.json["client"] == world.names["own"]
    elif resp.status_code == 404:
        assert set(resp.json) == {"error"}  # nothing of the sketch leaks


def _check_review(world: World, who: str, resp, before: dict, after: dict) -> None:
    target = world.own_ids[1]
    if resp.status_code != 201:
        assert after == before, (who, "a refused review changed something")
        return
    added = after["reviews"][len(before["reviews"]):]
    assert [(sid, by_client) for sid, _r, by_client in added] == [(target, who == "own")]
    verdict, client_verdict = after["sketches"][target]
    if who == "own":  # the client's own label: never the staff verdict that feeds the threshold
        assert client_verdict == "cat" and verdict == before["sketches"][target][0]
        assert resp.json["kind"] == "client"
    else:
        assert verdict == "cat" and client_verdict == before["sketches"][target][1] and resp.json["kind"] == "staff"
    others = {k: v for k, v in after["sketches"].items() if k != target}
    assert others == {k: v for k, v in before["sketches"].items() if k != target}


def _check_histogram(world: World, who: str, resp, before: dict, after: dict) -> None:
    if resp.status_code != 200:
        return
    per_client = after["per_client"]
    expected = per_client.get(world.names[who], 0) if who in ("own", "other") else sum(per_client.values())
    assert resp.json["counts"]["total"] == expected, (who, resp.json["counts"], per_client)
    assert resp.json["histogram"]["total"] == resp.json["counts"]["scored"]


def _check_histogram_of_own(world: World, who: str, resp, before: dict, after: dict) -> None:
    if resp.status_code == 200:
        assert resp.json["counts"]["total"] == after["per_client"][world.names["own"]]
        assert resp.json["filters"]["client"] == world.names["own"]


def _series_total(resp) -> int:
    return sum(point["submitted"] for point in resp.json["points"])


def _check_timeseries(world: World, who: str, resp, before: dict, after: dict) -> None:
    if resp.status_code != 200:
        return
    per_client = after["per_client"]
    expected = per_client.get(world.names[who], 0) if who in ("own", "other") else sum(per_client.values())
    assert _series_total(resp) == expected, (who, _series_total(resp), per_client)
    assert resp.json["client"] == (world.names[who] if who in ("own", "other") else None)


def _check_timeseries_of_own(world: World, who: str, resp, before: dict, after: dict) -> None:
    if resp.status_code == 200:
        assert _series_total(resp) == after["per_client"][world.names["own"]]
        assert resp.json["client"] == world.names["own"]


def _check_submit(world: World, who: str, resp, before: dict, after: dict) -> None:
    if resp.status_code == 202:
        name = world.names[who]
        assert after["per_client"].get(name, 0) == before["per_client"].get(name, 0) + 1
        assert sum(after["per_client"].values()) == sum(before["per_client"].values()) + 1
    else:
        assert after == before


def _submit_body(world: World, who: str) -> dict:
    return {"json": {"drawing": SQUARE, "client_ref": f"matrix-{uuid.uuid4().hex}"}}


def _own_client(world: World) -> str:
    return world.names["own"]


def _check_registry_untouched(world: World, who: str, resp, before: dict, after: dict) -> None:
    from service.core.schema import ModelEvent, ModelVersion, TrainingRun

    assert after == before
    with world.app.app_context(), db.session_scope() as s:
        # An admin's call may register the configured model as active (as the CLI does), nothing more.
        assert set(s.scalars(select(ModelVersion.status))) <= {"active"}, who
        assert set(s.scalars(select(ModelEvent.action))) <= {"bootstrap"}, who
        assert s.scalar(select(func.count()).select_from(TrainingRun)) == 0, who


def S(none, revoked, other, own, admin, session) -> dict[str, int]:
    """Expected statuses in PRINCIPALS order."""
    return dict(zip(PRINCIPALS, (none, revoked, other, own, admin, session)))


# operationId -> cases. Path parameters ({id}) are always one of the "own" client's sketches.
MATRIX: dict[str, list[Case]] = {
    "submitSketches": [Case("json", S(401, 401, 202, 202, 202, 401), body=_submit_body, check=_check_submit)],
    "listSketches": [
        Case("all", S(401, 401, 200, 200, 200, 401), check=_check_list),
        Case("client=owner", S(401, 401, 403, 200, 200, 401), query={"client": _own_client}, check=_check_list_of_own),
    ],
    "getSketch": [Case("owner's sketch", S(401, 401, 404, 200, 200, 401), check=_check_get)],
    "reviewSketch": [
        Case("owner's sketch", S(401, 401, 404, 201, 201, 401),
             body=lambda w, who: {"json": {"verdict": "cat"}}, check=_check_review),
    ],
    "statsHistogram": [
        Case("all", S(401, 401, 200, 200, 200, 200), check=_check_histogram),
        Case("client=owner", S(401, 401, 403, 200, 200, 200), query={"client": _own_client}, check=_check_histogram_of_own),
    ],
    "statsTimeseries": [
        Case("all", S(401, 401, 200, 200, 200, 200), query={"bucket": "day"}, check=_check_timeseries),
        Case("client=owner", S(401, 401, 403, 200, 200, 200), query={"bucket": "day", "client": _own_client},
             check=_check_timeseries_of_own),
    ],
    "openapi": [Case("public", S(200, 200, 200, 200, 200, 200))],
    # The model registry (issue 16): admin keys only; a client key gets a 403 and changes nothing. The admin's
    # calls here are all refusals (unknown version or run, nothing to roll back, too few reviews) but the reads.
    "listModels": [Case("registry", S(401, 401, 403, 403, 200, 401), check=_check_registry_untouched)],
    "compareModels": [Case("no shadow", S(401, 401, 403, 403, 200, 401), check=_check_registry_untouched)],
    "getTrainingRun": [Case("unknown run", S(401, 401, 403, 403, 404, 401), check=_check_registry_untouched)],
    "trainModel": [Case("too few reviews", S(401, 401, 403, 403, 409, 401), check=_check_registry_untouched)],
    "shadowModel": [Case("unknown version", S(401, 401, 403, 403, 404, 401), check=_check_registry_untouched)],
    "promoteModel": [Case("unknown version", S(401, 401, 403, 403, 404, 401), check=_check_registry_untouched)],
    "rollbackModel": [Case("nothing to roll back", S(401, 401, 403, 403, 409, 401), check=_check_registry_untouched)],
}
# Path parameters other than a sketch's {id}: what the matrix puts there, and the route variable they are.
PATH_VALUES = {"getTrainingRun": {"id": "999999"}, "shadowModel": {"version": "no-such-version"},
               "promoteModel": {"version": "no-such-version"}}
PATH_RULES = {"/models/training/{id}": {"id": "<int:run_id>"}}


def _documented_operations() -> dict[str, tuple[str, str, dict]]:
    """operationId -> (method, path, operation) of the OpenAPI document the app serves."""
    doc = build_document(get_settings({"env": "testing"}))
    return {op["operationId"]: (method.upper(), path, op) for path, ops in doc["paths"].items() for method, op in ops.items()}


DOCUMENTED = _documented_operations()
CELLS = [(op_id, who) for op_id in sorted(DOCUMENTED) for who in PRINCIPALS]


def test_every_documented_operation_has_a_matrix_entry(world):
    served = world.anon.get(f"{API}/openapi.json").json
    served_ops = {op["operationId"] for ops in served["paths"].values() for op in ops.values()}
    assert served_ops == set(DOCUMENTED), "the served document differs from the one the matrix was built from"
    missing = sorted(served_ops - set(MATRIX))
    assert not missing, f"operations without an authorization matrix entry: {missing}"
    assert not sorted(set(MATRIX) - served_ops), "matrix entries for operations the API no longer has"
    # And every documented route is an operation: nothing under /api/v1 escapes the document.
    routes = {(m, r.rule) for r in world.app.url_map.iter_rules() if r.rule.startswith(API) for m in r.methods - {"HEAD", "OPTIONS"}}
    documented = {(m, API + re.sub(r"\{(\w+)\}", lambda v: PATH_RULES.get(p, {}).get(v.group(1), "<int:sketch_id>" if v.group(1) == "id" else f"<{v.group(1)}>"), p))
                  for m, p, _op in DOCUMENTED.values()}
    assert routes == documented, (routes ^ documented)


def test_matrix_statuses_are_documented_responses():
    for op_id, cases in MATRIX.items():
        _method, _path, op = DOCUMENTED[op_id]
        for case in cases:
            for who, status in case.expect.items():
                assert str(status) in op["responses"], (op_id, case.name, who, status, sorted(op["responses"]))
            assert set(case.expect) == set(PRINCIPALS), (op_id, case.name)


@pytest.mark.parametrize("op_id, who", CELLS, ids=[f"{op}-{who}" for op, who in CELLS])
def test_authorization_matrix(world, op_id, who):
    assert op_id in MATRIX, f"{op_id} is in the OpenAPI document but has no authorization matrix entry"
    method, path, _op = DOCUMENTED[op_id]
    values = PATH_VALUES.get(op_id, {"id": str(world.own_ids[0] if op_id != "reviewSketch" else world.own_ids[1])})
    url = API + re.sub(r"\{(\w+)\}", lambda v: values[v.group(1)], path)
    for case in MATRIX[op_id]:
        query = {k: (v(world) if callable(v) else v) for k, v in case.query.items()}
        kwargs = case.body(world, who) if case.body else {}
        before = world.snapshot()
        resp = world.client_for(who).open(url, method=method, query_string=query, headers=world.headers(who), **kwargs)
        after = world.snapshot()
        assert resp.status_code == case.expect[who], (op_id, case.name, who, resp.status_code, resp.get_data(as_text=True)[:300])
        if resp.status_code >= 400:
            assert resp.is_json and resp.json["error"]["message"], (op_id, case.name, who)
        if method == "GET":
            assert after == before, (op_id, case.name, who, "a read changed the database")
        if case.check:
            case.check(world, who, resp, before, after)


# --------------------------------------------------------------------------- verdicts and the shared threshold


def test_client_verdicts_do_not_steer_the_threshold_suggestion(world):
    """A client labelling sketches through the API moves neither the F1 suggestion nor precision/recall."""
    app, anon = world.app, world.anon
    with app.app_context():
        before = (stats.f1_optimal_threshold(db.session), stats.preview(db.session, 0.5).to_dict())
    for sid in world.own_ids:
        r = anon.post(f"{API}/sketches/{sid}/review", json={"verdict": "anomaly"}, headers=world.headers("own"))
        assert r.status_code == 201 and r.json["kind"] == "client"
        assert anon.get(f"{API}/sketches/{sid}", headers=world.headers("own")).json["client_verdict"] == "anomaly"
    with app.app_context():
        after = (stats.f1_optimal_threshold(db.session), stats.preview(db.session, 0.5).to_dict())
    assert after == before
    # The dashboard shows the label as the client's, apart from the staff verdict.
    detail = world.staff.get(f"/sketches/{world.own_ids[0]}").get_data(as_text=True)
    assert "the client&#39;s own label" in detail or "the client's own label" in detail
    # Staff verdicts (an admin key) do count.
    for sid, verdict in zip(world.own_ids + world.other_ids, ["cat", "anomaly", "anomaly", "cat", "anomaly"]):
        r = anon.post(f"{API}/sketches/{sid}/review", json={"verdict": verdict}, headers=world.headers("admin"))
        assert r.status_code == 201 and r.json["kind"] == "staff"
    with app.app_context():
        staff = stats.preview(db.session, 0.5)
        best = stats.f1_optimal_threshold(db.session)
    assert staff.reviewed >= 5 and best is not None


def test_an_api_review_of_another_clients_sketch_changes_nothing(world):
    target = world.other_ids[0]
    before = world.snapshot()
    r = world.anon.post(f"{API}/sketches/{target}/review", json={"verdict": "anomaly"}, headers=world.headers("own"))
    assert r.status_code == 404 and r.json["error"]["message"]
    assert world.snapshot() == before
    r = world.anon.get(f"{API}/sketches/{target}", headers=world.headers("own"))
    assert r.status_code == 404
    with world.app.app_context(), db.session_scope() as s:
        assert not s.scalar(select(func.count()).select_from(Review).where(Review.reviewer == f"api:{world.names['own']}", Review.sketch_id == target))


def test_client_filters_with_nul_characters_are_a_400(world):
    for who in ("admin", "session"):
        for path in ("/stats/histogram", "/stats/timeseries", "/sketches"):
            if path == "/sketches" and who == "session":
                continue
            r = world.client_for(who).get(f"{API}{path}", query_string={"client": "a\x00b"}, headers=world.headers(who))
            assert r.status_code == 400 and r.json["error"]["field"] == "client", (who, path, r.status_code)


def test_a_client_histogram_is_its_own_numpy_histogram(world):
    import numpy as np

    with world.app.app_context(), db.session_scope() as s:
        scores = np.array(list(s.scalars(select(Sketch.score).where(Sketch.client == world.names["other"], Sketch.score.is_not(None)))))
    r = world.anon.get(f"{API}/stats/histogram", query_string={"bins": 7}, headers=world.headers("other"))
    expected, edges = np.histogram(scores, bins=7, range=(scores.min(), scores.max()))
    assert r.json["histogram"]["counts"] == expected.tolist() and r.json["histogram"]["edges"] == edges.tolist()
    assert r.json["counts"]["flagged"] == int((scores > 0.5).sum()) and r.json["filters"]["client"] == world.names["other"]


# --------------------------------------------------------------------------- admin keys from the CLI


def test_cli_creates_an_admin_key_that_sees_every_client(tmp_path, monkeypatch):
    from service.cli import main

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    for name, value in {"SKETCHWATCH_DATABASE_URL": url, "SKETCHWATCH_DATA_DIR": str(tmp_path),
                        "SKETCHWATCH_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
                        "SKETCHWATCH_LOG_JSON": "false"}.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade"], catch_exceptions=False).exit_code == 0
    admin = runner.invoke(main, ["apikeys", "create", "--name", "ops", "--admin"], catch_exceptions=False)
    plain = runner.invoke(main, ["apikeys", "create", "--name", "shop"], catch_exceptions=False)
    assert admin.exit_code == 0 and plain.exit_code == 0, admin.output + plain.output
    assert "admin key" in admin.stderr
    listing = runner.invoke(main, ["apikeys", "list"], catch_exceptions=False).output
    assert re.search(r"^ops\t.*\tadmin$", listing, re.M) and not re.search(r"^shop\t.*admin", listing, re.M)
    app = make_app(url, tmp_path)
    try:
        api = app.test_client()
        ops, shop = ({"Authorization": f"Bearer {r.stdout.strip()}"} for r in (admin, plain))
        sid = api.post(f"{API}/sketches", json={"drawing": SQUARE}, headers=shop).json["id"]
        assert api.get(f"{API}/sketches/{sid}", headers=ops).status_code == 200
        assert api.get(f"{API}/sketches", query_string={"client": "shop"}, headers=ops).json["items"][0]["id"] == sid
        assert api.get(f"{API}/sketches/{sid}", headers=shop).status_code == 200
        other = api.post(f"{API}/sketches", json={"drawing": SQUARE}, headers=ops).json["id"]
        assert api.get(f"{API}/sketches/{other}", headers=shop).status_code == 404
    finally:
        db.dispose()


# --------------------------------------------------------------------------- the migration


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_turns_api_verdicts_into_client_labels(backend, tmp_path):
    """Before 0004 an API verdict (even on another client's sketch) became the sketch's verdict."""
    from alembic import command

    def check(url: str) -> None:
        upgrade(url, "0003")
        engine = create_engine(url)
        try:
            with engine.begin() as c:
                c.execute(text(
                    "INSERT INTO sketches (id, client, source_format, status, attempts, submitted_at) VALUES "
                    "(1, 'a', 'simplified', 'scored', 0, CURRENT_TIMESTAMP), (2, 'b', 'simplified', 'scored', 0, CURRENT_TIMESTAMP), "
                    "(3, 'a', 'simplified', 'scored', 0, CURRENT_TIMESTAMP)"))
                c.execute(text(
                    "INSERT INTO reviews (sketch_id, verdict, reviewer, created_at) VALUES "
                    "(1, 'anomaly', 'rita', CURRENT_TIMESTAMP), (1, 'cat', 'api:a', CURRENT_TIMESTAMP), "
                    "(2, 'cat', 'api:a', CURRENT_TIMESTAMP), (3, 'cat', 'rita', CURRENT_TIMESTAMP)"))
                c.execute(text("UPDATE sketches SET verdict = 'cat'"))
            upgrade(url)
            with engine.connect() as c:
                rows = c.execute(text("SELECT id, verdict, client_verdict FROM sketches ORDER BY id")).all()
                flags = c.execute(text("SELECT reviewer, by_client FROM reviews ORDER BY id")).all()
            # Staff verdicts alone make ``verdict``; the owner's API verdict is its label; a foreign one counts for nothing.
            assert [tuple(r) for r in rows] == [(1, "anomaly", "cat"), (2, None, None), (3, "cat", None)]
            assert [bool(f) for _r, f in flags] == [False, True, True, False]
            command.downgrade(alembic_config(url), "0003")
            with engine.connect() as c:
                assert [r[0] for r in c.execute(text("SELECT verdict FROM sketches ORDER BY id"))] == ["cat", "cat", "cat"]
            upgrade(url)
        finally:
            engine.dispose()

    if backend == "sqlite":
        check(f"sqlite:///{tmp_path / 'm.db'}")
    else:
        with fresh_pg_database(migrate=False) as url:
            check(url)


def test_docs_describe_every_operation_and_who_may_call_it():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    for op_id, (method, path, _op) in DOCUMENTED.items():
        assert f"`{method} {API}{path}`" in doc, f"docs/api.md does not document {method} {path} ({op_id})"
    for words in ("admin key", "--admin", "client_verdict", "404", "403"):
        assert words in doc
