"""Alert rules and webhooks against a real local HTTP receiver (a ``http.server`` thread on 127.0.0.1).

In-process, on SQLite and PostgreSQL: a rule fires once per episode and then resolves; the signature is the
HMAC-SHA256 of the raw body; a receiver answering 500 gets the delivery again with backoff; a receiver that
hangs times out; the SSRF policy; the CLI and the dashboard pages. Live, on PostgreSQL + Redis with a real
scoring worker, beat and the alerts worker: a rule crossing its bound reaches the receiver within two alert
intervals, a failing receiver is retried through Celery countdowns, and the rule resolves.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session
from stack_fixtures import fresh_pg_database

from service.core import alerts, webhooks
from service.core.db import make_engine
from service.core.migrate import upgrade
from service.core.schema import (
    AlertNotification,
    AlertRule,
    Sketch,
    User,
    WebhookAttempt,
    WebhookDelivery,
    utcnow,
)
from service.core.security import hash_password
from service.core.settings import get_settings

SQUARE = [[[0, 255, 255, 0, 0], [0, 0, 255, 255, 0]]]
SECRET = "s3cret-for-tests"
CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"|<meta name="csrf-token" content="([^"]+)"')


# --------------------------------------------------------------------------- the receiver


@dataclass
class Hit:
    """One POST the receiver got."""

    at: float
    path: str
    headers: dict
    body: bytes
    answered: object


class Receiver:
    """A real HTTP server in a thread: records every POST and answers as scripted (a status code, or "hang")."""

    def __init__(self, hang_s: float = 5.0) -> None:
        self.hits: list[Hit] = []
        self.script: collections.deque = collections.deque()
        self.default: object = 200
        self.hang_s = hang_s
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer._changed:
                    action = outer.script.popleft() if outer.script else outer.default
                    outer.hits.append(Hit(time.time(), self.path, dict(self.headers), body, action))
                    outer._changed.notify_all()
                if action == "hang":
                    time.sleep(outer.hang_s)
                    action = 200
                try:
                    self.send_response(int(action))
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the sender gave up waiting

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Where to POST."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, count: int, timeout: float) -> list[Hit]:
        """Block until ``count`` POSTs arrived; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.hits) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.hits)} of {count} webhook POSTs arrived within {timeout} s")
                self._changed.wait(left)
            return list(self.hits)


def expected_signature(body: bytes, secret: str) -> str:
    """The signature computed here, independently of the service's code."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------- in-process fixtures


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request, tmp_path_factory):
    """A migrated database: a temp SQLite file, or a fresh PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('alerts') / 'alerts.db'}"
        upgrade(url)
        yield url
        return
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def engine(database_url):
    """An engine on the module's database, emptied of sketches and rules for each test."""
    eng = make_engine(database_url)
    with Session(eng) as s, s.begin():
        for table in ("webhook_attempts", "webhook_deliveries", "alert_notifications", "alert_webhooks",
                      "alert_rules", "sketches"):  # fmt: skip
            s.execute(Sketch.metadata.tables[table].delete())
    yield eng
    eng.dispose()


def make_settings(database_url: str, tmp_path, **extra):
    """Settings for in-process evaluation and delivery: loopback allowed, short timeouts and backoff."""
    values = {
        "env": "testing", "data_dir": tmp_path, "database_url": database_url, "webhook_allowlist": "127.0.0.1",
        "webhook_timeout_s": 1.0, "webhook_backoff_s": 0.2, "webhook_max_attempts": 4,
        "public_url": "http://dashboard.test", "log_json": False,
    }  # fmt: skip
    values.update(extra)
    return get_settings(values)


def scope_of(engine):
    """A ``session_scope`` factory on ``engine`` (what ``db.session_scope`` is in the worker)."""

    @contextmanager
    def scope():
        with Session(engine, expire_on_commit=False) as session, session.begin():
            yield session

    return scope


def add_sketches(engine, scores, client="shop", at=None, threshold=0.5) -> None:
    """Store scored sketches submitted at ``at`` (default now), flagged at ``threshold``."""
    at = at or utcnow()
    with Session(engine) as s, s.begin():
        s.add_all(
            Sketch(client=client, source_format="simplified", drawing=SQUARE, submitted_at=at, scored_at=at,
                   status="scored", score=sc, flagged=sc > threshold, threshold=threshold, model_version="m1",
                   attempts=1)  # fmt: skip
            for sc in scores
        )


