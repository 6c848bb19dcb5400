"""``sketchwatch retention``: show the retention limits and apply them now.

    sketchwatch retention show [--json]
    sketchwatch retention run [--dry-run] [--json]
"""

from __future__ import annotations

import json

import click

from service.cli.common import db_session, load_settings, redacted


@click.group("retention")
def retention_group() -> None:
    """Retention: how long sketches and their images are kept (set on the dashboard's admin pages)."""


@retention_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print the limits as JSON.")
def retention_show(as_json: bool) -> None:
    """Print the limits in force and where they come from."""
    from service.core import retention

    settings = load_settings()
    with db_session() as session:
        pol = retention.policy(session, settings)
    if as_json:
        click.echo(json.dumps(pol.to_dict()))
        return
    for name, value in pol.limits().items():
        click.echo(f"{name:14} {value if value is not None else 'for ever'}")
    click.echo(f"{'source':14} {pol.source}" + (f" ({pol.updated_by}, {pol.updated_at:%Y-%m-%d %H:%M})" if pol.updated_by else ""))


@retention_group.command("run")
@click.option("--dry-run", is_flag=True, help="Count what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def retention_run(dry_run: bool, as_json: bool) -> None:
    """Apply the retention limits now (beat does this every SKETCHWATCH_RETENTION_INTERVAL_S)."""
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    from service.core import retention
    from service.core.db import make_engine

    settings = load_settings()
    engine = make_engine(settings.database_url, poolclass=NullPool)
    try:
        report = retention.run(engine, settings, dry_run=dry_run, trigger="cli")
    except SQLAlchemyError as exc:
        detail = getattr(exc, "orig", None) or exc
        raise click.ClickException(
            f"database error on {redacted(settings.database_url)}: {type(exc).__name__}: {detail}"
            "\n(has the schema been created? run `sketchwatch db upgrade`)"
        ) from None
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(report.to_dict()))
        return
    click.echo(("would remove" if dry_run else "removed") + ":")
    for kind, count in report.removed.items():
        click.echo(f"  {kind:20} {count:,}")
    for name, cut in report.cutoffs.items():
        click.echo(f"  cutoff {name:13} {cut or '-'}")
    if report.skipped_partitions:
        click.echo(f"  partitions kept (a sketch in them is still queued): {', '.join(report.skipped_partitions)}")
