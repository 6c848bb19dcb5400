"""The ``sketchwatch`` command line (click).

Importing this module stays cheap (no TensorFlow, no Flask app): commands import what they need.
``serve`` and ``worker`` exec the real programs (granian, celery) so signals reach them directly;
``up`` supervises both for the zero-setup mode.
"""

from __future__ import annotations

import os
import secrets
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import click

from bench.cli import bench_command
from models.cli import evaluate_command, train_command
from service.cli_submit import demo, submit

MIN_PASSWORD_LENGTH = 8
FIRST_ADMIN = "admin"
FIRST_API_KEY_NAME = "default"
SECRET_KEY_FILE = "secret_key"
WSGI_TARGET = "service.wsgi:app"
GRACEFUL_TIMEOUT_S = 30


@click.group()
def main() -> None:
    """SketchWatch: anomaly monitoring for hand-drawn sketches."""


main.add_command(submit)
main.add_command(demo)
main.add_command(train_command, "train")
main.add_command(evaluate_command, "evaluate")
main.add_command(bench_command, "bench")


def _settings():
    """Settings read from the environment now (not the process-wide cache: one command, one reading)."""
    from service.core.settings import Settings

    try:
        return Settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise click.ClickException(f"invalid configuration: {exc}") from None


@contextmanager
def _db_session() -> Iterator:
    """A committed session on the configured database, with database errors as clear CLI errors."""
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.orm import Session
    from sqlalchemy.pool import NullPool

    from service.core.db import make_engine

    settings = _settings()
    engine = make_engine(settings.database_url, poolclass=NullPool)
    try:
        with Session(engine, expire_on_commit=False) as session, session.begin():
            yield session
    except SQLAlchemyError as exc:
        detail = getattr(exc, "orig", None) or exc
        raise click.ClickException(
            f"database error on {_redacted(settings.database_url)}: {type(exc).__name__}: {detail}"
            "\n(has the schema been created? run `sketchwatch db upgrade`)"
        ) from None
    finally:
        engine.dispose()


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for messages
        return "<database>"


# --------------------------------------------------------------------------- db


@main.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target Alembic revision.")
def db_upgrade(revision: str) -> None:
    """Create or migrate the schema of SKETCHWATCH_DATABASE_URL."""
    from service.core.migrate import upgrade

    settings = _settings()
    if settings.database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        upgrade(settings.database_url, revision)
    except Exception as exc:  # noqa: BLE001 - Alembic and drivers raise many types
        raise click.ClickException(f"migration of {_redacted(settings.database_url)} failed: {exc}") from None
    click.echo(f"database {_redacted(settings.database_url)} is at revision {revision}")


# --------------------------------------------------------------------------- users


@main.group("users")
def users_group() -> None:
    """Dashboard logins."""


def _check_password(_ctx, _param, value: str) -> str:
    if value is not None and len(value) < MIN_PASSWORD_LENGTH:
        raise click.BadParameter(f"must be at least {MIN_PASSWORD_LENGTH} characters")
    return value


@users_group.command("create")
@click.option("--username", required=True, help="Login name.")
@click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    callback=_check_password,
    help=f"At least {MIN_PASSWORD_LENGTH} characters; prompted for when omitted.",
)
@click.option("--role", type=click.Choice(["reviewer", "admin"]), default="reviewer", show_default=True)
def users_create(username: str, password: str, role: str) -> None:
    """Create a dashboard user (reviewer or admin)."""
    from sqlalchemy import select

    from service.core.schema import User
    from service.core.security import hash_password

    username = username.strip()
    if not username or len(username) > 100 or any(ch.isspace() for ch in username):
        raise click.BadParameter("must be 1-100 characters without spaces", param_hint="--username")
    with _db_session() as session:
        if session.execute(select(User.id).where(User.username == username)).first():
            raise click.ClickException(f"user {username!r} already exists")
        session.add(User(username=username, password_hash=hash_password(password), role=role, active=True))
    click.echo(f"created {role} {username!r}")


@users_group.command("list")
def users_list() -> None:
    """List dashboard users."""
    from sqlalchemy import select

    from service.core.schema import User

    with _db_session() as session:
        rows = session.execute(select(User.username, User.role, User.active).order_by(User.username)).all()
    for row in rows:
        click.echo(f"{row.username}\t{row.role}\t{'active' if row.active else 'inactive'}")


