"""``sketchwatch serve``, ``worker`` and ``up``: the web server, the scoring worker and the zero-setup mode.

``serve`` and ``worker`` exec the real programs (granian, celery) so signals reach them directly; ``up``
sets up SQLite, the first login and key, and supervises both (``service.runner``). The command lines are
the stack harness's (``service.stack``), so tests and the bench start exactly what these commands start;
the worker is only ever started by command line: the CLI never imports the ``worker`` package.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import click

from service.cli.common import db_session, load_settings
from service.stack import alerts_worker_argv, serve_argv, training_worker_argv, worker_argv
from service.stack.commands import ALERTS_THREADS

SECRET_KEY_FILE = "secret_key"
READY_TIMEOUT_S = 60


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64), help="Web server processes.")
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1, 64), help="Threads per process.")
@click.argument("granian_args", nargs=-1, type=click.UNPROCESSED)
def serve(host: str, port: int, workers: int, threads: int, granian_args: tuple[str, ...]) -> None:
    """Run the web service with granian (extra arguments go to granian)."""
    load_settings()  # fail here, readably, rather than in every server process
    argv = serve_argv(host, port, workers, threads, granian_args)
    os.execv(argv[0], argv)


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--concurrency", "-c", type=click.IntRange(1, 256), default=None,
              help="Pool processes [default: CPUs]; with --alerts, threads [4].")  # fmt: skip
@click.option("--beat", is_flag=True, help="Also run the scheduler (sweeper, alerts, rollup); run it in ONE worker only.")
@click.option(
    "--alerts", is_flag=True,
    help="Run the alerts worker instead (alert rules, webhooks, the hourly rollup; no model): run one beside the scoring workers.",
)  # fmt: skip
@click.option(
    "--training", is_flag=True,
    help="Run the training worker instead (training from reviews, one at a time; no scoring model): run one.",
)  # fmt: skip
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(concurrency: int | None, beat: bool, alerts: bool, training: bool, celery_args: tuple[str, ...]) -> None:
    """Run the Celery scoring worker, or the alerts or training worker (extra arguments go to celery worker)."""
    settings = load_settings()
    if alerts and training:
        raise click.UsageError("--alerts and --training start different workers: choose one")
    if training and (beat or concurrency):
        raise click.UsageError("the training worker runs one training at a time, without beat: drop --beat/--concurrency")
    if beat:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    if training:
        argv = training_worker_argv(settings.log_level, celery_args)
    elif alerts:
        argv = alerts_worker_argv(settings.log_level, beat, settings.data_dir, celery_args, threads=concurrency or ALERTS_THREADS)
    else:
        argv = worker_argv(concurrency, beat, settings.log_level, settings.data_dir, celery_args)
    os.execv(argv[0], argv)


def persistent_secret(data_dir: Path) -> str:
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


def zero_setup_env(settings, data_dir: Path) -> dict[str, str]:
    """The environment of ``up``'s children: this one plus the settings every process must share."""
    env = dict(os.environ)
    env.update(
        SKETCHWATCH_DATA_DIR=str(data_dir),
        SKETCHWATCH_DATABASE_URL=settings.database_url,
        SKETCHWATCH_BROKER_URL=settings.broker_url,
        # One key for every process, kept on disk: sessions stay valid across workers and restarts.
        SKETCHWATCH_SECRET_KEY=settings.secret_key
        if os.environ.get("SKETCHWATCH_SECRET_KEY")
        else persistent_secret(data_dir),
    )
    return env


def _check_model(model_dir: str | None) -> None:
    """Refuse to start ``up`` (before anything is set up) when the scoring model cannot be loaded."""
    from models.artifact import ArtifactError, check_artifact

    try:
        check_artifact(model_dir)
    except ArtifactError as exc:
        raise click.ClickException(f"the scoring model is unavailable: {exc}") from None


def _print_credentials(credentials: tuple[str, str, str] | None) -> None:
    """Show the first run's admin login and API key once, or say how to log in."""
    if credentials:
        username, password, key = credentials
        click.echo("First run: created an admin login and an API key. They are shown only now:")
        click.echo(f"  username: {username}")
        click.echo(f"  password: {password}")
        click.echo(f"  API key:  {key}")
    else:
        click.echo("Log in with an existing user (add one with `sketchwatch users create`).")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--concurrency", default=1, show_default=True, type=click.IntRange(1, 64), help="Scoring processes.")
def up(host: str, port: int, concurrency: int) -> None:
    """Zero-setup mode: SQLite + a file broker in the data dir, web + worker + beat + alerts + training; Ctrl-C stops all."""
    from service.core.accounts import first_run_credentials
    from service.core.migrate import upgrade
    from service.runner import Supervisor

    settings = load_settings()
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    _check_model(settings.model_dir)
    upgrade(settings.database_url)
    with db_session() as session:
        credentials = first_run_credentials(session)
    env = zero_setup_env(settings, data_dir)
    url = f"http://{host}:{port}/"
    click.echo(f"SketchWatch data in {data_dir}")
    _print_credentials(credentials)
    sys.stdout.flush()

    supervisor = Supervisor()
    supervisor.install_signal_handlers()
    supervisor.start("web", serve_argv(host, port, workers=1, threads=4), env)
    supervisor.start("worker", worker_argv(concurrency, True, settings.log_level, data_dir), env)
    supervisor.start("alerts", alerts_worker_argv(settings.log_level), env)
    supervisor.start("training", training_worker_argv(settings.log_level), env)
    if supervisor.wait_http(url + "healthz", timeout_s=READY_TIMEOUT_S):
        click.echo(f"SketchWatch is running at {url}  (Ctrl-C to stop)")
        sys.stdout.flush()
    elif not supervisor.stop_requested:
        click.echo(f"the web server did not come up within {READY_TIMEOUT_S} s", err=True)
        supervisor.stop()
        raise SystemExit(1)
    code = supervisor.run()
    click.echo("SketchWatch stopped")
    raise SystemExit(code)
