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

import hmac
import ipaddress
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from flask import Flask, Response, abort, flash, jsonify, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException

from fleet.config import FleetConfig
from fleet.connection import connect
from fleet.console.health import Actions, Busy, Health, Noted, env_seconds
from fleet.control.queries import Queries
from fleet.errors import FleetError, UnknownCluster
from fleet.model import ClusterState

log = logging.getLogger(__name__)

#: a number of workers as a form sends it: ASCII digits only (str.isdigit takes "²" and "٣"),
#: few enough for int(); fleet.scale itself refuses what is out of the cluster's range
WORKERS = re.compile(r"[0-9]{1,12}")
#: a hold form's value
HOLD = {"1": True, "true": True, "0": False, "false": False}

#: the chart on the overview covers this many seconds
CHART_SECONDS = 3600.0
#: events shown on a cluster page, and searched for the autoscaler's last decision
EVENTS_SHOWN = 100
DECISIONS_SEARCHED = 1000

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


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


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(config: FleetConfig, url: str, settings: ConsoleSettings = ConsoleSettings()) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=os.environ.get("FLEET_CONSOLE_SECRET") or os.urandom(32),
        SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
        WTF_CSRF_CHECK_DEFAULT=False,  # checked below, except for bearer-token scripts
        WTF_CSRF_TIME_LIMIT=None,  # valid for the session: a page left open still works
    )
    csrf = CSRFProtect(app)
    queries = Queries.including_retired(config, connect(url))
    health = Health(config, url)
    actions = Actions(config, url, settings.action_timeout, settings.max_actions)
    noted = Noted()
    refresh = settings.refresh or min(config.fleet.sweep_interval, 2.0)

    def wants_json() -> bool:
        if request.args.get("format") == "json":
            return True
        best = request.accept_mimetypes.best_match(["text/html", "application/json"])
        return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]

    def bearer_ok() -> bool:
        auth = request.headers.get("Authorization", "")
        return bool(settings.token) and auth.startswith("Bearer ") and hmac.compare_digest(
            auth[len("Bearer "):].encode(), str(settings.token).encode())

    @app.before_request
    def guard() -> Any:
        if request.endpoint == "healthz":
            return None
        if settings.token and not bearer_ok():
            basic = request.authorization
            given = (basic.password or "") if basic and basic.type == "basic" else ""
            if not hmac.compare_digest(given.encode(), settings.token.encode()):
                challenge = {"WWW-Authenticate": 'Basic realm="fleet console"'}
                if wants_json():
                    return jsonify(error="authentication required"), 401, challenge
                return Response("authentication required\n", 401, challenge)
        if request.method == "POST":
            if settings.read_only:
                return failure("the console is read-only", 403)
            if not bearer_ok():
                csrf.protect()
        return None

    @app.after_request
    def headers(resp: Response) -> Response:
        resp.headers.update(SECURITY_HEADERS)
        if resp.status_code < 500 and request.endpoint not in ("healthz", "static"):
            noted.over("Redis")  # a page was read: Redis answers again
        return resp

    def failure(message: str, status: int, back: str | None = None) -> Any:
        if wants_json() or back is None:
            if wants_json():
                return jsonify(error=message), status
            return render_template("error.html", message=message, status=status, fleet=config.fleet.id), status
        flash(message, "error")
        return redirect(back, code=303)

    @app.errorhandler(CSRFError)
    def csrf_failed(exc: CSRFError) -> Any:
        return failure(f"refused: {exc.description}", 400)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:  # 404, 405, ...: the same error shape as the others
        return failure(str(exc.description or exc.name), exc.code or 500)

    def outage(problem: str, what: str) -> Any:
        """503 saying what is down: JSON, a live fragment (console.js shows it in place), or a
        page that recovers by itself once it is back."""
        noted.problem(what, problem)
        if wants_json():
            return jsonify(error=problem), 503
        if request.args.get("partial"):
            return render_template("problem.html", problem=problem), 503
        live = (url_for(request.endpoint, partial=1, **(request.view_args or {}))
                if request.endpoint in ("overview", "cluster_page") else None)
        return render_template("outage.html", problem=problem, live=live), 503

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Any:
        if isinstance(exc, HTTPException):
            return http_error(exc)
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            return outage(health.redis_down(exc), "Redis")
        log.exception("console: %s %s failed", request.method, request.path)
        return failure(f"internal error ({type(exc).__name__}); see the console's log", 500)

    def spec_or_404(cluster: str) -> Any:
        try:
            return config.spec(cluster)
        except UnknownCluster as exc:
            abort(404, description=str(exc))

    @app.context_processor
    def helpers() -> dict[str, Any]:
        return {"fleet": config.fleet.id, "read_only": settings.read_only, "refresh_ms": int(refresh * 1000),
                "age": _age, "now": time.time()}

    @app.get("/healthz")
    def healthz() -> Any:
        problem = health.problem()
        return (f"{problem}\n", 503, {"Content-Type": "text/plain; charset=utf-8"}) if problem else "ok\n"

    def answer(template: str, data: Any, **context: Any) -> Any:
        """The page (or its JSON), with 503 and what is down while no control plane sweeps."""
        problem = health.control_plane_problem()
        if wants_json():
            return (jsonify(error=problem, stale=data), 503) if problem else jsonify(data)
        if problem:
            noted.problem("control plane", problem)
        else:
            noted.over("control plane")
        return render_template(template, problem=problem, **context), 503 if problem else 200

    @app.get("/")
    def overview() -> Any:
        names = list(config.clusters)
        if wants_json():
            return answer("", [queries.with_handles(c, st, s) for c, (st, s) in zip(names, queries.detailed(names))])
        now = time.time()
        rows = []
        for c in names:
            s = queries.status(c)
            # the sweep's samples, and the count as it is now, so the line always reaches the present
            samples = [*queries.store.series(c, now - CHART_SECONDS), (now, s["running"], s["desired"])]
            rows.append({"status": s, "chart": sparkline(samples, now) if len(samples) > 1 else "",
                         "axis": axis(samples, now), "reasons": reasons(s)})
        template = "overview_live.html" if request.args.get("partial") else "overview.html"
        return answer(template, None, rows=rows, dead=queries.dead_letters())

    @app.get("/clusters/<cluster>")
    def cluster_page(cluster: str) -> Any:
        spec = spec_or_404(cluster)
        st, status = queries.detailed([cluster])[0]
        if wants_json():
            return answer("", queries.with_handles(cluster, st, status))
        kind = request.args.get("kind", "")
        recent = queries.events(cluster, DECISIONS_SEARCHED)[::-1]  # newest first, read once
        shown = recent[:EVENTS_SHOWN]
        events = [e for e in shown if not kind or e.get("kind") == kind]
        handles = sorted(st.handles.items(), key=lambda hr: hr[1].since, reverse=True)
        template = "cluster_live.html" if request.args.get("partial") else "cluster.html"
        return answer(template, None, c=cluster, spec=spec, s=status, handles=handles, events=events, kind=kind,
                      kinds=sorted({e.get("kind", "") for e in shown}), **desired_story(recent, st),
                      reasons=reasons(status), env_names=sorted(spec.container.env))

    @app.get("/clusters/<cluster>/events")
    def events(cluster: str) -> Any:
        spec_or_404(cluster)
        kind = request.args.get("kind", "")
        return jsonify([e for e in queries.events(cluster, EVENTS_SHOWN) if not kind or e.get("kind") == kind])

    def act(cluster: str, done: Callable[[Any], str], task: str, *args: Any) -> Any:
        spec_or_404(cluster)
        back = url_for("cluster_page", cluster=cluster)
        down = health.redis_problem()  # nothing is sent to a Redis that does not answer a PING
        if down:
            noted.problem("Redis", down)
            return failure(down, 503, back)
        try:
            reply = actions.call(task, cluster, *args)
        except Busy as exc:
            return failure(str(exc), 503, back)
        except FleetError as exc:
            # Redis lost during the call: say so, not Celery's words for it ("... must be restarted")
            down = health.redis_problem()
            stalled = down is None and health.control_plane_problem() is not None
            return failure(down or str(exc), 503 if down or stalled else 400, back)
        if wants_json():
            return jsonify(ok=True, reply=reply)
        flash(done(reply), "ok")
        return redirect(back, code=303)

    @app.post("/clusters/<cluster>/scale")
    def scale(cluster: str) -> Any:
        spec_or_404(cluster)
        raw = (request.form.get("workers") or request.args.get("workers") or "").strip()
        if not WORKERS.fullmatch(raw):
            return failure(f"workers must be a whole number of 0 or more, not {raw[:20]!r}", 400,
                           url_for("cluster_page", cluster=cluster))
        return act(cluster, lambda r: f"desired {r['desired']} (version {r['version']})", "fleet.scale", int(raw))

    @app.post("/clusters/<cluster>/clear")
    def clear(cluster: str) -> Any:
        return act(cluster, lambda r: "cleared" if r["cleared"] else "nothing to clear", "fleet.clear")

    @app.post("/clusters/<cluster>/handles/<handle>/hold")
    def hold(cluster: str, handle: str) -> Any:
        raw = (request.form.get("hold") or request.args.get("hold") or "1").strip().lower()
        if raw not in HOLD:
            spec_or_404(cluster)
            return failure(f"hold must be 1 (hold) or 0 (release), not {raw[:20]!r}", 400,
                           url_for("cluster_page", cluster=cluster))
        on = HOLD[raw]
        return act(cluster, lambda r: f"{handle}: {'held' if r['hold'] else 'released'}", "fleet.hold", handle, on)

    @app.post("/clusters/<cluster>/handles/<handle>/drain")
    def drain(cluster: str, handle: str) -> Any:
        return act(cluster, lambda r: f"{handle}: draining", "fleet.drain_handle", handle)

    @app.post("/clusters/<cluster>/handles/<handle>/kill")
    def kill(cluster: str, handle: str) -> Any:
        """Only with `confirm=1` (the page's script asks first and adds it); without it, a page
        that asks (HTML) or 400 (JSON). Nothing is sent before."""
        spec_or_404(cluster)
        if (request.form.get("confirm") or request.args.get("confirm")) != "1":
            if wants_json():
                return failure("kill needs confirm=1: its workers stop at once, their tasks unfinished", 400)
            return render_template("confirm_kill.html", c=cluster, handle=handle)
        return act(cluster, lambda r: f"{handle}: killed", "fleet.kill_handle", handle)

    return app