def make_rule(engine, settings, url: str, name="spike", metric="flag_rate", direction="above", bound=0.5,
              window_s=60, min_count=5, hooks=None) -> int:  # fmt: skip
    """Create a checked rule; returns its id."""
    spec = alerts.RuleSpec(name=name, metric=metric, direction=direction, bound=bound, window_s=window_s,
                           min_count=min_count, webhooks=tuple(hooks or [(url, SECRET)]))  # fmt: skip
    spec = alerts.check_spec(spec, webhooks.parse_allowlist(settings.webhook_allowlist))
    with Session(engine, expire_on_commit=False) as s, s.begin():
        return alerts.create_rule(s, spec, "test").id


def evaluate(engine, settings, now=None) -> list[alerts.Transition]:
    """One evaluation, committed."""
    with Session(engine, expire_on_commit=False) as s, s.begin():
        return alerts.evaluate(s, settings, now)


def deliver_all(engine, settings, transitions, max_rounds: int = 10) -> list[alerts.Outcome]:
    """Deliver the transitions' notifications in-process, following each retry's delay, like the worker."""
    pending = [(d, 0) for t in transitions for d in t.deliveries]
    outcomes = []
    for _ in range(max_rounds):
        if not pending:
            break
        later = []
        for delivery_id, attempts in pending:
            outcome = alerts.deliver(scope_of(engine), settings, delivery_id, attempts)
            outcomes.append(outcome)
            if outcome is not None and outcome.retry_in is not None:
                time.sleep(outcome.retry_in)
                later.append((delivery_id, outcome.attempts))
        pending = later
    return outcomes


# --------------------------------------------------------------------------- episodes


def test_a_rule_fires_once_per_episode_then_resolves(engine, database_url, tmp_path):
    settings = make_settings(database_url, tmp_path)
    with Receiver() as rx:
        make_rule(engine, settings, rx.url)
        assert evaluate(engine, settings) == []  # no sketches: not judged

        add_sketches(engine, [0.9] * 4)
        assert evaluate(engine, settings) == []  # 4 < min_count: not judged, however high the rate
        add_sketches(engine, [0.9] * 6)
        fired = evaluate(engine, settings)
        assert [(t.rule, t.state, t.value) for t in fired] == [("spike", "firing", 1.0)]
        deliver_all(engine, settings, fired)
        [hit] = rx.wait_for(1, 5)

        # Still beyond the bound: no second notification, however many evaluations.
        add_sketches(engine, [0.95] * 5)
        for _ in range(3):
            assert evaluate(engine, settings) == []
        assert len(rx.hits) == 1

        # Back within the bound: one "resolved".
        add_sketches(engine, [0.1] * 30)
        resolved = evaluate(engine, settings)
        assert [(t.state, round(t.value, 4)) for t in resolved] == [("resolved", round(15 / 45, 4))]
        deliver_all(engine, settings, resolved)
        hits = rx.wait_for(2, 5)
        assert evaluate(engine, settings) == []

        # A new episode fires again.
        add_sketches(engine, [0.99] * 60)
        again = evaluate(engine, settings)
        assert [t.state for t in again] == ["firing"]
        deliver_all(engine, settings, again)
        hits = rx.wait_for(3, 5)

    bodies = [json.loads(h.body) for h in hits]
    assert [b["state"] for b in bodies] == ["firing", "resolved", "firing"]
    first = bodies[0]
    assert first["rule"] == "spike" and first["metric"] == "flag_rate" and first["value"] == 1.0
    assert first["bound"] == 0.5 and first["window_s"] == 60 and first["direction"] == "above" and first["count"] == 10
    at = datetime.fromisoformat(first["at"].replace("Z", "+00:00"))
    assert first["at"].endswith("Z") and at.tzinfo is not None and abs((utcnow() - at).total_seconds()) < 60
    assert first["dashboard_url"].startswith("http://dashboard.test/alerts/history#notification-")
    assert hits[0].headers["X-SketchWatch-Event"] == "firing" and hits[0].path == "/hook"
    with Session(engine) as s:
        rule = s.scalar(select(AlertRule))
        assert rule.state == "firing" and rule.last_count == 105
        states = s.scalars(select(AlertNotification.state).order_by(AlertNotification.id)).all()
        assert states == ["firing", "resolved", "firing"]


