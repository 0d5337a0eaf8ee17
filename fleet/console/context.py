"""What the console's views share: its settings and state (one `Console` per app, under
`app.extensions`), and the answers every view gives the same way: JSON or a page, a failure,
an outage, a page that says when no control plane sweeps."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any, cast

from flask import abort, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFProtect

from fleet.config import ClusterSpec, FleetConfig
from fleet.console.health import Actions, Health, Noted, env_seconds
from fleet.control.queries import Queries
from fleet.errors import UnknownCluster

#: where `create_app` keeps the `Console` of an app
EXTENSION = "fleet_console"
#: the pages whose outage page reloads their live part by itself once it is back
LIVE_PAGES = ("views.overview", "views.cluster_page")


@dataclass(frozen=True)
class ConsoleSettings:
    """`token`: required on every request when set. `read_only`: no actions. `refresh`: seconds
    between the pages' live updates (default: the sweep interval, at most 2 s). `action_timeout`:
    seconds an action waits for the control plane's answer (FLEET_CONSOLE_ACTION_TIMEOUT, 8).
    `max_actions`: actions waiting at once; more are refused as busy (keep it below the server's
    threads: `serve` has 8)."""

    token: str | None = None
    read_only: bool = False
    refresh: float | None = None
    action_timeout: float = field(default_factory=lambda: env_seconds("FLEET_CONSOLE_ACTION_TIMEOUT", 8.0))
    max_actions: int = 2


@dataclass(frozen=True)
class Console:
    """One console app's state: the fleet's config and settings, its reads of Redis, the health
    checks, the actions' bounded pool, the outage log, the CSRF check, the pages' refresh."""

    config: FleetConfig
    settings: ConsoleSettings
    queries: Queries
    health: Health
    actions: Actions
    noted: Noted
    csrf: CSRFProtect
    refresh: float


def console() -> Console:
    """The current app's `Console` (inside a request)."""
    return cast(Console, current_app.extensions[EXTENSION])


def wants_json() -> bool:
    """`?format=json`, or an Accept header that prefers JSON to HTML."""
    if request.args.get("format") == "json":
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]


def bearer_ok() -> bool:
    """The request carries `Authorization: Bearer <the console's token>` (and there is one)."""
    token = console().settings.token
    auth = request.headers.get("Authorization", "")
    return bool(token) and auth.startswith("Bearer ") and hmac.compare_digest(
        auth[len("Bearer "):].encode(), str(token).encode())


def failure(message: str, status: int, back: str | None = None) -> Any:
    """`{"error": message}` with `status` (JSON), an error page (no `back`), or the message
    flashed on page `back` (a 303 there)."""
    if wants_json() or back is None:
        if wants_json():
            return jsonify(error=message), status
        return render_template("error.html", message=message, status=status, fleet=console().config.fleet.id), status
    flash(message, "error")
    return redirect(back, code=303)


def outage(problem: str, what: str) -> Any:
    """503 saying what is down: JSON, a live fragment (console.js shows it in place), or a
    page that recovers by itself once it is back."""
    console().noted.problem(what, problem)
    if wants_json():
        return jsonify(error=problem), 503
    if request.args.get("partial"):
        return render_template("problem.html", problem=problem), 503
    live = (url_for(request.endpoint, partial=1, **(request.view_args or {}))
            if request.endpoint in LIVE_PAGES else None)
    return render_template("outage.html", problem=problem, live=live), 503


def answer(template: str, data: Any, **context: Any) -> Any:
    """The page (or its JSON), with 503 and what is down while no control plane sweeps."""
    c = console()
    problem = c.health.control_plane_problem()
    if wants_json():
        return (jsonify(error=problem, stale=data), 503) if problem else jsonify(data)
    if problem:
        c.noted.problem("control plane", problem)
    else:
        c.noted.over("control plane")
    return render_template(template, problem=problem, **context), 503 if problem else 200


def spec_or_404(cluster: str) -> ClusterSpec:
    """The spec of `cluster` in the console's config, or a 404 that says it is unknown."""
    try:
        return console().config.spec(cluster)
    except UnknownCluster as exc:
        abort(404, description=str(exc))
