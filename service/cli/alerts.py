"""``sketchwatch alerts``: alert rules and their webhooks (create, list, delete, test).

    sketchwatch alerts create --name spike --metric flag_rate --above 0.5 --window 60 --min-count 20 \\
        --webhook https://hooks.example.com/x --secret S
    sketchwatch alerts list
    sketchwatch alerts test --name spike
    sketchwatch alerts delete --name spike
"""

from __future__ import annotations

from contextlib import contextmanager

import click

from service.cli.common import db_session, load_settings


@click.group("alerts")
def alerts_group() -> None:
    """Alert rules: a metric over a window against a bound, notifying signed webhooks."""


@alerts_group.command("create")
@click.option("--name", required=True, help="The rule's name (unique).")
@click.option("--metric", required=True, type=click.Choice(["flag_rate", "volume", "drift", "queue_lag", "failed"]))
@click.option("--above", type=float, default=None, help="Fire when the value is above this bound.")
@click.option("--below", type=float, default=None, help="Fire when the value is below this bound.")
@click.option("--window", "window_s", required=True, type=click.IntRange(1), help="Trailing window, in seconds.")
@click.option("--min-count", default=0, show_default=True, type=click.IntRange(0),
              help="Fewest sketches in the window for the rule to be judged (not used by volume).")  # fmt: skip
@click.option("--client", default=None, help="Only this client's sketches (default: every client's).")
@click.option("--webhook", "urls", multiple=True, required=True, help="A URL to POST notifications to (repeatable).")
@click.option("--secret", "secrets_", multiple=True,
              help="The HMAC secret of each --webhook, in order (default: generated and printed once).")  # fmt: skip
def alerts_create(name, metric, above, below, window_s, min_count, client, urls, secrets_) -> None:
    """Create an alert rule; its webhook URLs must pass the SSRF policy (SKETCHWATCH_WEBHOOK_ALLOWLIST)."""
    from service.core import alerts, webhooks

    if (above is None) == (below is None):
        raise click.UsageError("give exactly one of --above and --below")
    if secrets_ and len(secrets_) != len(urls):
        raise click.UsageError("give one --secret per --webhook, or none to have them generated")
    generated = not secrets_
    secrets_ = secrets_ or tuple(alerts.new_secret() for _ in urls)
    settings = load_settings()
    try:
        allowlist = webhooks.parse_allowlist(settings.webhook_allowlist)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    spec = alerts.RuleSpec(
        name=name, metric=metric, direction="above" if above is not None else "below",
        bound=above if above is not None else below, window_s=window_s, min_count=min_count, client=client,
        webhooks=tuple(zip(urls, secrets_)),
    )  # fmt: skip
    try:
        spec = alerts.check_spec(spec, allowlist)
        with db_session() as session:
            rule = alerts.create_rule(session, spec, "cli")
            text = alerts.describe(rule)
    except alerts.RuleError as exc:
        raise click.ClickException(f"--{exc.field.replace('_', '-')}: {exc.message}") from None
    click.echo(f"created alert rule {spec.name!r}: {text}")
    if generated:
        click.echo("webhook secrets (shown only now):")
        for url, secret in spec.webhooks:
            click.echo(f"  {url}\t{secret}")


@alerts_group.command("list")
def alerts_list() -> None:
    """List the rules: name, condition, state, last value, webhooks (tab-separated)."""
    from service.core import alerts

    with db_session() as session:
        rows = [
            (r.name, alerts.describe(r), r.state if r.enabled else "paused",
             "-" if r.last_value is None else f"{r.last_value:.6g}", ",".join(h.url for h in r.webhooks))
            for r in alerts.list_rules(session)
        ]  # fmt: skip
    for row in rows:
        click.echo("\t".join(row))


@alerts_group.command("delete")
@click.option("--name", required=True, help="The rule to delete (its history stays).")
def alerts_delete(name: str) -> None:
    """Delete a rule and its webhooks; its notifications stay in the history."""
    from service.core import alerts

    with db_session() as session:
        rule = alerts.rule_named(session, name)
        if rule is None:
            raise click.ClickException(f"no alert rule named {name!r}")
        alerts.delete_rule(session, rule)
    click.echo(f"deleted alert rule {name!r}")


@alerts_group.command("test")
@click.option("--name", required=True, help="The rule whose webhooks get a test notification.")
def alerts_test(name: str) -> None:
    """Send a test notification (state "test") to every webhook of a rule now, and show each answer."""
    from service.core import alerts

    settings = load_settings()
    with db_session() as session:
        rule = alerts.rule_named(session, name)
        if rule is None:
            raise click.ClickException(f"no alert rule named {name!r}")
        note = alerts.test_notification(session, settings, rule)
        deliveries = [(d.id, d.url) for d in note.deliveries]
    failed = 0
    with _session_scope(settings) as scope:
        for delivery_id, url in deliveries:
            outcome = alerts.deliver(scope, settings, delivery_id, 0)
            result = outcome.result if outcome else None
            if result is not None and result.ok:
                click.echo(f"{url}\tHTTP {result.status_code} in {result.duration_ms:.0f} ms")
                continue
            failed += 1
            detail = result.error if result is not None else "not sent"
            retry = " (the alerts worker retries it)" if outcome and outcome.retry_in is not None else ""
            click.echo(f"{url}\tfailed: {detail}{retry}", err=True)
    if failed:
        raise SystemExit(1)


@contextmanager
def _session_scope(settings):
    """A ``session_scope`` factory on a pool-less engine, for delivering from the CLI."""
    from sqlalchemy.orm import Session
    from sqlalchemy.pool import NullPool

    from service.core.db import make_engine

    engine = make_engine(settings.database_url, poolclass=NullPool)

    @contextmanager
    def scope():
        with Session(engine, expire_on_commit=False) as session, session.begin():
            yield session

    try:
        yield scope
    finally:
        engine.dispose()
