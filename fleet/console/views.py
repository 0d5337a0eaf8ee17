"""The console's reads, as a blueprint of small views: /healthz, the overview (/), a cluster's
page (/clusters/<c>) and its events (/clusters/<c>/events). Each answers JSON too
(`fleet.console.context.wants_json`). Why a cluster does not launch is `fleet.reasons`' wording,
as `fleet status` shows it."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, jsonify, request

from fleet.console.charts import CHART_SECONDS, axis, desired_story, sparkline
from fleet.console.context import answer, console, spec_or_404, wants_json
from fleet.reasons import not_launching

#: events shown on a cluster page, and searched for the autoscaler's last decision
EVENTS_SHOWN = 100
DECISIONS_SEARCHED = 1000

bp = Blueprint("views", __name__)


def reasons(s: dict[str, Any]) -> list[str]:
    """Why a cluster does not launch (or what else needs a look), in words, as `fleet status`."""
    return [r.text for r in not_launching(s)]


@bp.get("/healthz")
def healthz() -> Any:
    problem = console().health.problem()
    return (f"{problem}\n", 503, {"Content-Type": "text/plain; charset=utf-8"}) if problem else "ok\n"


@bp.get("/")
def overview() -> Any:
    c = console()
    queries, names = c.queries, list(c.config.clusters)
    if wants_json():
        return answer("", [queries.with_handles(n, st, s) for n, (st, s) in zip(names, queries.detailed(names))])
    now = time.time()
    rows = []
    for name in names:
        s = queries.status(name)
        # the sweep's samples, and the count as it is now, so the line always reaches the present
        samples = [*queries.store.series(name, now - CHART_SECONDS), (now, s["running"], s["desired"])]
        rows.append({"status": s, "chart": sparkline(samples, now) if len(samples) > 1 else "",
                     "axis": axis(samples, now), "reasons": reasons(s)})
    template = "overview_live.html" if request.args.get("partial") else "overview.html"
    return answer(template, None, rows=rows, dead=queries.dead_letters())


@bp.get("/clusters/<cluster>")
def cluster_page(cluster: str) -> Any:
    spec = spec_or_404(cluster)
    queries = console().queries
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


@bp.get("/clusters/<cluster>/events")
def events(cluster: str) -> Any:
    spec_or_404(cluster)
    kind = request.args.get("kind", "")
    return jsonify([e for e in console().queries.events(cluster, EVENTS_SHOWN) if not kind or e.get("kind") == kind])