def reasons(s: dict[str, Any]) -> list[str]:
    """Why a cluster does not launch (or what else needs a look), in words, as `fleet status`."""
    out = [f"error: {s['error']}"] if s.get("error") else []
    out += [f"at quota for {s['at_quota']:.0f} s more"] if s.get("at_quota") else []
    out += [f"no capacity for {s['no_capacity']:.0f} s more"] if s.get("no_capacity") else []
    out += [f"rate-limited for {s['rate_limited']:.0f} s more"] if s.get("rate_limited") else []
    out += [f"provider not answering: calls held for {s['unresponsive']:.0f} s"] if s.get("unresponsive") else []
    out += [f"recovering after a loss of Redis data for {s['recovering']:.0f} s more"] if s.get("recovering") else []
    out += [f"{s['unknown']} unknown workers being checked"] if s.get("unknown") else []
    out += [f"{s['cleanup']} dead handles' remains still to kill"] if s.get("cleanup") else []
    out += [f"pool {p['pool']} skipped: {p['skipped']}" for p in s.get("pools", []) if p.get("skipped")]
    out += [f"rollout: {s['outdated']} outdated worker(s) being replaced"] if s.get("outdated") else []
    out += ["retired: removed from the config, being drained"] if s.get("retired") else []
    return out


def desired_story(recent: list[dict[str, Any]], st: ClusterState) -> dict[str, Any]:
    """The autoscaler's last decision and, if a request set desired since, that request too
    (with the floor it left), from the newest-first events `recent`."""
    decision = next((e for e in recent
                     if e.get("kind") == "desired" and str(e.get("source", "")).startswith("autoscale")), None)
    latest = next((e for e in recent if e.get("kind") == "desired"), None)
    return {"decision": decision, "since": latest if decision is not None and latest is not decision else None,
            "floor": st.desired.floor if st.desired else 0}


