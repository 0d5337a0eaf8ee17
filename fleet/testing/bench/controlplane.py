"""A control plane of real processes for `fleet bench` (sections convergence, running,
throughput, containers): a `fleet.stack.Stack` through `fleet.testing.plane`, and what is
measured on it (a scale's time, Redis commands, Celery messages, provider calls, memory)."""

from __future__ import annotations

import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fleet.store import Store
from fleet.testing.bench.measure import commandstats, delta, op_counts, proc_status
from fleet.testing.plane import Plane, plane

#: seconds between the sweeps of the control planes the sections start (but `running`'s)
SWEEP_INTERVAL = 0.25
#: a provider's limits in those control planes: high enough never to be what is measured
PROVIDER_LIMITS = """
[providers.{name}]
ops_per_second = 10000
concurrent_launches = 64
"""


class ControlPlane:
    """Measurements on a control plane of real processes (`Plane`: `celery -A tasks worker`
    subprocesses, a control one (solo pool) and a provider one (threads pool), and a real beat
    sending `fleet.sweep` every `sweep_interval`)."""

    def __init__(self, running: Plane, sweep_interval: float, concurrency: int) -> None:
        self.p = running
        self.fleet_id = running.fleet_id
        self.r = running.r
        self.store = Store(running.r, running.fleet_id)
        self.client = running.client()
        self.sweep_interval = sweep_interval
        self.concurrency = concurrency
        self.client.send_task("fleet.noop").get(timeout=60)  # the control worker is up and consuming

    def pids(self) -> dict[str, int]:
        return {role: proc.pid for role, proc in self.p.stack.procs.items() if role != "beat"}

    def memory(self) -> dict[str, dict[str, int]]:
        return {role: proc_status(pid) for role, pid in self.pids().items()}

    def converged(self, cluster: str, n: int, polls: Counter[str]) -> bool:
        """running == desired == n, nothing pending or on its way: from the counts, not the records."""
        polls.update(hgetall=3)  # the summary's reads (counts, desired, pending): not the section's
        return self.store.summary(cluster).converged_at(n)

    def wait(self, cluster: str, n: int, polls: Counter[str], timeout: float, every: float = 0.01) -> bool:
        deadline = time.monotonic() + timeout
        while not self.converged(cluster, n, polls):
            if time.monotonic() > deadline:
                return False
            time.sleep(every)
        return True

    def scale_to(self, cluster: str, n: int, timeout: float, every: float = 0.01) -> dict[str, Any]:
        polls: Counter[str] = Counter()
        before_cmd, before_ops = commandstats(self.r), op_counts(self.r, self.fleet_id)
        started = time.perf_counter()
        self.client.send_task("fleet.scale", args=[cluster, n]).get(timeout=60)
        ok = self.wait(cluster, n, polls, timeout, every)
        elapsed = time.perf_counter() - started
        cmds = delta(commandstats(self.r), before_cmd, minus=polls)
        ops = op_counts(self.r, self.fleet_id)
        ops.subtract(before_ops)
        return {"seconds": round(elapsed, 3), "converged": ok, "redis_commands": sum(cmds.values()),
                "celery_messages": cmds.get("lpush", 0), "provider_calls": dict(+ops),
                "top_commands": dict(cmds.most_common(8))}


@contextmanager
def control_plane(work: Path, clusters_toml: str, providers: tuple[str, ...] = ("memory",),
                  sweep_interval: float | None = SWEEP_INTERVAL, concurrency: int = 8,
                  control_workers: int = 1) -> Iterator[ControlPlane]:
    """A Stack of its own (embedded Redis without persistence, its workers, one beat) in `work`.
    `sweep_interval=None`: Fleet's default."""
    work.mkdir(parents=True, exist_ok=True)
    fleet = (f"sweep_interval = {sweep_interval}\n" if sweep_interval else "") + "launch_timeout = 120\n" + "".join(
        PROVIDER_LIMITS.format(name=p) for p in providers)
    with plane(work, clusters_toml, fleet=fleet, prefix="b", persist=False, concurrency=concurrency,
               control_workers=control_workers) as running:
        yield ControlPlane(running, sweep_interval or 5.0, concurrency)


def memory_clusters(names_max: dict[str, int]) -> str:
    return "".join(textwrap.dedent(f"""
        [clusters.{name}]
        provider = "memory"
        max_workers = {mx}
        boot_timeout = 3600
        [clusters.{name}.container]
        command = ["worker"]
        """) for name, mx in names_max.items())
