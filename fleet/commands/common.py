"""What the `fleet` subcommands share: the config chosen by `fleet --config`, the output
consoles, read-only views, a public task call and Ctrl-C handling."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from fleet.client import PublicTasks
from fleet.config import FleetConfig, config_path, load_config
from fleet.connection import connect
from fleet.control.queries import Queries
from fleet.errors import InvalidRequest
from fleet.requests import DEFAULT_TIMEOUT
from fleet.runtime import resolve_redis_url

console = Console()
err = Console(stderr=True)


def chosen_path() -> Path:
    """The config file: `fleet --config` (or $FLEET_CONFIG), else `fleet.config.config_path()`."""
    ctx = click.get_current_context(silent=True)
    chosen = ctx.find_root().obj if ctx else None
    return Path(chosen) if chosen else config_path()


def chosen_config() -> FleetConfig:
    return load_config(chosen_path())


def views(config: FleetConfig) -> Queries:
    """Read-only views of the fleet in Redis: the CLI sends work only as public tasks."""
    return Queries.including_retired(config, connect(resolve_redis_url(config)))


def call(config: FleetConfig, task: str, *args: Any) -> Any:
    """Send a public task by name to this fleet and wait for its reply (a FleetError if it fails,
    `NotApplied` only when it is sure never to be applied). FLEET_REQUEST_TIMEOUT (seconds,
    default 30) is how long it waits, and when the request expires."""
    raw = os.environ.get("FLEET_REQUEST_TIMEOUT") or str(DEFAULT_TIMEOUT)
    try:
        timeout = float(raw)
    except ValueError:
        timeout = math.nan
    if not 0 < timeout <= 3600:
        raise InvalidRequest(f"FLEET_REQUEST_TIMEOUT must be a number of seconds in (0, 3600], got {raw[:20]!r}")
    return PublicTasks.of(config, resolve_redis_url(config), timeout).call(task, *args)


def ctrl_c_stops() -> None:
    """Ctrl-C (SIGINT) stops a command that runs until Ctrl-C, even if it was started where
    SIGINT is ignored (`cmd &` in a shell without job control)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
