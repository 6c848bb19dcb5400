"""Access control, CSRF, escaping, SQL injection, secrets at rest, rate limits and security headers.

Runs in-process against a temp SQLite database (the SQL-injection sweep also against PostgreSQL), with
CSRF on and the real rate limiter. That hostile metadata never runs in a real browser is proven by
tests/browser/test_dashboard_browser.py; here every page's HTML is checked for escaping.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import url_for
from sqlalchemy import func, inspect, select, text

from service.app import create_app
from service import ratelimit
from service.extensions import db
from service.core.migrate import upgrade
from service.core.schema import ROLE_ADMIN, ROLE_REVIEWER, ApiKey, Review, Sketch, ThresholdChange, User, utcnow
from service.core.security import hash_api_key, hash_password, new_api_key
from stack_fixtures import fresh_pg_database

ADMIN = ("root-admin", "admin-password-123")
REVIEWER = ("rita-reviewer", "reviewer-password-123")
SQUARE = [[[0, 255, 255, 0, 0], [0, 0, 255, 255, 0]]]
SUBMIT = "/api/v1/sketches"

XSS_META = {
    "note": "<script>window.__xss = 'meta'</script>",
    "<img src=x onerror=\"window.__xss='key'\">": "value",
    "nested": {"deep": "<svg onload=\"window.__xss='nested'\"></svg>"},
    "quote": "\"'><iframe src=javascript:window.__xss='attr'>",
}
XSS_REF = "<script>window.__xss='ref'</script>"
XSS_CLIENT = "<b onmouseover=\"window.__xss='client'\">evil</b>"

SQL_PAYLOADS = [
    "' OR 1=1 --",
    "' OR '1'='1",
    "1' OR '1'='1' --",
    "\" OR \"\"=\"",
    "1) OR (1=1",
    "1; DROP TABLE sketches; --",
    "' UNION SELECT id, client, client_ref FROM sketches --",
    "%' OR 1=1 --",
    "\\' OR 1=1 #",
    "1 OR 1=1",
    "2025-01-01' OR '1'='1",
    "all' OR 'x'='x",
]


# --------------------------------------------------------------------------- fixtures and helpers


def build_app(data_dir: Path, database_url: str, **overrides):
    """An app as create_app builds it, plus the rate-limit wiring (service.ratelimit.init_app)."""
    config = {
        "env": "testing",
        "data_dir": data_dir,
        "database_url": database_url,
        "broker_url": f"sqla+sqlite:///{data_dir / 'broker.db'}",
        "log_json": False,
        "log_level": "WARNING",
        "ratelimit_enabled": True,
        "ratelimit_submit": "100000 per minute",
        "ratelimit_login": "100000 per minute",
    }
    config.update(overrides)
    app = create_app(config)
    ratelimit.init_app(app, app.extensions["sketchwatch_settings"])
    return app


def seed_accounts(app) -> dict:
    """An admin, a reviewer, an active and a revoked API key, and one sketch of a hostile client."""
    key, revoked = new_api_key(), new_api_key()
    names = {"key_name": f"client-{uuid.uuid4().hex[:8]}", "revoked_name": f"gone-{uuid.uuid4().hex[:8]}"}
    with app.app_context(), db.session_scope() as s:
        for (username, password), role in ((ADMIN, ROLE_ADMIN), (REVIEWER, ROLE_REVIEWER)):
            if s.scalar(select(User).where(User.username == username)) is None:
                s.add(User(username=username, password_hash=hash_password(password), role=role))
        s.add(ApiKey(name=names["key_name"], prefix=key[:10], key_hash=hash_api_key(key)))
        s.add(ApiKey(name=names["revoked_name"], prefix=revoked[:10], key_hash=hash_api_key(revoked), revoked_at=utcnow()))
        hostile = Sketch(
            client=XSS_CLIENT, client_ref="hostile-client", source_format="simplified", drawing=SQUARE,
            meta=XSS_META, status="scored", score=9.5, flagged=True, threshold=1.0, model_version="v-test",
            input_bitmap=bytes(784), reconstruction=bytes(784), scored_at=utcnow(), attempts=1,
        )
        s.add(hostile)
        s.flush()
        names["hostile_id"] = hostile.id
    return {"key": key, "revoked": revoked, **names}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One SQLite database for the module (the db holder is process-global), one app, seeded accounts."""
    data_dir = tmp_path_factory.mktemp("security")
    url = f"sqlite:///{data_dir / 'security.db'}"
    upgrade(url)
    app = build_app(data_dir, url)
    seeded = seed_accounts(app)
    yield {"app": app, "dir": data_dir, "url": url, **seeded}
    db.dispose()


