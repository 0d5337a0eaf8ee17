"""The web console: every cluster at a glance, one cluster's handles and events, and the
operator's actions, server-rendered by Flask (no build step; the one script is vendored in
`static/`). Every route answers JSON too (`Accept: application/json`, or `?format=json`).

Routes:
  GET  /                                  every cluster (JSON: the list `fleet status --json` prints)
  GET  /clusters/<c>                      handles, events (`?kind=`), the autoscaler's last decision
                                          (JSON: what `fleet status <c> --json` prints)
  GET  /clusters/<c>/events               the newest events, `?kind=` filters (JSON: a list)
  POST /clusters/<c>/scale                `workers`: fleet.scale
  POST /clusters/<c>/clear                fleet.clear
  POST /clusters/<c>/handles/<h>/hold     `hold` (1 or 0): fleet.hold
  POST /clusters/<c>/handles/<h>/drain    fleet.drain_handle
  POST /clusters/<c>/handles/<h>/kill     fleet.kill_handle, with `confirm=1` (else: a confirmation page)
  GET  /healthz                           "ok", or 503 and what is down (no auth)

Layout: `create_app` only composes; the routes are blueprints of small views (`views`: the
reads, `actions`: the POSTs), `guard` holds the app-wide hooks (authentication, CSRF, headers,
errors), `context` the state and answers they share, `charts` what the pages draw.

Contract:
* The console reads Redis (`fleet.control.queries`) and sends the public tasks
  (`fleet.client`), exactly as the CLI does: the same validation, the same errors, shown on the
  page (HTML) or as `{"error": ...}` with 400 (404 for an unknown cluster).
* With a token (`ConsoleSettings.token`, from FLEET_CONSOLE_TOKEN) every route but /healthz needs
  it: HTTP basic auth with it as the password (any user), or `Authorization: Bearer <token>`.
  `fleet console` refuses a non-loopback address without one.
* Every POST carries a CSRF token (Flask-WTF), unless it is authenticated by a bearer token,
  which no browser sends on its own. Read-only mode refuses every POST (403).
* No container env value is ever rendered, only its names. Security headers on every answer.
* Outages (fleet.console.health): Redis unreachable makes every route but /healthz answer 503
  "Redis at <masked url> unreachable: ..."; no recent sweep makes the pages and their JSON
  answer 503 "no control plane answered ..." with what Redis holds (HTML: below the message;
  JSON: under `stale`); /healthz answers 503 with the same reason. An action checks Redis with
  a PING first and answers within `action_timeout` (+2 s); at most `max_actions` wait at once,
  more are refused at once ("busy"), so reads always keep threads of their own. One log line
  per outage, not a traceback per request.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from flask import Flask
from flask_wtf.csrf import CSRFProtect

from fleet.config import FleetConfig
from fleet.connection import connect
from fleet.console.actions import bp as actions_bp
from fleet.console.context import EXTENSION, Console, ConsoleSettings
from fleet.console.guard import bp as guard_bp
from fleet.console.health import Actions, Health, Noted
from fleet.console.views import bp as views_bp
from fleet.control.queries import Queries


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: the settings of a console created without any (read once, when this module is imported)
DEFAULTS = ConsoleSettings()


def create_app(config: FleetConfig, url: str, settings: ConsoleSettings = DEFAULTS) -> Flask:
    """The console of the fleet `config` declares, on the Redis at `url`: its state, under
    `app.extensions`, and the blueprints of `guard`, `views` and `actions`."""
    app = Flask(__name__)  # this package's templates/ and static/
    app.config.update(
        SECRET_KEY=os.environ.get("FLEET_CONSOLE_SECRET") or os.urandom(32),
        SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
        WTF_CSRF_CHECK_DEFAULT=False,  # checked by guard, except for bearer-token scripts
        WTF_CSRF_TIME_LIMIT=None,  # valid for the session: a page left open still works
    )
    app.extensions[EXTENSION] = Console(
        config=config, settings=settings, queries=Queries.including_retired(config, connect(url)),
        health=Health(config, url), actions=Actions(config, url, settings.action_timeout, settings.max_actions),
        noted=Noted(), csrf=CSRFProtect(app), refresh=settings.refresh or min(config.fleet.sweep_interval, 2.0))
    for blueprint in (guard_bp, views_bp, actions_bp):
        app.register_blueprint(blueprint)
    return app


def serve(app: Flask, host: str, port: int, threads: int = 8) -> Any:
    """A waitress server for `app` on host:port (0: a free port), not yet running: call `.run()`
    (or `.close()`); `.effective_port` is the port it listens on. Actions take at most
    `ConsoleSettings.max_actions` (2) of its threads; the others are the pages'."""
    from waitress.server import create_server

    return create_server(app, host=host, port=port, threads=threads, ident="fleet-console")


__all__ = ["ConsoleSettings", "create_app", "is_loopback", "serve"]