def test_a_window_below_the_minimum_count_changes_nothing(engine, database_url, tmp_path):
    settings = make_settings(database_url, tmp_path)
    with Receiver() as rx:
        make_rule(engine, settings, rx.url, min_count=50)
        add_sketches(engine, [0.9] * 49)
        assert evaluate(engine, settings) == []
        # A volume rule is always judged: a silent client is what it watches for.
        make_rule(engine, settings, rx.url, name="quiet", metric="volume", direction="below", bound=100, min_count=1000)
        [t] = evaluate(engine, settings)
        assert (t.rule, t.state, t.value) == ("quiet", "firing", 49.0)
    with Session(engine) as s:
        spike = s.scalar(select(AlertRule).where(AlertRule.name == "spike"))
        assert spike.state == "ok" and spike.last_value == 1.0 and spike.last_count == 49


def test_racing_evaluations_notify_once(tmp_path):
    """Two evaluations that both read the rule as "ok" before either wrote: one compare-and-set wins (PostgreSQL)."""
    with fresh_pg_database() as url:
        eng = make_engine(url)
        try:
            settings = make_settings(url, tmp_path)
            with Receiver() as rx:
                make_rule(eng, settings, rx.url)
            add_sketches(eng, [0.9] * 10)
            late = Session(eng, expire_on_commit=False)
            try:
                assert late.scalar(select(AlertRule.state)) == "ok"
                stale = late.scalars(select(AlertRule)).all()  # loaded as "ok", kept stale in its identity map
                with Session(eng, expire_on_commit=False) as first, first.begin():
                    won = alerts.evaluate(first, settings)
                assert stale[0].state == "ok"
                lost = alerts.evaluate(late, settings)
                late.commit()
            finally:
                late.close()
            assert [t.state for t in won] == ["firing"] and lost == []
            with Session(eng) as s:
                assert len(s.scalars(select(AlertNotification)).all()) == 1
                assert s.scalar(select(AlertRule.state)) == "firing"
        finally:
            eng.dispose()


# --------------------------------------------------------------------------- signatures and delivery


def test_each_webhook_gets_the_hmac_of_the_raw_body_with_its_secret(engine, database_url, tmp_path):
    settings = make_settings(database_url, tmp_path)
    with Receiver() as a, Receiver() as b:
        make_rule(engine, settings, a.url, hooks=[(a.url, "first-secret-1"), (b.url, "second-secret-2")])
        add_sketches(engine, [0.9] * 10)
        deliver_all(engine, settings, evaluate(engine, settings))
        [hit_a], [hit_b] = a.wait_for(1, 5), b.wait_for(1, 5)
    assert hit_a.body == hit_b.body  # one body, signed per webhook
    assert hit_a.headers["X-SketchWatch-Signature"] == expected_signature(hit_a.body, "first-secret-1")
    assert hit_b.headers["X-SketchWatch-Signature"] == expected_signature(hit_b.body, "second-secret-2")
    assert hit_a.headers["X-SketchWatch-Signature"] != hit_b.headers["X-SketchWatch-Signature"]
    assert hit_a.headers["Content-Type"] == "application/json"
    with Session(engine) as s:
        stored = s.scalar(select(AlertNotification.body))
    assert stored.encode() == hit_a.body  # the history keeps the exact bytes that were signed


def test_a_receiver_answering_500_gets_the_delivery_again_with_backoff(engine, database_url, tmp_path):
    settings = make_settings(database_url, tmp_path, webhook_backoff_s=0.3)
    with Receiver() as rx:
        rx.script.extend([500, 503])
        make_rule(engine, settings, rx.url)
        add_sketches(engine, [0.9] * 10)
        outcomes = deliver_all(engine, settings, evaluate(engine, settings))
        hits = rx.wait_for(3, 5)
    assert [o.status for o in outcomes] == ["pending", "pending", "delivered"]
    assert [o.retry_in for o in outcomes] == [0.3, 0.6, None]  # doubling backoff
    assert hits[1].at - hits[0].at >= 0.3 and hits[2].at - hits[1].at >= 0.6
    assert len({h.body for h in hits}) == 1
    assert len({h.headers["X-SketchWatch-Delivery"] for h in hits}) == 3
    with Session(engine) as s:
        delivery = s.scalar(select(WebhookDelivery))
        attempts = s.execute(select(WebhookAttempt.attempt, WebhookAttempt.status_code, WebhookAttempt.ok)
                             .order_by(WebhookAttempt.id)).all()  # fmt: skip
    assert delivery.status == "delivered" and delivery.attempts == 3 and delivery.delivered_at is not None
    assert [tuple(a) for a in attempts] == [(1, 500, False), (2, 503, False), (3, 200, True)]


