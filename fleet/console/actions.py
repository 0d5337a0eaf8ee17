"""The console's actions, as a blueprint of small POST views: scale, clear, and a handle's
hold, drain and kill. Each sends the public task the CLI sends (`Actions`, bounded: "busy"
past `max_actions`), after a PING of Redis; the answer is JSON, or a flash on the cluster's
page (a 303 back there)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for

from fleet.console.context import console, failure, spec_or_404, wants_json
from fleet.console.health import Busy
from fleet.errors import FleetError

#: a number of workers as a form sends it: ASCII digits only (str.isdigit takes "²" and "٣"),
#: few enough for int(); fleet.scale itself refuses what is out of the cluster's range
WORKERS = re.compile(r"[0-9]{1,12}")
#: a hold form's value
HOLD = {"1": True, "true": True, "0": False, "false": False}

bp = Blueprint("actions", __name__)


def _back(cluster: str) -> str:
    return url_for("views.cluster_page", cluster=cluster)


def act(cluster: str, done: Callable[[Any], str], task: str, *args: Any) -> Any:
    """Send public task `task` for `cluster` (after a PING: nothing goes to a Redis that does
    not answer) and answer with its reply: JSON, or `done(reply)` flashed on the cluster's page.
    Redis lost or no control plane sweeping: 503; the control plane's refusal: 400."""
    spec_or_404(cluster)
    c = console()
    back = _back(cluster)
    down = c.health.redis_problem()
    if down:
        c.noted.problem("Redis", down)
        return failure(down, 503, back)
    try:
        reply = c.actions.call(task, cluster, *args)
    except Busy as exc:
        return failure(str(exc), 503, back)
    except FleetError as exc:
        # Redis lost during the call: say so, not Celery's words for it ("... must be restarted")
        down = c.health.redis_problem()
        stalled = down is None and c.health.control_plane_problem() is not None
        return failure(down or str(exc), 503 if down or stalled else 400, back)
    if wants_json():
        return jsonify(ok=True, reply=reply)
    flash(done(reply), "ok")
    return redirect(back, code=303)


@bp.post("/clusters/<cluster>/scale")
def scale(cluster: str) -> Any:
    spec_or_404(cluster)
    raw = (request.form.get("workers") or request.args.get("workers") or "").strip()
    if not WORKERS.fullmatch(raw):
        return failure(f"workers must be a whole number of 0 or more, not {raw[:20]!r}", 400, _back(cluster))
    return act(cluster, lambda r: f"desired {r['desired']} (version {r['version']})", "fleet.scale", int(raw))


@bp.post("/clusters/<cluster>/clear")
def clear(cluster: str) -> Any:
    return act(cluster, lambda r: "cleared" if r["cleared"] else "nothing to clear", "fleet.clear")


@bp.post("/clusters/<cluster>/handles/<handle>/hold")
def hold(cluster: str, handle: str) -> Any:
    raw = (request.form.get("hold") or request.args.get("hold") or "1").strip().lower()
    if raw not in HOLD:
        spec_or_404(cluster)
        return failure(f"hold must be 1 (hold) or 0 (release), not {raw[:20]!r}", 400, _back(cluster))
    on = HOLD[raw]
    return act(cluster, lambda r: f"{handle}: {'held' if r['hold'] else 'released'}", "fleet.hold", handle, on)


@bp.post("/clusters/<cluster>/handles/<handle>/drain")
def drain(cluster: str, handle: str) -> Any:
    return act(cluster, lambda r: f"{handle}: draining", "fleet.drain_handle", handle)


@bp.post("/clusters/<cluster>/handles/<handle>/kill")
def kill(cluster: str, handle: str) -> Any:
    """Only with `confirm=1` (the page's script asks first and adds it); without it, a page
    that asks (HTML) or 400 (JSON). Nothing is sent before."""
    spec_or_404(cluster)
    if (request.form.get("confirm") or request.args.get("confirm")) != "1":
        if wants_json():
            return failure("kill needs confirm=1: its workers stop at once, their tasks unfinished", 400)
        return render_template("confirm_kill.html", c=cluster, handle=handle)
    return act(cluster, lambda r: f"{handle}: killed", "fleet.kill_handle", handle)
