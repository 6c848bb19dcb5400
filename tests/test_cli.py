"""The operational CLI: db upgrade, users, API keys, serve, and the zero-setup preconditions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.orm import Session
from stack_fixtures import ROOT, create_pg_database, drop_pg_database, free_port

from service.cli import main
from service.core.accounts import first_run_credentials
from service.core.migrate import heads
from service.core.schema import ROLE_ADMIN, ApiKey, User
from service.core.security import hash_api_key, verify_password

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict[str, str]:
    """SKETCHWATCH_* variables for a fresh SQLite database in tmp_path (applied to this process too)."""
    for name in list(os.environ):
        if name.startswith("SKETCHWATCH_"):
            monkeypatch.delenv(name)
    values = {
        "SKETCHWATCH_DATA_DIR": str(tmp_path / "data"),
        "SKETCHWATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "SKETCHWATCH_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        "SKETCHWATCH_LOG_JSON": "false",
        "SKETCHWATCH_LOG_LEVEL": "WARNING",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def run(*args: str, input: str | None = None):
    """Invoke the CLI in-process; returns the click Result."""
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


@pytest.fixture
def migrated(env) -> str:
    result = run("db", "upgrade")
    assert result.exit_code == 0, result.output
    return env["SKETCHWATCH_DATABASE_URL"]


def session(url: str) -> Session:
    return Session(create_engine(url))


def test_db_upgrade_creates_the_schema_and_is_idempotent(env):
    url = env["SKETCHWATCH_DATABASE_URL"]
    first = run("db", "upgrade")
    assert first.exit_code == 0, first.output
    assert "is at revision head" in first.output
    engine = create_engine(url)
    assert {"sketches", "reviews", "threshold_changes", "users", "api_keys"} <= set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == heads()[0]
    assert run("db", "upgrade").exit_code == 0
    engine.dispose()


def test_db_upgrade_on_postgresql(env, monkeypatch):
    url = create_pg_database(migrate=False)
    try:
        monkeypatch.setenv("SKETCHWATCH_DATABASE_URL", url)
        result = run("db", "upgrade")
        assert result.exit_code == 0, result.output
        assert "postgres" in result.output
        engine = create_engine(url)
        assert "sketches" in inspect(engine).get_table_names()
        engine.dispose()
    finally:
        drop_pg_database(url)


def test_db_upgrade_reports_an_unreachable_database(env, monkeypatch):
    monkeypatch.setenv("SKETCHWATCH_DATABASE_URL", f"postgresql+psycopg://postgres:secret@127.0.0.1:{free_port()}/x")
    result = run("db", "upgrade")
    assert result.exit_code == 1
    assert "migration of postgresql+psycopg://postgres:***@127.0.0.1" in result.output
    assert "secret" not in result.output


def test_users_create_stores_an_argon2_hash(migrated):
    result = run("users", "create", "--username", "alice", "--password", "correct horse", "--role", "admin")
    assert result.exit_code == 0, result.output
    assert "created admin 'alice'" in result.output
    with session(migrated) as s:
        user = s.scalars(select(User).where(User.username == "alice")).one()
        assert user.role == ROLE_ADMIN and user.active
        assert user.password_hash.startswith("$argon2id$")
        assert verify_password(user.password_hash, "correct horse")
        assert not verify_password(user.password_hash, "wrong")


def test_users_create_prompts_for_the_password_and_defaults_to_reviewer(migrated):
    result = run("users", "create", "--username", "bob", input="s3cret-pass\ns3cret-pass\n")
    assert result.exit_code == 0, result.output
    with session(migrated) as s:
        user = s.scalars(select(User).where(User.username == "bob")).one()
        assert user.role == "reviewer" and verify_password(user.password_hash, "s3cret-pass")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--username", "carol", "--password", "short"], "at least 8 characters"),
        (["--username", "carol", "--password", "long enough", "--role", "root"], "'root' is not one of"),
        (["--username", "has space", "--password", "long enough"], "without spaces"),
    ],
)
def test_users_create_rejects_bad_input(migrated, args, message):
    result = run("users", "create", *args)
    assert result.exit_code == 2
    assert message in result.output


def test_users_create_refuses_a_duplicate(migrated):
    assert run("users", "create", "--username", "dave", "--password", "password-1").exit_code == 0
    result = run("users", "create", "--username", "dave", "--password", "password-2")
    assert result.exit_code == 1
    assert "user 'dave' already exists" in result.output
    with session(migrated) as s:
        assert verify_password(s.scalars(select(User.password_hash).where(User.username == "dave")).one(), "password-1")


def test_commands_on_a_database_without_schema_say_what_to_do(env):
    result = run("users", "create", "--username", "erin", "--password", "password-1")
    assert result.exit_code == 1
    assert "sketchwatch db upgrade" in result.output


def test_api_key_lifecycle(migrated, env):
    from service.app import create_app

    created = CliRunner().invoke(main, ["apikeys", "create", "--name", "ci-client"], catch_exceptions=False)
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert key.startswith("sw_") and "\n" not in key
    assert "shown only now" in created.stderr
    with session(migrated) as s:
        row = s.scalars(select(ApiKey).where(ApiKey.name == "ci-client")).one()
        assert row.key_hash == hash_api_key(key) and key not in (row.prefix, row.key_hash)
        assert key.startswith(row.prefix)

    app = create_app(
        {
            **{k[len("SKETCHWATCH_") :].lower(): v for k, v in env.items()},
            "env": "testing",
            "ratelimit_enabled": False,
            "api_key_cache_s": 0.5,
        }
    )
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/api/v1/sketches", headers=headers).status_code == 200

    duplicate = run("apikeys", "create", "--name", "ci-client")
    assert duplicate.exit_code == 1 and "already exists" in duplicate.output

    revoked = run("apikeys", "revoke", "--name", "ci-client")
    assert revoked.exit_code == 0 and "revoked API key 'ci-client'" in revoked.output
    # Another process revoked it: this one refuses the key once its cached lookup expires.
    deadline = time.monotonic() + 5
    while client.get("/api/v1/sketches", headers=headers).status_code != 401:
        assert time.monotonic() < deadline, "a revoked key still works after the cache TTL"
        time.sleep(0.1)
    again = run("apikeys", "revoke", "--name", "ci-client")
    assert again.exit_code == 0 and "already revoked" in again.output

    listing = run("apikeys", "list")
    assert listing.exit_code == 0
    line = next(ln for ln in listing.output.splitlines() if ln.startswith("ci-client"))
    assert "revoked" in line and key not in listing.output

    unknown = run("apikeys", "revoke", "--name", "nobody")
    assert unknown.exit_code == 1 and "no API key named 'nobody'" in unknown.output


def test_first_run_credentials_only_when_there_is_no_user(migrated):
    with session(migrated) as s:
        s.add(ApiKey(name="default", prefix="sw_x", key_hash="0" * 64))
        s.commit()
        username, password, key = first_run_credentials(s)
        s.commit()
        user = s.scalars(select(User).where(User.username == username)).one()
        assert user.is_admin and verify_password(user.password_hash, password)
        # "default" was taken: the new key gets the next free name.
        assert s.scalars(select(ApiKey.name).where(ApiKey.key_hash == hash_api_key(key))).one() == "default-2"
        assert first_run_credentials(s) is None


def test_up_refuses_to_start_without_a_model(env, monkeypatch, tmp_path):
    monkeypatch.setenv("SKETCHWATCH_MODEL_DIR", str(tmp_path / "no-model"))
    result = run("up", "--port", str(free_port()))
    assert result.exit_code == 1
    assert "the scoring model is unavailable" in result.output and "no-model" in result.output
    # Nothing was set up: no database, no credentials printed.
    assert not (tmp_path / "cli.db").exists()


def test_serve_runs_granian_until_sigterm(migrated, env, tmp_path):
    port = free_port()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("SKETCHWATCH_")}
    child_env.update(env, PYTHONPATH=str(ROOT))
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--workers", "1"],
            cwd=ROOT, env=child_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        # exec: the CLI process itself became granian's main process, serving the WSGI app.
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode().split("\0")
        assert "granian" in argv and argv[argv.index("--interface") + 1] == "wsgi"
        assert "service.wsgi:app" in argv
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_importing_the_cli_does_not_load_tensorflow():
    code = "import sys, service.cli; sys.exit(int(any(m in sys.modules for m in ('tensorflow', 'keras', 'celery'))))"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60).returncode == 0