def test_a_delivery_out_of_attempts_fails_for_good(engine, database_url, tmp_path):
    settings = make_settings(database_url, tmp_path, webhook_max_attempts=2, webhook_backoff_s=0.1)
    with Receiver() as rx:
        rx.default = 500
        make_rule(engine, settings, rx.url)
        add_sketches(engine, [0.9] * 10)
        outcomes = deliver_all(engine, settings, evaluate(engine, settings))
        rx.wait_for(2, 5)
    assert [o.status for o in outcomes] == ["pending", "failed"]
    with Session(engine) as s:
        delivery = s.scalar(select(WebhookDelivery))
    assert delivery.status == "failed" and delivery.last_error == "HTTP 500"
    # A stale or duplicated task finds nothing to claim.
    assert alerts.deliver(scope_of(engine), settings, delivery.id, 1) is None


def test_a_receiver_that_hangs_times_out_and_is_retried(engine, database_url, tmp_path):
    settings = make_settings(database_url, tmp_path, webhook_timeout_s=1.0)
    with Receiver(hang_s=6.0) as rx:
        rx.script.append("hang")
        make_rule(engine, settings, rx.url)
        add_sketches(engine, [0.9] * 10)
        started = time.monotonic()
        outcomes = deliver_all(engine, settings, evaluate(engine, settings))
        took = time.monotonic() - started
        rx.wait_for(2, 5)
    first, second = outcomes
    assert first.status == "pending" and first.result.error == "timed out after 1 s"
    assert 900 <= first.result.duration_ms < 3000
    assert second.status == "delivered"
    assert took < 5.0  # never waited for the hanging receiver's 6 s


def test_the_overdue_scan_resends_lost_deliveries(engine, database_url, tmp_path):
    settings = make_settings(database_url, tmp_path, alert_interval_s=1.0, webhook_timeout_s=1.0)
    with Receiver() as rx:
        make_rule(engine, settings, rx.url)
    add_sketches(engine, [0.9] * 10)
    [t] = evaluate(engine, settings)
    with Session(engine) as s:
        assert alerts.overdue(s, settings) == []  # due now, not overdue
        later = utcnow() + timedelta(minutes=5)
        assert alerts.overdue(s, settings, later) == [(t.deliveries[0], 0)]


# --------------------------------------------------------------------------- the SSRF policy


def _fake_resolver(table):
    return lambda host, port: table[host]


def test_without_an_allowlist_only_public_addresses_are_allowed():
    empty = webhooks.parse_allowlist("")
    resolver = _fake_resolver({
        "hooks.example.com": ["93.184.216.34"], "metadata": ["169.254.169.254"], "intranet": ["10.1.2.3"],
        "mixed": ["93.184.216.34", "192.168.1.5"], "v6local": ["::1"], "mapped": ["::ffff:127.0.0.1"],
        "cgnat": ["100.64.0.7"],
    })  # fmt: skip
    assert webhooks.check_url("https://hooks.example.com/x?a=1", empty, resolver).path == "/x?a=1"
    for host in ("metadata", "intranet", "mixed", "v6local", "mapped", "cgnat"):
        with pytest.raises(webhooks.WebhookURLError, match="non-public"):
            webhooks.check_url(f"http://{host}/", empty, resolver)
    for url, why in (("ftp://hooks.example.com/", "http"), ("http://user:pw@hooks.example.com/", "user name"),
                     ("http:///nohost", "host"), ("", "required")):  # fmt: skip
        with pytest.raises(webhooks.WebhookURLError, match=why):
            webhooks.check_url(url, empty, resolver)
    with pytest.raises(webhooks.WebhookURLError, match="non-public"):
        webhooks.check_url("http://127.0.0.1:9/", empty)  # the real resolver too


