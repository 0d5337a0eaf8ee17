"""The managed layer driven in one process, one job at a time and in order: what the tests and
`fleet bench` use to count a provider's cloud calls through Fleet (no Celery, so no retry timing
or worker scheduling blurs the count)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import redis

from fleet.config import FleetConfig
from fleet.errors import TransientProviderError
from fleet.manager import Manager


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

    def do(self, kind: str, args: tuple[Any, ...]) -> Any:
        """Run one job as its task would."""
        if kind == "run":
            return self.manager.launcher.run_launch(*args)
        if kind == "kill":
            return self.manager.launcher.kill_handles(*args)
        if kind == "check":
            return self.manager.followups.check(*args)
        return self.manager.reconciler.reconcile(*args)

    def work(self) -> None:
        """Run every queued job (and what they queue), in order; a transient error re-queues it."""
        while self.jobs:
            kind, args = self.jobs.popleft()
            try:
                self.do(kind, args)
            except TransientProviderError:
                time.sleep(0.2)
                self.jobs.append((kind, args))


def inline_manager(config: FleetConfig, url: str) -> tuple[Manager, InlineDispatcher]:
    """A Manager of `config` on the Redis at `url` whose work waits in an InlineDispatcher."""
    dispatcher = InlineDispatcher()
    manager = Manager(config, redis.Redis.from_url(url), dispatcher, url=url)
    dispatcher.manager = manager
    return manager, dispatcher


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
