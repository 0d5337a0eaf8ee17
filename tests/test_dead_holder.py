"""A control-plane worker SIGKILLed while it holds a cluster's sweep lease (real processes, real
local workers): its replacement worker replaces a dead managed worker within seconds, not after
the minute the old fixed-lifetime locks lived; and a sweep that finds another sweep at work still
asks for a reconcile."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from fleet.lease import Lease
from fleet.manager import Manager
from fleet.provider import Cluster, ProviderContext
from fleet.testing.plane import Plane, plane
from providers.local import LocalOptions, LocalProvider
from tests.conftest import wait_for

SLEEPER = '["sh", "-c", "exec sleep 600"]'


def test_a_worker_killed_holding_the_sweep_lease_stalls_its_cluster_for_seconds(tmp_path: Path) -> None:
    with plane(tmp_path, f"""
        [clusters.web]
        provider = "faulty"
        max_workers = 4
        boot_timeout = 60
        [clusters.web.container]
        command = {SLEEPER}
        [clusters.web.provider_options]
        inner = "local"
        inner_options = {{ kill_grace = 1 }}
        slow_seconds = 0.4              # every provider call takes a while: the sweep holds its lease
        """, fleet="""
        sweep_interval = 0.5
        [providers.faulty]
        ops_per_second = 1000
        """) as p:
        local = LocalProvider(ProviderContext(p.fleet_id, p.stack.state_dir))
        ref = Cluster(p.fleet_id, "web", 1, LocalOptions(kill_grace=1))

        def running() -> int:
            return int(p.call("fleet.status", "web")["running"])

        try:
            replace_after_sigkill(p, local, ref, running)
        finally:
            local.kill_workers(ref, list(local.list_workers(ref)))  # the managed workers outlive the plane


def replace_after_sigkill(p: Plane, local: LocalProvider, ref: Cluster, running: Callable[[], int]) -> None:
    """Kill the only worker while it holds the sweep lease, start another, kill a managed worker:
    time its replacement."""
    p.call("fleet.scale", "web", 2)
    wait_for(lambda: running() == 2, timeout=60, what="2 running")
    before = set(local.list_workers(ref))
    lease_key = p.keys.cluster("web").sweeping
    wait_for(lambda: p.r.exists(lease_key), timeout=10, interval=0.001, what="a sweep holding its lease")
    p.stack.kill("worker", signal.SIGKILL)
    assert p.r.exists(lease_key) and 0 < p.r.pttl(lease_key) <= 3000  # the dead holder's lease: 3 s at most
    p.stack.start_role("worker")
    p.wait_ready(count=2)  # the new worker's "ready" line, after the dead one's
    victim = sorted(before)[0]
    os.killpg(local._pid(ref, victim), signal.SIGKILL)  # a managed worker dies behind Fleet's back
    died = time.monotonic()
    wait_for(lambda: victim not in local.list_workers(ref) and len(local.list_workers(ref)) == 2
             and running() == 2, timeout=60, what="a replacement running")
    took = time.monotonic() - died
    print(f"dead lease holder: a dead managed worker replaced {took:.1f} s after it died")
    assert took < 15.0, f"replacing a dead worker took {took:.1f} s after its control plane was SIGKILLed"
    assert p.stack.check() == []


class Recorder:
    """A dispatcher that only remembers what it was asked to send."""

    def __init__(self) -> None:
        self.reconciles: list[str] = []

    def run(self, cluster: str, launch_id: str, provider: str) -> None: ...
    def kill(self, cluster: str, handles: Sequence[str], provider: str) -> None: ...
    def drain(self, cluster: str, handles: Sequence[str], provider: str) -> None: ...
    def check(self, cluster: str, delay: float, provider: str) -> None: ...

    def reconcile(self, cluster: str) -> None:
        self.reconciles.append(cluster)


def test_a_skipped_sweep_still_asks_for_a_reconcile(fleet: Any, r: redis.Redis) -> None:
    fid = "skip" + uuid.uuid4().hex[:8]  # a fleet nobody else sweeps or reconciles
    config = fleet.config.model_copy(update={"fleet": fleet.config.fleet.model_copy(update={"id": fid})})
    manager = Manager(config, r, Recorder(), fleet.url)
    other = Lease(r, manager.store.of("single").sweeping, 30)  # another sweep at work
    assert other.acquire()
    try:
        assert manager.sweeper.sweep_cluster("single") == {"cluster": "single", "skipped": True}
        assert manager.dispatcher.reconciles == ["single"]  # type: ignore[attr-defined]
    finally:
        other.release()
        r.delete(*r.keys(f"fleet:{fid}:*") or ["-"])