# --------------------------------------------------------------------------- API keys


@main.group("apikeys")
def apikeys_group() -> None:
    """API keys of submitting clients."""


def create_api_key(session, name: str) -> str:
    """Store a new key named ``name`` (its digest only) and return the key itself."""
    from service.core.schema import ApiKey
    from service.core.security import hash_api_key, new_api_key

    key = new_api_key()
    session.add(ApiKey(name=name, prefix=key[:12], key_hash=hash_api_key(key)))
    return key


@apikeys_group.command("create")
@click.option("--name", required=True, help="Client name; shown as the sketches' client.")
def apikeys_create(name: str) -> None:
    """Create an API key and print it once (only its hash is stored)."""
    from sqlalchemy import select

    from service.core.schema import ApiKey

    name = name.strip()
    if not name or len(name) > 100:
        raise click.BadParameter("must be 1-100 characters", param_hint="--name")
    with _db_session() as session:
        if session.execute(select(ApiKey.id).where(ApiKey.name == name)).first():
            raise click.ClickException(f"an API key named {name!r} already exists")
        key = create_api_key(session, name)
    # The key alone on stdout, so `KEY=$(sketchwatch apikeys create --name x)` works.
    click.echo(key)
    click.echo(f"API key {name!r} created; it is shown only now.", err=True)


@apikeys_group.command("revoke")
@click.option("--name", required=True, help="Name of the key to revoke.")
def apikeys_revoke(name: str) -> None:
    """Revoke an API key: requests with it get 401 from now on."""
    from sqlalchemy import select

    from service.core.schema import ApiKey, utcnow

    with _db_session() as session:
        key = session.execute(select(ApiKey).where(ApiKey.name == name)).scalar_one_or_none()
        if key is None:
            raise click.ClickException(f"no API key named {name!r}")
        if key.revoked_at is not None:
            click.echo(f"API key {name!r} was already revoked at {key.revoked_at:%Y-%m-%d %H:%M:%S}")
            return
        key.revoked_at = utcnow()
    click.echo(f"revoked API key {name!r}")


@apikeys_group.command("list")
def apikeys_list() -> None:
    """List API keys (name, prefix, created, status); the keys themselves are not stored."""
    from sqlalchemy import select

    from service.core.schema import ApiKey

    with _db_session() as session:
        rows = session.execute(select(ApiKey).order_by(ApiKey.name)).scalars().all()
    for key in rows:
        status = f"revoked {key.revoked_at:%Y-%m-%d %H:%M:%S}" if key.revoked_at else "active"
        click.echo(f"{key.name}\t{key.prefix}...\t{key.created_at:%Y-%m-%d %H:%M:%S}\t{status}")


# --------------------------------------------------------------------------- processes


def serve_argv(host: str, port: int, workers: int, threads: int, extra: tuple[str, ...] = ()) -> list[str]:
    """The granian command line of the web server (WSGI, HTTP/1.1)."""
    return [
        sys.executable, "-m", "granian", "--interface", "wsgi",
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
        # Request threads per process; connections and HTTP parsing live in granian's Rust runtime.
        "--blocking-threads", str(threads),
        "--http", "1",
        "--no-ws",
        "--access-log",
        "--respawn-failed-workers",
        # On SIGTERM in-flight requests finish; a process still busy after this long is killed.
        "--workers-kill-timeout", str(GRACEFUL_TIMEOUT_S),
        *extra,
        WSGI_TARGET,
    ]  # fmt: skip


