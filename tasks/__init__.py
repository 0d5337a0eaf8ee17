"""Fleet's Celery app: `celery -A tasks worker` runs a control-plane worker, `celery -A tasks beat`
the one beat. Public task names: `fleet.scale`, `fleet.status` (see tasks.public)."""

import sys

import click

from fleet.errors import FleetError
from tasks.app import app, celery_settings

__all__ = ["app"]


def _refuse_a_bad_config() -> None:
    """Under the `celery` command line (worker, beat, flower, ...), a config that cannot be
    loaded (or no Redis to use) is one line `error: ...` on stderr and exit status 2, as with
    `fleet up`, instead of a traceback from inside Celery's option parsing. An app imported any
    other way loads its config lazily, as before."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.find_root().command.name != "celery":
        return
    try:
        celery_settings()
    except FleetError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


_refuse_a_bad_config()
