"""``sketchwatch models``: the model registry (list, register, shadow, promote, rollback) and training from reviews.

    sketchwatch models list [--json]
    sketchwatch models register DIR [--threshold T] [--parent VERSION] [--json]
    sketchwatch models shadow VERSION | --stop [--json]
    sketchwatch models promote VERSION [--rescore] [--yes] [--json]
    sketchwatch models rollback [--yes] [--json]

The registry commands live here; ``train`` lives in :mod:`service.cli.models_train` and is imported only when used.
Promote and rollback change every worker's model within seconds and the flags of every new sketch: they ask
for confirmation unless ``--yes`` is given.
"""

from __future__ import annotations

import json

import click

from service.cli.common import db_session, load_settings
from service.cli.lazy import LazyGroup

LAZY_COMMANDS = {"train": "service.cli.models_train:train_command"}
CLI_ACTOR = "cli"

json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
yes_option = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")


@click.group("models", cls=LazyGroup, lazy_commands=LAZY_COMMANDS)
def models_group() -> None:
    """The model registry: versions, shadow comparison, promote and roll back."""


def _echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


@models_group.command("list")
@json_option
def models_list(as_json: bool) -> None:
    """List the registered versions (newest first) and the latest re-scoring job's progress."""
    from service.core import registry

    settings = load_settings()
    with db_session() as session:
        try:
            registry.ensure_bootstrapped(session, settings)
        except registry.RegistryError as exc:
            raise _fail(exc) from None
        versions = [registry.to_dict(mv) for mv in registry.list_versions(session)]
        progress = registry.rescore_progress(session)
    if as_json:
        _echo_json({"versions": versions, "rescore": progress})
        return
    click.echo("version\tstatus\tthreshold\tparent\tcreated_at\tcreated_by\tartifact")
    for v in versions:
        click.echo("\t".join(str(x) if x is not None else "-" for x in (
            v["version"], v["status"], f"{v['threshold']:.6g}", v["parent_version"], v["created_at"],
            v["created_by"], v["artifact_uri"],
        )))  # fmt: skip
    if progress is not None:
        click.echo(_progress_line(progress))


def _progress_line(p: dict) -> str:
    return f"re-scoring by {p['model_version']}: {p['status']}, {p['done']} of {p['total']} ({p['fraction']:.0%})"


@models_group.command("register")
@click.argument("artifact_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--threshold", type=float, default=None,
              help="The version's flag threshold (default: suggested_threshold in its model.json).")  # fmt: skip
@click.option("--parent", "parent_version", default=None, help="The version it was derived from.")
@json_option
def models_register(artifact_dir: str, threshold: float | None, parent_version: str | None, as_json: bool) -> None:
    """Copy an artifact folder (made by `sketchwatch train`) into the model store and register it as a candidate."""
    from models.artifact import ArtifactError, read_meta
    from service.core import model_store, registry

    settings = load_settings()
    try:
        meta = read_meta(artifact_dir)
    except ArtifactError as exc:
        raise _fail(exc) from None
    with db_session() as session:
        try:
            registry.ensure_bootstrapped(session, settings)
            if registry.get(session, meta["version"]) is not None:
                raise registry.RegistryError(f"model version {meta['version']!r} is already registered")
            uri = model_store.put(settings, artifact_dir, meta["version"])
            mv = registry.register(
                session, version=meta["version"], artifact_uri=uri, parent_version=parent_version,
                created_by=CLI_ACTOR, metrics=meta.get("metrics") if isinstance(meta.get("metrics"), dict) else None,
                data_fingerprint=registry.fingerprint_from_meta(meta),
                threshold=threshold if threshold is not None else meta["suggested_threshold"], settings=settings,
            )  # fmt: skip
        except (registry.RegistryError, model_store.StoreError) as exc:
            raise _fail(exc) from None
        out = registry.to_dict(mv)
    if as_json:
        _echo_json(out)
    else:
        click.echo(
            f"registered {out['version']} as a candidate (threshold {out['threshold']:.6g}): {out['artifact_uri']}"
        )


