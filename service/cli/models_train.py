"""``sketchwatch models train --from-reviews``: queue a training run from reviewers' verdicts."""

from __future__ import annotations

import getpass
import json
import sys
import time

import click

from service.cli.common import db_session, load_settings

POLL_S = 1.0


@click.command("train")
@click.option("--from-reviews", "from_reviews", is_flag=True,
              help="Train from the base data plus the staff-reviewed sketches (the only source so far).")
@click.option("--wait", is_flag=True, help="Wait for the training, printing its progress; exit 1 if it fails.")
@click.option("--timeout", default=3600.0, show_default=True, type=click.FloatRange(min=1.0),
              help="With --wait: give up waiting after this many seconds (exit 2; the run goes on).")
@click.option("--run", "run_id", default=None, type=click.IntRange(1),
              help="Show (with --wait: follow) an existing training run instead of starting one.")
@click.option("--by", "actor", default=None, help="Who asks, as recorded on the run [default: cli:<login name>].")
@click.option("--json", "as_json", is_flag=True, help="Print the run (and its candidate) as one JSON object.")
def train_command(from_reviews: bool, wait: bool, timeout: float, run_id: int | None, actor: str | None,
                  as_json: bool) -> None:
    """Train a candidate model from the base data and reviewed sketches (on the training worker's queue)."""
    from service.core import training_runs

    if not from_reviews and run_id is None:
        raise click.UsageError("say where the training data comes from: --from-reviews (or follow a run: --run ID)")
    settings = load_settings()
    info = _echo_err if as_json else click.echo
    if run_id is None:
        with db_session() as session:
            try:
                run = training_runs.start_from_reviews(session, settings, actor or f"cli:{_login()}")
            except training_runs.NotEnoughReviews as exc:
                raise click.ClickException(str(exc)) from None
            except Exception as exc:  # noqa: BLE001 - a broker error, after the run was marked failed
                raise click.ClickException(f"could not queue the training run: {type(exc).__name__}: {exc}") from None
            run_id = run.id
        info(f"training run {run_id} queued on the training queue (run by `sketchwatch worker --training`)")
    else:
        with db_session() as session:
            if training_runs.get(session, run_id) is None:
                raise click.BadParameter(f"no training run {run_id}", param_hint="--run")
    if not wait:
        with db_session() as session:
            final = training_runs.to_dict(training_runs.get(session, run_id))
        _print_result(final, _candidate(settings, final.get("candidate_version")), as_json)
        if final["status"] == "failed":
            raise SystemExit(1)
        return
    final = _wait(run_id, timeout, info)
    candidate = _candidate(settings, final.get("candidate_version"))
    _print_result(final, candidate, as_json)
    if final["status"] != "succeeded":
        raise SystemExit(2 if final["status"] in ("queued", "running") else 1)


def _wait(run_id: int, timeout: float, info) -> dict:
    """Poll the run until it ends or ``timeout`` passes, printing a line whenever its progress changes."""
    from service.core import training_runs

    deadline = time.monotonic() + timeout
    last = None
    while True:
        with db_session() as session:
            run = training_runs.to_dict(training_runs.get(session, run_id))
        line = _progress_line(run)
        if line != last:
            info(line)
            last = line
        if run["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            return run
        time.sleep(POLL_S)


def _progress_line(run: dict) -> str:
    """One line of progress: status, attempt, epoch, loss and ETA."""
    parts = [f"run {run['id']}: {run['status']}"]
    if run["attempts"] and run["attempts"] > 1:
        parts.append(f"attempt {run['attempts']}")
    if run["epochs"]:
        parts.append(f"epoch {run['epoch']}/{run['epochs']}")
    if run["loss"] is not None:
        parts.append(f"loss {run['loss']:.4f}")
    if run["status"] == "running" and run["eta_s"] is not None:
        parts.append(f"ETA {run['eta_s']:.0f} s")
    return ", ".join(parts)


def _candidate(settings, version: str | None) -> dict | None:
    """The registered candidate's version, artifact URI and local path."""
    if not version:
        return None
    from service.core import model_store, registry

    with db_session() as session:
        mv = registry.get(session, version)
        if mv is None:
            return None
        return {"version": mv.version, "status": mv.status, "threshold": mv.threshold,
                "artifact_uri": mv.artifact_uri,
                "artifact_path": str(model_store.local_path(settings, mv.artifact_uri))
                if not model_store.is_url(mv.artifact_uri) else None,
                "metrics": {k: mv.metrics.get(k) for k in ("reviewed_heldback",)} if mv.metrics else {}}  # fmt: skip


def _print_result(run: dict, candidate: dict | None, as_json: bool) -> None:
    """The run's outcome: JSON, or readable lines (the candidate's version and artifact path)."""
    if as_json:
        click.echo(json.dumps({"run": run, "candidate": candidate}))
        return
    if run["status"] == "failed":
        click.echo(f"training run {run['id']} failed: {run['error']}", err=True)
    elif candidate:
        click.echo(f"candidate {candidate['version']} (threshold {candidate['threshold']:.4f})")
        click.echo(f"artifact: {candidate['artifact_path'] or candidate['artifact_uri']}")
        click.echo(f"next: `sketchwatch models shadow {candidate['version']}` to compare it on live traffic")
    elif run["status"] in ("queued", "running"):
        click.echo(f"run {run['id']} is {run['status']}; follow it with `sketchwatch models train --run {run['id']} "
                   "--wait` or on the dashboard's models page")


def _echo_err(line: str) -> None:
    click.echo(line, err=True)
    sys.stderr.flush()


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "unknown"