@pytest.fixture
def app(env):
    return env["app"]


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def csrf_token(html: bytes | str) -> str:
    """The CSRF token of a rendered page (the <meta name="csrf-token"> every page carries)."""
    text_ = html.decode() if isinstance(html, bytes) else html
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', text_)
    assert match, "page carries no CSRF token"
    return match.group(1)


def login(client, username: str, password: str, addr: str = "127.0.0.1"):
    """Log in through the real form (GET for the token, POST with it)."""
    token = csrf_token(client.get("/login", environ_base={"REMOTE_ADDR": addr}).data)
    return client.post(
        "/login", data={"username": username, "password": password, "csrf_token": token},
        environ_base={"REMOTE_ADDR": addr},
    )


def logged_in(app, who=ADMIN):
    client = app.test_client()
    r = login(client, *who)
    assert r.status_code == 302, r.data[:300]
    return client


def submit(client, key: str, **item):
    body = {"drawing": SQUARE, **item}
    return client.post(SUBMIT, json=body, headers=bearer(key))


def rule_url(app, rule, sketch_id: int) -> str:
    """A concrete URL for a route, filling path arguments with an existing sketch."""
    values = {}
    for arg in rule.arguments:
        values[arg] = {"sketch_id": sketch_id, "kind": "input", "user_id": 1, "key_id": 1}.get(arg, 1)
    with app.test_request_context():
        return url_for(rule.endpoint, **values)


def rules(app, prefix: str, method: str):
    return sorted(
        (r for r in app.url_map.iter_rules() if r.endpoint.startswith(prefix) and method in r.methods),
        key=lambda r: r.rule,
    )


def count(app, model, *where) -> int:
    with app.app_context(), db.session_scope() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


# --------------------------------------------------------------------------- API keys


def test_every_api_route_refuses_missing_invalid_and_revoked_keys(app, env):
    client = app.test_client()
    checked = []
    for method in ("GET", "POST"):
        for rule in rules(app, "api.", method):
            if rule.endpoint == "api.openapi" or rule.rule.endswith("openapi.json"):
                continue  # the API description is public
            url = rule_url(app, rule, env["hostile_id"])
            call = getattr(client, method.lower())
            kwargs = {"json": {"drawing": SQUARE, "verdict": "cat"}} if method == "POST" else {}
            for headers in (
                {},
                {"Authorization": "Bearer "},
                {"Authorization": "Bearer sw_not-a-real-key"},
                {"Authorization": f"Basic {env['key']}"},
                {"X-API-Key": "sw_not-a-real-key"},
                bearer(env["revoked"]),
                {"X-API-Key": env["revoked"]},
            ):
                r = call(url, headers=headers, **kwargs)
                assert r.status_code == 401, (method, url, headers, r.status_code)
                assert r.is_json and r.json["error"]["message"]
            checked.append((method, rule.rule))
    assert ("POST", "/api/v1/sketches") in checked and ("GET", "/api/v1/sketches/<int:sketch_id>") in checked
    assert count(app, Sketch, Sketch.client == env["revoked_name"]) == 0


