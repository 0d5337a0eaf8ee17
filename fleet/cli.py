"""The `fleet` command line: the group, its error handling, and the subcommands of
`fleet.commands` (actions, views, servers, tools) added to it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import redis

from fleet.client import refused
from fleet.commands import actions, cost, prices, servers, tools, views
from fleet.commands.common import err
from fleet.connection import access_error
from fleet.errors import FleetError


class FleetGroup(click.Group):
    """Turns FleetError into `error: ...` and exit code 2 instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FleetError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # refused, broken, or silent (fleet.connection)
            why = access_error(exc) or f"cannot reach Redis: {exc}"  # a wrong password, a rejected certificate
            err.print(f"[red]error:[/red] {why}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except redis.ResponseError as exc:
            err.print(f"[red]error:[/red] {access_error(exc) or refused(exc)}", highlight=False, soft_wrap=True)
            sys.exit(2)


@click.group(cls=FleetGroup)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), envvar="FLEET_CONFIG",
              help="cluster spec file (default: $FLEET_CONFIG or ./fleet.toml)")
@click.version_option(package_name="fleet")
@click.pass_context
def main(ctx: click.Context, config_file: str | None) -> None:
    """Fleet keeps fleets of task-queue workers at the size you ask for."""
    ctx.obj = str(Path(config_file).resolve()) if config_file else None


for _command in (*actions.COMMANDS, *servers.COMMANDS, *views.COMMANDS, *prices.COMMANDS, *cost.COMMANDS,
                 *tools.COMMANDS):
    main.add_command(_command)


if __name__ == "__main__":
    main()
