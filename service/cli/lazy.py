"""A click group with commands imported only when used (the pattern of click's docs)."""

from __future__ import annotations

import importlib

import click


class LazyGroup(click.Group):
    """A group that also lists commands given as ``{name: "module:attribute"}``, imported on first use.

    ``sketchwatch bench`` lives in the ``bench`` package, which nothing outside ``bench`` imports: the
    command object is fetched with importlib only when it runs or its help is shown.
    """

    def __init__(self, *args, lazy_commands: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Eager and lazy command names, sorted together."""
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The named command, importing it first if it is a lazy one."""
        if cmd_name in self.lazy_commands and cmd_name not in self.commands:
            self.add_command(self._load(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def _load(self, cmd_name: str) -> click.Command:
        """Import ``module:attribute`` of a lazy command and check that it is a click command."""
        module_name, _, attribute = self.lazy_commands[cmd_name].partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy_commands[cmd_name]} is not a click command")
        return command