def test_a_key_revoked_in_the_dashboard_is_refused_on_its_next_request(app):
    admin = logged_in(app)
    page = admin.post("/admin/keys", data={"name": f"short-lived-{uuid.uuid4().hex[:6]}", "csrf_token": csrf_token(admin.get("/admin/keys").data)})
    assert page.status_code == 200
    key = re.search(r"sw_[A-Za-z0-9_\-]{40,}", page.get_data(as_text=True)).group(0)
    api = app.test_client()
    assert submit(api, key).status_code == 202
    with app.app_context(), db.session_scope() as s:
        key_id = s.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_api_key(key)))
    token = csrf_token(admin.get("/admin/keys").data)
    # Revoking is confirmed first (issue 13): the confirmation page's form carries confirm=yes.
    assert admin.post(f"/admin/keys/{key_id}/revoke", data={"csrf_token": token, "confirm": "yes"}).status_code == 302
    r = submit(api, key)
    assert r.status_code == 401 and "revoked" in r.json["error"]["message"]


def test_api_keys_and_passwords_are_never_stored_in_plaintext(app, env):
    admin = logged_in(app)
    name = f"stored-{uuid.uuid4().hex[:6]}"
    page = admin.post("/admin/keys", data={"name": name, "csrf_token": csrf_token(admin.get("/admin/keys").data)})
    key = re.search(r"sw_[A-Za-z0-9_\-]{40,}", page.get_data(as_text=True)).group(0)
    # Shown once: the listing afterwards has only the prefix.
    listing = admin.get("/admin/keys").get_data(as_text=True)
    assert key not in listing and key[:10] in listing
    with app.app_context(), db.session_scope() as s:
        row = s.scalar(select(ApiKey).where(ApiKey.name == name))
        assert row.key_hash == hash_api_key(key) and len(row.prefix) <= 12
        users = {u.username: u.password_hash for u in s.scalars(select(User))}
        dump = _dump_all_text(s)
    assert users[ADMIN[0]].startswith("$argon2id$") and users[REVIEWER[0]].startswith("$argon2id$")
    for secret in (key, env["key"], env["revoked"], ADMIN[1], REVIEWER[1]):
        assert secret not in dump
    # Nor anywhere in the database file itself (WAL included).
    raw = b"".join(p.read_bytes() for p in env["dir"].glob("security.db*"))
    for secret in (key, env["key"], ADMIN[1], REVIEWER[1]):
        assert secret.encode() not in raw


def _dump_all_text(session) -> str:
    """Every column of every table as text, to search for leaked secrets."""
    parts = []
    for table in inspect(session.get_bind()).get_table_names():
        for row in session.execute(text(f'SELECT * FROM "{table}"')):
            parts.extend(str(v) for v in row)
    return "\n".join(parts)


# --------------------------------------------------------------------------- dashboard access


def test_anonymous_visitors_are_sent_to_login_from_every_dashboard_page(app, env):
    client = app.test_client()
    pages = rules(app, "dashboard.", "GET") + [r for r in rules(app, "auth.", "GET") if r.rule.startswith("/admin")]
    assert len(pages) >= 8, [r.rule for r in pages]
    for rule in pages:
        url = rule_url(app, rule, env["hostile_id"])
        r = client.get(url)
        assert r.status_code == 302, (url, r.status_code)
        target = urlsplit(r.headers["Location"])
        assert target.path == "/login" and not target.netloc, (url, r.headers["Location"])
        assert parse_qs(target.query)["next"][0].startswith(urlsplit(url).path)
        # Scripts get a JSON 401 rather than an HTML redirect.
        r = client.get(url, headers={"Accept": "application/json"})
        assert r.status_code == 401 and r.is_json, url
    for rule in rules(app, "dashboard.", "POST") + [r for r in rules(app, "auth.", "POST") if r.rule.startswith("/admin")]:
        r = client.post(rule_url(app, rule, env["hostile_id"]))
        assert r.status_code in (302, 400, 401), (rule.rule, r.status_code)
        if r.status_code == 302:
            assert urlsplit(r.headers["Location"]).path == "/login"


