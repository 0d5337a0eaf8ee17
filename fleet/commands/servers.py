"""What serves until Ctrl-C: `fleet console` (the web console) and `fleet metrics` (Prometheus)."""

from __future__ import annotations

import os

import click

from fleet.client import masked
from fleet.commands.common import chosen_config, console, ctrl_c_stops
from fleet.connection import connect
from fleet.errors import FleetError
from fleet.runtime import resolve_redis_url


@click.command("console")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on; any but loopback needs FLEET_CONSOLE_TOKEN")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="port (0: a free one)")
@click.option("--read-only", is_flag=True, help="show everything, allow no action")
def console_cmd(host: str, port: int, read_only: bool) -> None:
    """Serve the web console (clusters, handles, events, actions; JSON on every route) until Ctrl-C."""
    from fleet.console.app import ConsoleSettings, create_app, is_loopback, serve

    config = chosen_config()
    token = os.environ.get("FLEET_CONSOLE_TOKEN") or None
    if not is_loopback(host) and not token:
        raise FleetError(f"the console on {host} needs authentication: set FLEET_CONSOLE_TOKEN in the environment "
                         "(never in the config file), or listen on 127.0.0.1")
    url = resolve_redis_url(config)
    server = serve(create_app(config, url, ConsoleSettings(token=token, read_only=read_only)), host, port)
    auth = "token from FLEET_CONSOLE_TOKEN" if token else "no authentication (loopback only)"
    console.print(f"console of fleet {config.fleet.id} at http://{host}:{server.effective_port}/ ({auth}"
                  f"{', read-only' if read_only else ''}); Redis {masked(url)}", highlight=False)
    ctrl_c_stops()
    try:
        server.run()
    except KeyboardInterrupt:
        server.close()


@click.command("metrics")
@click.option("--port", type=int, default=9100, show_default=True, help="port of the /metrics endpoint")
@click.option("--addr", default="127.0.0.1", show_default=True, help="address to listen on (0.0.0.0: all)")
def metrics(port: int, addr: str) -> None:
    """Serve the fleet's Prometheus metrics (read from Redis at each scrape) until Ctrl-C."""
    from fleet.metrics import serve

    config = chosen_config()
    server, thread = serve(config, connect(resolve_redis_url(config)), port, addr)
    console.print(f"metrics of fleet {config.fleet.id} at http://{addr}:{server.server_port}/metrics")
    ctrl_c_stops()
    try:
        thread.join()
    except KeyboardInterrupt:
        server.shutdown()


COMMANDS = (console_cmd, metrics)
