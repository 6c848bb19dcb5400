"""``sketchwatch users``: dashboard logins."""

from __future__ import annotations

import click

from service.cli.common import db_session

MIN_PASSWORD_LENGTH = 8


@click.group("users")
def users_group() -> None:
    """Dashboard logins."""


def _check_password(_ctx, _param, value: str) -> str:
    """Click callback: refuse passwords shorter than MIN_PASSWORD_LENGTH."""
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
    from service.core.accounts import create_user, username_taken

    username = username.strip()
    if not username or len(username) > 100 or any(ch.isspace() for ch in username):
        raise click.BadParameter("must be 1-100 characters without spaces", param_hint="--username")
    with db_session() as session:
        if username_taken(session, username):
            raise click.ClickException(f"user {username!r} already exists")
        create_user(session, username, password, role)
    click.echo(f"created {role} {username!r}")


@users_group.command("list")
def users_list() -> None:
    """List dashboard users."""
    from sqlalchemy import select

    from service.core.schema import User

    with db_session() as session:
        rows = session.execute(select(User.username, User.role, User.active).order_by(User.username)).all()
    for row in rows:
        click.echo(f"{row.username}\t{row.role}\t{'active' if row.active else 'inactive'}")