def test_a_reviewer_cannot_change_the_threshold_or_administer(app, env):
    reviewer = logged_in(app, REVIEWER)
    before = count(app, ThresholdChange)
    token = csrf_token(reviewer.get("/threshold").data)
    r = reviewer.post("/threshold", data={"value": "0.5", "reason": "reviewer tries", "csrf_token": token})
    assert r.status_code == 403
    assert count(app, ThresholdChange) == before
    for url in ("/admin/users", "/admin/keys"):
        assert reviewer.get(url).status_code == 403
    r = reviewer.post("/admin/keys", data={"name": "reviewer-key", "csrf_token": token})
    assert r.status_code == 403 and count(app, ApiKey, ApiKey.name == "reviewer-key") == 0
    r = reviewer.post("/admin/users", data={"username": "sneaky", "password": "x" * 12, "role": "admin", "csrf_token": token})
    assert r.status_code == 403 and count(app, User, User.username == "sneaky") == 0
    # The same request from an admin goes through, so the 403 above is about the role.
    admin = logged_in(app)
    token = csrf_token(admin.get("/threshold").data)
    r = admin.post("/threshold", data={"value": "7.5", "reason": "admin sets", "csrf_token": token, "confirm": "yes"})
    assert r.status_code == 302 and count(app, ThresholdChange) == before + 1


def test_deactivated_user_loses_an_open_session(app):
    admin = logged_in(app)
    username = f"temp-{uuid.uuid4().hex[:6]}"
    token = csrf_token(admin.get("/admin/users").data)
    assert admin.post("/admin/users", data={"username": username, "password": "temp-password-1", "role": "reviewer", "csrf_token": token}).status_code == 302
    temp = logged_in(app, (username, "temp-password-1"))
    assert temp.get("/").status_code == 200
    with app.app_context(), db.session_scope() as s:
        user_id = s.scalar(select(User.id).where(User.username == username))
    assert admin.post(f"/admin/users/{user_id}/active", data={"csrf_token": token, "confirm": "yes"}).status_code == 302
    assert temp.get("/").status_code == 302
    assert login(app.test_client(), username, "temp-password-1").status_code == 401


def test_login_never_redirects_off_site(app):
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:alert(1)"):
        client = app.test_client()
        token = csrf_token(client.get("/login").data)
        r = client.post(f"/login?next={target}", data={"username": ADMIN[0], "password": ADMIN[1], "csrf_token": token})
        assert r.status_code == 302
        location = urlsplit(r.headers["Location"])
        assert not location.netloc and location.path == "/", (target, r.headers["Location"])


# --------------------------------------------------------------------------- CSRF


def test_every_form_post_needs_a_valid_csrf_token(app, env):
    admin = logged_in(app)
    posts = rules(app, "dashboard.", "POST") + rules(app, "auth.", "POST")
    assert {"/login", "/logout", "/threshold"} <= {r.rule for r in posts}
    other = app.test_client()
    foreign_token = csrf_token(other.get("/login").data)  # valid, but for another session
    reviews = count(app, Review)
    thresholds = count(app, ThresholdChange)
    for rule in posts:
        url = rule_url(app, rule, env["hostile_id"])
        form = {"verdict": "cat", "ids": str(env["hostile_id"]), "value": "3", "reason": "csrf", "name": "csrf-key",
                "username": ADMIN[0], "password": ADMIN[1], "role": "reviewer"}
        for label, data, headers in (
            ("missing", form, {}),
            ("wrong", {**form, "csrf_token": "not-a-token"}, {}),
            ("foreign", {**form, "csrf_token": foreign_token}, {}),
            ("wrong header", form, {"X-CSRFToken": "not-a-token"}),
        ):
            r = admin.post(url, data=data, headers=headers)
            assert r.status_code == 400, (label, rule.rule, r.status_code)
        r = admin.post(url, json={"drawing": SQUARE, "verdict": "cat"}, headers={"X-CSRFToken": "forged"})
        assert r.status_code == 400, ("json", rule.rule)
    assert count(app, Review) == reviews and count(app, ThresholdChange) == thresholds
    assert count(app, ApiKey, ApiKey.name == "csrf-key") == 0
    # Still logged in: the forged logout did nothing.
    assert admin.get("/").status_code == 200


# --------------------------------------------------------------------------- escaping