@models_group.command("shadow")
@click.argument("version", required=False)
@click.option("--stop", is_flag=True, help="Stop shadow scoring (the shadow version becomes a candidate again).")
@json_option
def models_shadow(version: str | None, stop: bool, as_json: bool) -> None:
    """Score every new sketch with VERSION alongside the active model (its scores kept apart; flags unchanged)."""
    from service.core import registry

    if stop == (version is not None):
        raise click.UsageError("give a VERSION or --stop")
    settings = load_settings()
    with db_session() as session:
        try:
            registry.ensure_bootstrapped(session, settings)
            mv = registry.set_shadow(session, version, CLI_ACTOR)
        except registry.RegistryError as exc:
            raise _fail(exc) from None
        out = registry.to_dict(mv) if mv is not None else None
    if as_json:
        _echo_json({"shadow": out})
    elif out is None:
        click.echo("shadow scoring stopped")
    else:
        click.echo(f"{out['version']} now scores every new sketch in shadow (threshold {out['threshold']:.6g})")


@models_group.command("promote")
@click.argument("version")
@click.option("--rescore", is_flag=True, help="Also re-score the stored sketches with it, in the background.")
@yes_option
@json_option
def models_promote(version: str, rescore: bool, yes: bool, as_json: bool) -> None:
    """Make VERSION the active model: every worker switches within seconds and its own threshold applies."""
    from service.core import registry

    settings = load_settings()
    with db_session() as session:
        try:
            registry.ensure_bootstrapped(session, settings)
            target = registry.require(session, version)
            current = registry.active(session)
        except registry.RegistryError as exc:
            raise _fail(exc) from None
        if target.status == "active":
            raise click.ClickException(f"model version {version!r} is already active")
        if not yes:
            also = " and re-score the stored sketches" if rescore else ""
            click.confirm(
                f"Promote {version} (threshold {target.threshold:.6g}) to active, replacing "
                f"{current.version if current else 'nothing'}{also}?",
                abort=True, err=True,
            )  # fmt: skip
        try:
            mv = registry.promote(session, version, CLI_ACTOR, settings=settings)
            job = registry.start_rescore(session, version, CLI_ACTOR) if rescore else None
        except registry.RegistryError as exc:
            raise _fail(exc) from None
        out = {"active": registry.to_dict(mv), "previous": current.version if current else None,
               "rescore": registry.rescore_dict(job) if job is not None else None}  # fmt: skip
    if job is not None:
        _send_rescore(settings, job.id)
    if as_json:
        _echo_json(out)
        return
    click.echo(f"{version} is active (threshold {mv.threshold:.6g}); previous: {out['previous'] or '-'}")
    if job is not None:
        click.echo(f"re-scoring {job.total} stored sketches in the background (sketchwatch models list shows progress)")


@models_group.command("rollback")
@yes_option
@json_option
def models_rollback(yes: bool, as_json: bool) -> None:
    """Make the version active before the current one active again, with the threshold it had."""
    from service.core import registry

    settings = load_settings()
    with db_session() as session:
        try:
            registry.ensure_bootstrapped(session, settings)
            current = registry.active(session)
            target = registry.previous_active(session)
            if not yes:
                click.confirm(f"Roll back from {current.version} to {target.version}?", abort=True, err=True)
            mv = registry.rollback(session, CLI_ACTOR, settings=settings)
        except registry.RegistryError as exc:
            raise _fail(exc) from None
        out = {"active": registry.to_dict(mv), "previous": current.version if current else None}
    if as_json:
        _echo_json(out)
    else:
        threshold = mv.last_threshold if mv.last_threshold is not None else mv.threshold
        click.echo(f"rolled back: {mv.version} is active again (threshold {threshold:.6g}); retired {out['previous']}")


def _send_rescore(settings, job_id: int) -> None:
    """Send the re-scoring job's first task (after the commit); a broker error is a CLI error naming the job."""
    from service.core import registry
    from service.core.celery_app import prepare_broker

    try:
        prepare_broker(settings)
        registry.enqueue_rescore(settings, job_id)
    except Exception as exc:  # noqa: BLE001 - kombu raises many types for an unreachable broker
        raise click.ClickException(
            f"promoted, but re-scoring job {job_id} could not be queued ({type(exc).__name__}: {exc})"
        ) from None