def worker_argv(
    concurrency: int | None, beat: bool, loglevel: str, data_dir: Path, extra: tuple[str, ...] = ()
) -> list[str]:
    """The Celery worker command line (optionally with the embedded beat scheduler that runs the sweeper)."""
    from worker.app import QUEUE

    argv = [
        sys.executable, "-m", "celery", "-A", "worker.app:celery_app", "worker",
        "-Q", QUEUE, "--loglevel", loglevel,
        # Scoring workers never need each other's state; skipping this saves broker round trips.
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    if beat:
        argv += ["--beat", "--schedule", str(data_dir / "celerybeat-schedule")]
    return argv + list(extra)


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64), help="Web server processes.")
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1, 64), help="Threads per process.")
@click.argument("granian_args", nargs=-1, type=click.UNPROCESSED)
def serve(host: str, port: int, workers: int, threads: int, granian_args: tuple[str, ...]) -> None:
    """Run the web service with granian (extra arguments go to granian)."""
    _settings()  # fail here, readably, rather than in every server process
    argv = serve_argv(host, port, workers, threads, granian_args)
    os.execv(argv[0], argv)


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--concurrency", "-c", type=click.IntRange(1, 256), default=None, help="Pool processes [default: CPUs].")
@click.option("--beat", is_flag=True, help="Also run the scheduler (the sweeper); run it in ONE worker only.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(concurrency: int | None, beat: bool, celery_args: tuple[str, ...]) -> None:
    """Run the Celery scoring worker (extra arguments go to celery worker)."""
    settings = _settings()
    if beat:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    argv = worker_argv(concurrency, beat, settings.log_level, settings.data_dir, celery_args)
    os.execv(argv[0], argv)


# --------------------------------------------------------------------------- up


def _persistent_secret(data_dir: Path) -> str:
    """A secret key kept in the data directory, so logins survive a restart of ``up``."""
    path = data_dir / SECRET_KEY_FILE
    if path.is_file():
        text = path.read_text().strip()
        if text:
            return text
    secret = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    return secret


def first_run_credentials(session) -> tuple[str, str, str] | None:
    """When there is no user yet: create an admin with a random password and an API key; else None."""
    from sqlalchemy import func, select

    from service.core.schema import ROLE_ADMIN, ApiKey, User
    from service.core.security import hash_password

    if session.execute(select(func.count(User.id))).scalar_one():
        return None
    password = secrets.token_urlsafe(12)
    session.add(User(username=FIRST_ADMIN, password_hash=hash_password(password), role=ROLE_ADMIN, active=True))
    name = FIRST_API_KEY_NAME
    taken = set(session.execute(select(ApiKey.name)).scalars())
    suffix = 1
    while name in taken:
        suffix += 1
        name = f"{FIRST_API_KEY_NAME}-{suffix}"
    key = create_api_key(session, name)
    return FIRST_ADMIN, password, key


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--concurrency", default=1, show_default=True, type=click.IntRange(1, 64), help="Scoring processes.")
def up(host: str, port: int, concurrency: int) -> None:
    """Zero-setup mode: SQLite + a file broker in the data directory, web + worker + sweeper; Ctrl-C stops all."""
    from service.core.migrate import upgrade
    from service.runner import Supervisor
    from worker.model_runtime import ModelUnavailable, check_artifact

    settings = _settings()
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        check_artifact(settings.model_dir)
    except ModelUnavailable as exc:
        raise click.ClickException(f"the scoring model is unavailable: {exc}") from None
    upgrade(settings.database_url)
    with _db_session() as session:
        credentials = first_run_credentials(session)

    env = dict(os.environ)
    env.update(
        SKETCHWATCH_DATA_DIR=str(data_dir),
        SKETCHWATCH_DATABASE_URL=settings.database_url,
        SKETCHWATCH_BROKER_URL=settings.broker_url,
        # One key for every process, kept on disk: sessions stay valid across workers and restarts.
        SKETCHWATCH_SECRET_KEY=settings.secret_key
        if os.environ.get("SKETCHWATCH_SECRET_KEY")
        else _persistent_secret(data_dir),
    )
    url = f"http://{host}:{port}/"
    click.echo(f"SketchWatch data in {data_dir}")
    if credentials:
        username, password, key = credentials
        click.echo("First run: created an admin login and an API key. They are shown only now:")
        click.echo(f"  username: {username}")
        click.echo(f"  password: {password}")
        click.echo(f"  API key:  {key}")
    else:
        click.echo("Log in with an existing user (add one with `sketchwatch users create`).")
    sys.stdout.flush()

    supervisor = Supervisor()
    supervisor.install_signal_handlers()
    supervisor.start("web", serve_argv(host, port, workers=1, threads=4), env)
    supervisor.start("worker", worker_argv(concurrency, True, settings.log_level, data_dir), env)
    if supervisor.wait_http(url + "healthz", timeout_s=60):
        click.echo(f"SketchWatch is running at {url}  (Ctrl-C to stop)")
        sys.stdout.flush()
    elif not supervisor.stop_requested:
        click.echo("the web server did not come up within 60 s", err=True)
        supervisor.stop()
        raise SystemExit(1)
    code = supervisor.run()
    click.echo("SketchWatch stopped")
    raise SystemExit(code)


if __name__ == "__main__":
    main()