def test_hostile_metadata_is_escaped_in_every_page(app, env):
    api = app.test_client()
    r = submit(api, env["key"], client_ref=XSS_REF, metadata=XSS_META)
    assert r.status_code == 202
    submitted = r.json["id"]
    reviewer = logged_in(app, REVIEWER)
    for url in (f"/sketches/{env['hostile_id']}", f"/sketches/{submitted}", "/flagged", "/flagged?state=unreviewed", "/"):
        html = reviewer.get(url).get_data(as_text=True)
        for raw in ("<script>window.__xss", "<img src=x", "<svg onload", "<iframe", "<b onmouseover"):
            assert raw not in html, (url, raw)
    detail = reviewer.get(f"/sketches/{env['hostile_id']}").get_data(as_text=True)
    assert "&lt;script&gt;window.__xss = &#39;meta&#39;&lt;/script&gt;" in detail
    assert "&lt;b onmouseover=" in detail
    assert "&lt;script&gt;window.__xss=&#39;ref&#39;&lt;/script&gt;" in reviewer.get(f"/sketches/{submitted}").get_data(as_text=True)


# --------------------------------------------------------------------------- SQL injection


def _injection_sweep(app, key: str, key_name: str) -> None:
    """Every filter of the API and the dashboard gets SQL payloads: 400/403 or no rows, never more rows."""
    api = app.test_client()
    assert submit(api, key, client_ref="own-1").status_code == 202
    own = api.get(SUBMIT, headers=bearer(key)).json["items"]
    total = count(app, Sketch)
    reviewer = logged_in(app, REVIEWER)
    api_params = ("status", "flagged", "since", "until", "client", "client_ref", "cursor", "limit")
    stats_params = ("since", "until", "range", "model_version", "bins", "log")
    pages = {
        "/": ("range", "since", "until", "model_version", "bins", "log"),
        "/flagged": ("state", "sort", "page", "per_page"),
        "/threshold/preview": ("t",),
        "/export.csv": ("state",),
        f"/sketches/{own[0]['id']}/input.png": ("s",),
    }
    for payload in SQL_PAYLOADS:
        for name in api_params:
            r = api.get(SUBMIT, query_string={name: payload}, headers=bearer(key))
            assert r.status_code in (200, 400, 403), (name, payload, r.status_code)
            if r.status_code == 200:
                ids = {item["id"] for item in r.json["items"]}
                assert ids <= {item["id"] for item in own}, (name, payload)
                assert not ids, (name, payload, ids)
        for name in stats_params:
            r = api.get("/api/v1/stats/histogram", query_string={name: payload}, headers=bearer(key))
            assert r.status_code in (200, 400), (name, payload, r.status_code)
            if r.status_code == 200:
                assert r.json["counts"]["total"] == 0, (name, payload, r.json["counts"])
        for path, names in pages.items():
            for name in names:
                r = reviewer.get(path, query_string={name: payload})
                assert r.status_code in (200, 400), (path, name, payload, r.status_code)
                if path == "/export.csv" and r.status_code == 200:
                    assert r.get_data(as_text=True).count("\r\n") == 1, (name, payload)
    assert count(app, Sketch) == total
    with app.app_context(), db.session_scope() as s:
        assert {"sketches", "users", "api_keys", "reviews"} <= set(inspect(s.get_bind()).get_table_names())


def test_filters_cannot_inject_sql_sqlite(app, env):
    _injection_sweep(app, env["key"], env["key_name"])


def test_filters_cannot_inject_sql_postgresql(env, tmp_path):
    with fresh_pg_database() as url:
        try:
            pg_app = build_app(tmp_path, url)
            seeded = seed_accounts(pg_app)
            _injection_sweep(pg_app, seeded["key"], seeded["key_name"])
        finally:
            db.dispose()
            db.configure(env["url"])  # the db holder is process-global: give the module's app its database back


# --------------------------------------------------------------------------- rate limits


