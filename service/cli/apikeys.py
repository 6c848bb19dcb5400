"""``sketchwatch apikeys``: API keys of submitting clients."""

from __future__ import annotations

import click

from service.cli.common import db_session


@click.group("apikeys")
def apikeys_group() -> None:
    """API keys of submitting clients."""


@apikeys_group.command("create")
@click.option("--name", required=True, help="Client name; shown as the sketches' client.")
@click.option(
    "--admin",
    is_flag=True,
    help="An admin key: reads, lists, reviews and counts every client's sketches (a plain key only its own).",
)
def apikeys_create(name: str, admin: bool) -> None:
    """Create an API key and print it once (only its hash is stored)."""
    from service.core.accounts import api_key_name_taken, create_api_key

    name = name.strip()
    if not name or len(name) > 100:
        raise click.BadParameter("must be 1-100 characters", param_hint="--name")
    with db_session() as session:
        if api_key_name_taken(session, name):
            raise click.ClickException(f"an API key named {name!r} already exists")
        key = create_api_key(session, name, admin=admin)
    # The key alone on stdout, so `KEY=$(sketchwatch apikeys create --name x)` works.
    click.echo(key)
    scope = "admin key (every client's sketches)" if admin else "API key"
    click.echo(f"{scope} {name!r} created; it is shown only now.", err=True)


@apikeys_group.command("revoke")
@click.option("--name", required=True, help="Name of the key to revoke.")
def apikeys_revoke(name: str) -> None:
    """Revoke an API key: requests with it get 401 from now on."""
    from service.core.accounts import api_key_named, revoke_api_key

    with db_session() as session:
        key = api_key_named(session, name)
        if key is None:
            raise click.ClickException(f"no API key named {name!r}")
        if not revoke_api_key(key):
            click.echo(f"API key {name!r} was already revoked at {key.revoked_at:%Y-%m-%d %H:%M:%S}")
            return
    click.echo(f"revoked API key {name!r}")


@apikeys_group.command("list")
def apikeys_list() -> None:
    """List API keys (name, prefix, created, status, and "admin" for admin keys); the keys are not stored."""
    from sqlalchemy import select

    from service.core.schema import ApiKey

    with db_session() as session:
        rows = session.execute(select(ApiKey).order_by(ApiKey.name)).scalars().all()
    for key in rows:
        status = f"revoked {key.revoked_at:%Y-%m-%d %H:%M:%S}" if key.revoked_at else "active"
        scope = "\tadmin" if key.admin else ""
        click.echo(f"{key.name}\t{key.prefix}...\t{key.created_at:%Y-%m-%d %H:%M:%S}\t{status}{scope}")
