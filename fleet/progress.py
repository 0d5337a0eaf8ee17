"""Progress for people who wait: a live bar until a cluster has converged (running == desired,
nothing pending, initializing, draining or stopping). `fleet scale --wait` and `fleet demo` use it.

Given the fleet's `Queries`, the wait also ends at once, with the reason, when the cluster
cannot converge in the time left (`stuck`): it is retired, or it needs launches and every place
it may launch in is held by a permanent error, by its own cap with nothing leaving it, or by
holds that outlast the wait. Shorter holds are shown in the bar while it waits them out."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from fleet.control.queries import Queries
from fleet.store import Store

#: The holds of a cluster without pools that end by themselves: status key -> what it means.
TEMPORARY = {"at_quota": "at quota", "no_capacity": "no capacity", "rate_limited": "provider rate-limited",
             "unresponsive": "provider not answering", "recovering": "recovering from a loss of Redis data"}


def _pool_held_for(queries: Queries, cluster: str, pool: dict[str, Any]) -> float:
    """Seconds pool `pool` (an entry of the status's `pools`) stays skipped; inf: until someone acts."""
    why = str(pool["skipped"])
    if why.startswith("error"):
        return math.inf
    if why == "full":
        leaving = pool["draining"] + pool["stopping"] + pool["pending"]
        return 0.0 if leaving else math.inf
    h, name = queries.holds, pool["pool"]
    return max(h.at_quota(cluster, name), h.no_capacity(cluster, name), h.provider_hold(pool["provider"]),
               h.unresponsive(cluster, name), h.recovering())


def held(queries: Queries, cluster: str, s: dict[str, Any]) -> tuple[float, str] | None:
    """(seconds, why) the cluster (its `fleet.status` reply `s`) can launch nothing for, if it
    can launch nothing now; inf seconds: until an operator acts (`fleet clear`, a config change)."""
    if s.get("pools"):
        if any(p["skipped"] is None for p in s["pools"]):
            return None
        seconds = min(_pool_held_for(queries, cluster, p) for p in s["pools"])
        return seconds, "every pool is held: " + "; ".join(f"{p['pool']}: {p['skipped']}" for p in s["pools"])
    spec = queries.config.spec(cluster)
    error = queries.holds.error(cluster, spec.pool_list[0].name)
    if error and error.get("fingerprint") == spec.fingerprint:  # another one is forgotten at the next launch
        return math.inf, f"error: {error['message']} (`fleet clear {cluster}` once it is fixed)"
    temporary = {why: s[key] for key, why in TEMPORARY.items() if s.get(key)}
    if temporary:
        return max(temporary.values()), ", ".join(f"{why} for {left:.0f} s" for why, left in temporary.items())
    return None


def stuck(queries: Queries, cluster: str, s: dict[str, Any], left: float) -> str | None:
    """Why the cluster cannot converge within `left` seconds, or None if it still may."""
    if s.get("retired"):
        return "retired: removed from the config, its workers are being drained and killed"
    short = (s["desired"] or 0) - s["running"] - s["initializing"] - s["pending"]
    hold = held(queries, cluster, s) if short > 0 else None
    if hold is None or hold[0] <= left:
        return None
    return f"{short} more worker(s) needed, but {hold[1]}"


def wait_converged(store: Store, cluster: str, timeout: float, console: Console, *,
                   check: Callable[[], object] | None = None, queries: Queries | None = None) -> bool:
    """A live progress bar until the cluster has converged; False (and a hint) on timeout, and,
    with `queries`, at once (and the reason) when it is `stuck`. `check` runs at every poll
    (`Stack.check`: a dead control plane ends the wait at once)."""
    deadline = time.monotonic() + timeout
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
               TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(cluster, total=1, detail="")
        while True:
            if check is not None:
                check()
            st = store.summary(cluster)
            s = queries.status(cluster, None) if queries is not None else st.as_dict(cluster)
            desired = s["desired"] or 0
            hold = held(queries, cluster, s) if queries is not None and not st.converged else None
            progress.update(bar, total=max(desired, 1), completed=min(s["running"], desired) if desired else 1,
                            detail=f"running {s['running']}/{desired}  initializing {s['initializing']}  "
                                   f"pending {s['pending']}  draining {s['draining']}  stopping {s['stopping']}"
                                   + (f"  held: {hold[1]}" if hold else ""))
            if st.converged:
                return True
            why = stuck(queries, cluster, s, deadline - time.monotonic()) if queries is not None else None
            if why:
                console.print(f"[red]cannot converge:[/red] {why}; see `fleet status {cluster}`", highlight=False,
                              soft_wrap=True)
                return False
            if time.monotonic() > deadline:
                console.print(f"[yellow]not converged after {timeout:.0f} s[/yellow]; see `fleet events {cluster}`")
                return False
            time.sleep(0.25)