def test_api_rate_limit_is_per_key_with_retry_after(env):
    limited = build_app(env["dir"], env["url"], ratelimit_submit="3 per minute")
    try:
        client = limited.test_client()
        answers = [submit(client, env["key"]).status_code for _ in range(4)]
        assert answers == [202, 202, 202, 429]
        r = submit(client, env["key"])
        assert r.status_code == 429 and r.is_json and "rate limit" in r.json["error"]["message"]
        assert 0 < int(r.headers["Retry-After"]) <= 60
        # Another key from the same address has its own budget.
        other = new_api_key()
        with limited.app_context(), db.session_scope() as s:
            s.add(ApiKey(name=f"other-{uuid.uuid4().hex[:6]}", prefix=other[:10], key_hash=hash_api_key(other)))
        assert submit(client, other).status_code == 202
        # Reads are limited per key too (the blueprint-wide limit from service.ratelimit).
        sketch = submit(client, other).json["id"]
        reads = [client.get(f"{SUBMIT}/{sketch}", headers=bearer(other)).status_code for _ in range(4)]
        assert reads == [200, 200, 200, 429]
        # Storage keys hold a digest, never the key itself.
        budget = limited.extensions[ratelimit.BUDGET_EXTENSION]
        stored = " ".join(map(str, getattr(budget.storage, "storage", {}).keys()))
        assert "key:" in stored
        for secret in (other, env["key"]):
            # Not even a fragment: a Redis dump must not help anyone reconstruct a key.
            assert secret[-16:] not in stored and secret[3:19] not in stored
    finally:
        limited.extensions[ratelimit.BUDGET_EXTENSION].reset()


def test_login_rate_limit_is_per_username_and_per_address(env):
    limited = build_app(env["dir"], env["url"], ratelimit_login="3 per minute")
    try:
        client = limited.test_client()

        def attempt(username: str, password: str, addr: str):
            token = csrf_token(client.get("/login", environ_base={"REMOTE_ADDR": addr}).data)
            return client.post(
                "/login", data={"username": username, "password": password, "csrf_token": token},
                environ_base={"REMOTE_ADDR": addr},
            )

        # A distributed guesser: one username from many addresses.
        codes = [attempt(ADMIN[0], f"guess-{i}", f"10.1.0.{i}").status_code for i in range(4)]
        assert codes == [401, 401, 401, 429]
        locked = attempt(ADMIN[0].upper(), ADMIN[1], "10.1.0.99")  # case variants share the budget
        assert locked.status_code == 429 and 0 < int(locked.headers["Retry-After"]) <= 60
        assert attempt(REVIEWER[0], "wrong", "10.1.0.50").status_code == 401  # other users unaffected
        # One address trying many usernames.
        codes = [attempt(f"user{i}", "wrong", "10.2.0.1").status_code for i in range(4)]
        assert codes == [401, 401, 401, 429]
        r = client.post("/login", data={"username": "x"}, headers={"Accept": "application/json"},
                        environ_base={"REMOTE_ADDR": "10.2.0.1"})
        assert r.status_code in (400, 429)
    finally:
        ratelimit.limiter.reset()


# --------------------------------------------------------------------------- headers and cookies


def test_security_headers_on_every_page(app, env):
    admin = logged_in(app)
    pages = ["/login"] + [
        rule_url(app, r, env["hostile_id"])
        for r in rules(app, "dashboard.", "GET") + rules(app, "auth.", "GET")
        if r.rule != "/login"
    ]
    for url in pages:
        r = admin.get(url) if url != "/login" else app.test_client().get(url)
        assert r.status_code in (200, 304, 400, 404), (url, r.status_code)
        csp = r.headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in csp, url
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "'unsafe-inline'" not in csp, url
        assert r.headers.get("X-Content-Type-Options") == "nosniff", url
        assert r.headers.get("X-Frame-Options") == "DENY", url
        if r.mimetype == "text/html":
            assert "no-store" in r.headers.get("Cache-Control", ""), url


def test_session_cookie_is_httponly_and_samesite(app):
    client = app.test_client()
    r = login(client, *ADMIN)
    cookies = [v for k, v in r.headers.items() if k.lower() == "set-cookie" and v.startswith("session=")]
    assert cookies and all("HttpOnly" in c and "SameSite=Lax" in c for c in cookies)
    prod = create_app({"env": "production", "secret_key": "x" * 32, "database_url": app.config["DATABASE_URL"],
                       "broker_url": "redis://127.0.0.1:1/0", "data_dir": str(Path(app.config["DATABASE_URL"][10:]).parent)})
    assert prod.config["SESSION_COOKIE_SECURE"] is True
