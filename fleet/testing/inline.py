"""The managed layer driven in one process, one job at a time and in order: what the tests and
`fleet bench` use to count a provider's cloud calls through Fleet (no Celery, so no retry timing
or worker scheduling blurs the count)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from fleet.errors import TransientProviderError


class InlineDispatcher:
    """A `Dispatcher` that queues the work and runs it when `work()` is called."""

    def __init__(self) -> None:
        self.jobs: deque[tuple[str, tuple[Any, ...]]] = deque()
        self.manager: Any = None  # set once the Manager that uses this dispatcher exists

    def run(self, cluster: str, launch_id: str, provider: str) -> None:
        self.jobs.append(("run", (cluster, launch_id)))

    def kill(self, cluster: str, handles: Sequence[str], provider: str, pool: str = "") -> None:
        self.jobs.append(("kill", (cluster, list(handles), pool)))

    def reconcile(self, cluster: str) -> None:
        self.jobs.append(("reconcile", (cluster,)))

    def drain(self, cluster: str, handles: Sequence[str], provider: str) -> None:
        pass  # no Celery workers to tell

    def check(self, cluster: str, delay: float, provider: str) -> None:
        self.jobs.append(("check", (cluster, delay)))

    def work(self) -> None:
        """Run every queued job (and what they queue), in order; a transient error re-queues it."""
        while self.jobs:
            kind, args = self.jobs.popleft()
            try:
                if kind == "run":
                    self.manager.launcher.run_launch(*args)
                elif kind == "kill":
                    self.manager.launcher.kill_handles(*args)
                elif kind == "check":
                    self.manager.followups.check(*args)
                else:
                    self.manager.reconciler.reconcile(*args)
            except TransientProviderError:
                time.sleep(0.2)
                self.jobs.append((kind, args))


def drive(manager: Any, dispatcher: InlineDispatcher, cluster: str, n: int, timeout: float) -> dict[str, Any]:
    """Scale `cluster` to `n` and work until it has converged, sweeping between rounds only when
    the work alone did not get there. Returns seconds, sweeps and whether it converged."""
    started = time.perf_counter()
    manager.api.scale(cluster, n)
    sweeps = 0
    while True:
        dispatcher.work()
        if manager.store.summary(cluster).converged_at(n):
            return {"seconds": round(time.perf_counter() - started, 2), "sweeps": sweeps, "converged": True}
        if time.perf_counter() - started > timeout:
            return {"seconds": round(time.perf_counter() - started, 2), "sweeps": sweeps, "converged": False}
        manager.sweeper.sweep_cluster(cluster)
        sweeps += 1
        time.sleep(0.05)
