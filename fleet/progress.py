"""Progress for people who wait: a live bar until a cluster has converged (running == desired,
nothing pending, initializing, draining or stopping). `fleet scale --wait` and `fleet demo` use it."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from fleet.store import Store


def wait_converged(store: Store, cluster: str, timeout: float, console: Console, *,
                   check: Callable[[], object] | None = None) -> bool:
    """A live progress bar until the cluster has converged; False (and a hint) on timeout.
    `check` runs at every poll (`Stack.check`: a dead control plane ends the wait at once)."""
    deadline = time.monotonic() + timeout
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
               TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(cluster, total=1, detail="")
        while True:
            if check is not None:
                check()
            st = store.summary(cluster)
            s = st.as_dict(cluster)
            desired = s["desired"] or 0
            progress.update(bar, total=max(desired, 1), completed=min(s["running"], desired) if desired else 1,
                            detail=f"running {s['running']}/{desired}  initializing {s['initializing']}  "
                                   f"pending {s['pending']}  draining {s['draining']}  stopping {s['stopping']}")
            if st.converged:
                return True
            if time.monotonic() > deadline:
                console.print(f"[yellow]not converged after {timeout:.0f} s[/yellow]; see `fleet events {cluster}`")
                return False
            time.sleep(0.25)