def test_an_allowlist_admits_only_its_hosts_domains_and_networks():
    allow = webhooks.parse_allowlist("hooks.example.com, *.corp.example, 10.0.0.0/8 127.0.0.1")
    resolver = _fake_resolver({
        "hooks.example.com": ["10.9.9.9"], "a.b.corp.example": ["172.16.0.1"], "svc": ["10.2.3.4"],
        "public.example.org": ["93.184.216.34"], "127.0.0.1": ["127.0.0.1"], "sneaky": ["10.0.0.1", "192.168.0.1"],
    })  # fmt: skip
    for url in ("https://hooks.example.com/", "https://a.b.corp.example/", "http://svc:8080/", "http://127.0.0.1/"):
        webhooks.check_url(url, allow, resolver)
    for url in ("https://public.example.org/", "http://sneaky/"):
        with pytest.raises(webhooks.WebhookURLError, match="ALLOWLIST"):
            webhooks.check_url(url, allow, resolver)
    with pytest.raises(ValueError, match="neither"):
        webhooks.parse_allowlist("http://x/")


def test_a_destination_refused_at_delivery_time_fails_without_retries(engine, database_url, tmp_path):
    settings = make_settings(database_url, tmp_path)
    with Receiver() as rx:
        make_rule(engine, settings, rx.url)
        add_sketches(engine, [0.9] * 10)
        transitions = evaluate(engine, settings)
        # The allowlist changed since the rule was saved: the POST is refused before any connection.
        strict = make_settings(database_url, tmp_path, webhook_allowlist="hooks.example.com")
        [outcome] = deliver_all(engine, strict, transitions)
        assert rx.hits == []
    assert outcome.status == "failed" and outcome.result.error.startswith("refused:")


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """A migrated SQLite database and the environment the CLI reads."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    for name, value in {"SKETCHWATCH_DATABASE_URL": url, "SKETCHWATCH_DATA_DIR": str(tmp_path),
                        "SKETCHWATCH_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
                        "SKETCHWATCH_WEBHOOK_ALLOWLIST": "127.0.0.1", "SKETCHWATCH_WEBHOOK_TIMEOUT_S": "1",
                        "SKETCHWATCH_LOG_JSON": "false"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    upgrade(url)
    return url


def test_cli_creates_lists_tests_and_deletes_rules(cli_env):
    from service.cli import main

    runner = CliRunner()
    with Receiver() as rx:
        made = runner.invoke(main, ["alerts", "create", "--name", "N", "--metric", "flag_rate", "--above", "0.5",
                                    "--window", "60", "--min-count", "20", "--webhook", rx.url, "--secret", SECRET])
        assert made.exit_code == 0, made.output
        assert "flag_rate above 0.5 over 60 s (at least 20 sketches)" in made.output
        low = runner.invoke(main, ["alerts", "create", "--name", "low", "--metric", "volume", "--below", "10",
                                   "--window", "3600", "--webhook", rx.url])  # fmt: skip
        assert low.exit_code == 0 and "shown only now" in low.output
        generated = low.output.strip().splitlines()[-1].split("\t")[-1]
        listing = runner.invoke(main, ["alerts", "list"]).output.splitlines()
        assert listing[0].split("\t")[:3] == ["N", "flag_rate above 0.5 over 60 s (at least 20 sketches)", "ok"]
        assert listing[1].startswith("low\tvolume below 10 over 3600 s\tok")
        tested = runner.invoke(main, ["alerts", "test", "--name", "low"])
        assert tested.exit_code == 0, tested.output
        [hit] = rx.wait_for(1, 5)
        assert json.loads(hit.body)["state"] == "test" and json.loads(hit.body)["test"] is True
        assert hit.headers["X-SketchWatch-Signature"] == expected_signature(hit.body, generated)
        rx.default = 500
        failing = runner.invoke(main, ["alerts", "test", "--name", "N"])
        assert failing.exit_code == 1 and "HTTP 500" in failing.output and "retries it" in failing.output
    for args, message in (
        (["--above", "1", "--below", "2"], "exactly one of --above and --below"),
        (["--above", "1", "--webhook", "http://10.0.0.1/", "--secret", SECRET], "ALLOWLIST"),
        (["--above", "1", "--secret", "short"], "secret"),
    ):
        base = ["alerts", "create", "--name", "bad", "--metric", "drift", "--window", "60"]
        if "--webhook" not in args:
            base += ["--webhook", "http://127.0.0.1:9/x"]
        out = runner.invoke(main, base + args)
        assert out.exit_code != 0 and message in out.output, (args, out.output)
    dup = runner.invoke(main, ["alerts", "create", "--name", "N", "--metric", "drift", "--above", "0.2", "--window",
                               "60", "--webhook", "http://127.0.0.1:9/", "--secret", SECRET])  # fmt: skip
    assert dup.exit_code == 1 and "already exists" in dup.output
    gone = runner.invoke(main, ["alerts", "delete", "--name", "N"])
    assert gone.exit_code == 0
    assert runner.invoke(main, ["alerts", "delete", "--name", "N"]).exit_code == 1
    assert [line.split("\t")[0] for line in runner.invoke(main, ["alerts", "list"]).output.splitlines()] == ["low"]
    engine = make_engine(cli_env)
    with Session(engine) as s:
        # The deleted rule's notifications stay in the history.
        assert sorted(s.scalars(select(AlertNotification.rule_name))) == ["N", "low"]
    engine.dispose()


# --------------------------------------------------------------------------- dashboard pages


def _login(app, username: str, password: str):
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    match = CSRF.search(page)
    token = match.group(1) or match.group(2)
    r = client.post("/login", data={"username": username, "password": password, "csrf_token": token})
    assert r.status_code == 302, r.get_data(as_text=True)[:300]
    return client


def _token(client, path: str) -> str:
    match = CSRF.search(client.get(path).get_data(as_text=True))
    return match.group(1) or match.group(2)


def test_alert_pages_are_for_admins_and_keep_every_attempt(tmp_path):
    from service.app import create_app
    from service.extensions import db

    url = f"sqlite:///{tmp_path / 'pages.db'}"
    upgrade(url)
    app = create_app({"env": "testing", "data_dir": tmp_path, "database_url": url, "ratelimit_enabled": False,
                      "broker_url": f"sqla+sqlite:///{tmp_path / 'broker.db'}", "webhook_allowlist": "127.0.0.1",
                      "secret_key": "x" * 40, "log_json": False, "webhook_backoff_s": 0.1})  # fmt: skip
    try:
        with app.app_context(), db.session_scope() as s:
            s.add(User(username="root", password_hash=hash_password("root-password-1"), role="admin"))
            s.add(User(username="rev", password_hash=hash_password("rev-password-1"), role="reviewer"))
        reviewer = _login(app, "rev", "rev-password-1")
        for path in ("/alerts", "/alerts/history"):
            assert reviewer.get(path).status_code == 403
        assert reviewer.post("/alerts", data={"csrf_token": _token(reviewer, "/monitoring")}).status_code == 403
        admin = _login(app, "root", "root-password-1")
        with Receiver() as rx:
            rx.script.append(500)
            form = {"csrf_token": _token(admin, "/alerts"), "name": "page-rule", "metric": "flag_rate",
                    "direction": "above", "bound": "0.5", "window": "60", "min_count": "5", "client": "",
                    "url_1": rx.url, "secret_1": ""}  # fmt: skip
            bad = admin.post("/alerts", data={**form, "url_1": "http://169.254.169.254/latest"})
            assert bad.status_code == 400 and "ALLOWLIST" in bad.get_data(as_text=True)
            made = admin.post("/alerts", data=form)
            page = made.get_data(as_text=True)
            assert made.status_code == 200 and 'data-testid="new-secret"' in page
            secret = re.search(r'data-testid="new-secret">([^<]+)<', page).group(1)
            engine = make_engine(url)
            settings = get_settings({"env": "testing", "database_url": url, "data_dir": tmp_path,
                                     "webhook_allowlist": "127.0.0.1", "webhook_backoff_s": 0.1})  # fmt: skip
            add_sketches(engine, [0.9] * 10)
            deliver_all(engine, settings, evaluate(engine, settings))
            hits = rx.wait_for(2, 5)
            engine.dispose()
        assert hits[1].headers["X-SketchWatch-Signature"] == expected_signature(hits[1].body, secret)
        rules = admin.get("/alerts").get_data(as_text=True)
        assert 'data-name="page-rule"' in rules and ">firing<" in rules
        history = admin.get("/alerts/history").get_data(as_text=True)
        assert history.count('data-testid="attempt"') == 2 and "HTTP 500" in history and 'data-status="delivered"' in history
        rule_id = int(re.search(r'id="rule-(\d+)"', rules).group(1))
        confirm = admin.get(f"/alerts/{rule_id}/delete")
        assert confirm.status_code == 200 and "Delete “page-rule”" in confirm.get_data(as_text=True)
        done = admin.post(f"/alerts/{rule_id}/delete", data={"csrf_token": _token(admin, "/alerts"), "confirm": "yes"})
        assert done.status_code == 302
        assert 'data-name="page-rule"' not in admin.get("/alerts").get_data(as_text=True)
        assert "page-rule" in admin.get("/alerts/history").get_data(as_text=True)
    finally:
        db.dispose()


# --------------------------------------------------------------------------- live: beat, the alerts worker, Celery retries


def _wait(condition, timeout: float, message: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(message)


INTERVAL_S = 3.0


def test_live_alerts_fire_within_two_intervals_retry_and_resolve(stack):
    s = stack(
        "postgres",
        alerts=True,
        env={
            "SKETCHWATCH_ALERT_INTERVAL_S": str(INTERVAL_S),
            "SKETCHWATCH_WEBHOOK_ALLOWLIST": "127.0.0.1",
            "SKETCHWATCH_WEBHOOK_TIMEOUT_S": "2",
            "SKETCHWATCH_WEBHOOK_BACKOFF_S": "1",
            # Every score is above 0: every sketch is flagged until the threshold is raised below.
            "SKETCHWATCH_DEFAULT_THRESHOLD": "0.0",
        },
    )
    with Receiver() as ok, Receiver() as flaky:
        flaky.script.extend([500, 500])
        with s.session() as session:
            for name, rx in (("live-spike", ok), ("live-flaky", flaky)):
                spec = alerts.check_spec(
                    alerts.RuleSpec(name=name, metric="flag_rate", direction="above", bound=0.5, window_s=120,
                                    min_count=5, webhooks=((rx.url, SECRET),)),  # fmt: skip
                    webhooks.parse_allowlist("127.0.0.1"),
                )
                alerts.create_rule(session, spec, "test")
            session.commit()
        r = s.submit([{"drawing": SQUARE, "client_ref": f"live-{i}"} for i in range(6)])
        assert r.status_code == 202, r.text
        ids = [item["id"] for item in r.json()["items"]]
        rows = s.wait_for(ids, {"scored"}, 120)
        assert all(row.flagged for row in rows.values())
        # The window crossed its bound when the fifth flagged sketch was scored.
        crossed = sorted(row.scored_at for row in rows.values())[4].timestamp()
        [hit] = ok.wait_for(1, 6 * INTERVAL_S)
        latency = hit.at - crossed
        assert json.loads(hit.body)["state"] == "firing" and json.loads(hit.body)["rule"] == "live-spike"
        assert latency <= 2 * INTERVAL_S, f"firing webhook {latency:.2f} s after the crossing"
        assert hit.headers["X-SketchWatch-Signature"] == expected_signature(hit.body, SECRET)
        # The flaky receiver answered 500 twice: Celery retried with countdowns of 1 s then 2 s.
        flaky_hits = flaky.wait_for(3, 30)
        assert flaky_hits[1].at - flaky_hits[0].at >= 0.9 and flaky_hits[2].at - flaky_hits[1].at >= 1.9
        assert len({h.body for h in flaky_hits}) == 1

        with s.session() as session:
            from service.core.thresholds import apply_threshold

            apply_threshold(session, get_settings({"env": "testing", "default_threshold": 0.0}), 1.0, "test", "resolve")
            session.commit()
        r = s.submit([{"drawing": SQUARE, "client_ref": f"calm-{i}"} for i in range(30)])
        s.wait_for([item["id"] for item in r.json()["items"]], {"scored"}, 120)
        hits = ok.wait_for(2, 6 * INTERVAL_S + 10)
        assert json.loads(hits[1].body)["state"] == "resolved"
        time.sleep(2 * INTERVAL_S)
        assert len(ok.hits) == 2  # no repeats while the state holds

    with s.session() as session:
        deliveries = session.execute(select(WebhookDelivery.url, WebhookDelivery.status, WebhookDelivery.attempts)
                                     .order_by(WebhookDelivery.id)).all()  # fmt: skip
        from service.core.heartbeats import workers_seen

        seen = {w.queues: w.state for w in workers_seen(session)}
    assert ("delivered", 3) in {(st, n) for url, st, n in deliveries if url == flaky.url}
    assert seen.get("sketchwatch") == "alive" and seen.get("sketchwatch.alerts") == "alive", seen
    print(f"\nfiring webhook latency after the crossing: {latency:.2f} s (alert interval {INTERVAL_S} s)")
