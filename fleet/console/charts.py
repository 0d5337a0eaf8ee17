"""What the console's pages draw and say beside the counts: the running-workers chart of the
overview, its axis, ages in words, and the autoscaler's last decision on a cluster page."""

from __future__ import annotations

import time
from typing import Any

from fleet.model import ClusterState

#: the chart on the overview covers this many seconds
CHART_SECONDS = 3600.0


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
    return {"since": time.strftime("%H:%M", time.localtime(start)), "span": age(start, now), "top": top}


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


def age(since: float, now: float) -> str:
    """How long ago `since` was at `now`, in words: "45 s", "12 min", "3.5 h"."""
    s = max(now - since, 0.0)
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"