def axis(samples: list[tuple[float, int, int | None]], now: float) -> dict[str, Any]:
    """What the chart spans: `since` (local HH:MM), `span` (its length in words), `top` (the
    highest count, the top of the chart)."""
    start = max(now - CHART_SECONDS, samples[0][0]) if samples else now
    top = max([1] + [max(r, d or 0) for _, r, d in samples])
    return {"since": time.strftime("%H:%M", time.localtime(start)), "span": _age(start, now), "top": top}


def sparkline(samples: list[tuple[float, int, int | None]], now: float, width: int = 120,
              height: int = 24) -> str:
    """SVG polyline points of running workers over the last CHART_SECONDS, or since the first
    sample if that is younger (empty: no samples)."""
    if not samples:
        return ""
    top = max(max(r for _, r, _ in samples), max((d or 0) for _, _, d in samples), 1)
    start = max(now - CHART_SECONDS, samples[0][0])
    span = max(now - start, 1e-3)
    return " ".join(f"{max(t - start, 0.0) / span * width:.1f},{height - r / top * (height - 2) - 1:.1f}"
                    for t, r, _ in samples)


def _age(since: float, now: float) -> str:
    s = max(now - since, 0.0)
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def serve(app: Flask, host: str, port: int, threads: int = 8) -> Any:
    """A waitress server for `app` on host:port (0: a free port), not yet running: call `.run()`
    (or `.close()`); `.effective_port` is the port it listens on. Actions take at most
    `ConsoleSettings.max_actions` (2) of its threads; the others are the pages'."""
    from waitress.server import create_server

    return create_server(app, host=host, port=port, threads=threads, ident="fleet-console")


__all__ = ["ConsoleSettings", "create_app", "is_loopback", "serve"]
