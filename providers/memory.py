"""An in-memory provider: workers are records in this process, calls return at once.

For tests and benchmarks of Fleet's own work. Every control-plane worker that shares the
records must run in one process (thread pools). `MemoryProvider.world(fleet_id)` exposes the
records so a test can crash workers behind Fleet's back and read the high-water mark.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from fleet.provider import Cause, Cluster, ContainerSpec, Hardware, Interruption, Observation, Provider, WorkerStatus


class MemoryOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    boot_seconds: float = Field(default=0.0, ge=0, description="time a worker stays initializing")


@dataclass
class Worker:
    cluster: str
    workers: int
    launch_id: str
    created: float
    boot_seconds: float
    env: dict[str, str]
    pool: str = ""
    revision: str = ""


@dataclass
class World:
    """Everything one fleet id's memory provider holds."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    workers: dict[str, Worker] = field(default_factory=dict)
    launches: dict[str, list[str]] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    high_water: Counter[str] = field(default_factory=Counter)
    exited: set[str] = field(default_factory=set)
    refused: Counter[str] = field(default_factory=Counter)  # handle -> kills still to refuse
    notices: dict[str, Interruption] = field(default_factory=dict)  # warnings not yet acknowledged
    reclaimed: dict[str, Cause] = field(default_factory=dict)  # handles the cloud took, and why

    def live(self, cluster: str) -> int:
        return sum(w.workers for h, w in self.workers.items() if w.cluster == cluster and h not in self.exited)

    def crash(self, handle: str) -> None:
        """The worker dies on its own and leaves nothing behind; Fleet must notice and replace it."""
        with self.lock:
            self.workers.pop(handle, None)

    def refuse_kills(self, handle: str, times: int) -> None:
        """The next `times` kills of `handle` report False (the cloud refused them)."""
        with self.lock:
            self.refused[handle] = times

    def warn(self, handle: str, cause: Cause = Cause.SPOT_INTERRUPTION, deadline: float | None = None) -> None:
        """The cloud warns that it will reclaim `handle` (an interruption notice, as on EC2's queue)."""
        with self.lock:
            self.notices[handle] = Interruption(handle, cause, deadline, receipt=f"r-{handle}")

    def reclaim(self, handle: str, cause: Cause = Cause.PREEMPTED) -> None:
        """The cloud takes `handle` (a preempted VM): gone, and `observe` says why."""
        with self.lock:
            if self.workers.pop(handle, None) is not None:
                self.reclaimed[handle] = cause

    def exit(self, handle: str) -> None:
        """The worker dies on its own but its remains stay until killed (an exited container, a
        stopped VM): stopped and no longer listed, yet still present in `workers`."""
        with self.lock:
            if handle in self.workers:
                self.exited.add(handle)


class MemoryProvider(Provider[MemoryOptions]):
    options_model = MemoryOptions
    first_check = 0.05  # a worker runs once `boot_seconds` (default 0) have passed
    _worlds: ClassVar[dict[str, World]] = {}
    _worlds_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def world(cls, fleet_id: str) -> World:
        with cls._worlds_lock:
            return cls._worlds.setdefault(fleet_id, World())

    @classmethod
    def reset(cls) -> None:
        with cls._worlds_lock:
            cls._worlds.clear()

    def run_workers(self, cluster: Cluster[MemoryOptions], container: ContainerSpec, hardware: Hardware, count: int,
                    *, launch_id: str) -> list[str]:
        world = self.world(cluster.fleet_id)
        boot = cluster.options.boot_seconds
        with world.lock:
            world.calls["run"] += 1
            if launch_id in world.launches:
                return list(world.launches[launch_id])
            handles: list[str] = []
            for i, size in enumerate(cluster.containers_for(count)):
                handle = f"mem-{launch_id[:12]}-{i}"
                env = {**container.env, **cluster.identity_env(handle, size)}
                world.workers[handle] = Worker(cluster.name, size, launch_id, time.monotonic(), boot, env,
                                               cluster.pool, cluster.revision)
                handles += [handle] * size
            world.launches[launch_id] = handles
            world.high_water[cluster.name] = max(world.high_water[cluster.name], world.live(cluster.name))
            return list(handles)

    def worker_status(self, cluster: Cluster[MemoryOptions], handles: Sequence[str]) -> dict[str, WorkerStatus]:
        world = self.world(cluster.fleet_id)
        now = time.monotonic()
        with world.lock:
            world.calls["status"] += 1
            out = {}
            for h in handles:
                w = world.workers.get(h)
                if w is None or w.cluster != cluster.name or h in world.exited:
                    out[h] = WorkerStatus.STOPPED
                elif now - w.created < w.boot_seconds:
                    out[h] = WorkerStatus.INITIALIZING
                else:
                    out[h] = WorkerStatus.RUNNING
            return out

    def kill_workers(self, cluster: Cluster[MemoryOptions], handles: Sequence[str]) -> dict[str, bool]:
        world = self.world(cluster.fleet_id)
        with world.lock:
            world.calls["kill"] += 1
            out = {}
            for h in handles:
                if world.refused[h] > 0:
                    world.refused[h] -= 1
                    out[h] = False
                    continue
                if h in world.workers and world.workers[h].cluster == cluster.name:
                    del world.workers[h]
                    world.exited.discard(h)
                out[h] = True
            return out

    def find_launch(self, cluster: Cluster[MemoryOptions], launch_id: str) -> list[str]:
        world = self.world(cluster.fleet_id)
        with world.lock:
            world.calls["find"] += 1
            return [h for h in world.launches.get(launch_id, [])
                    if h in world.workers and (not cluster.pool or world.workers[h].pool == cluster.pool)]

    def list_workers(self, cluster: Cluster[MemoryOptions]) -> dict[str, int]:
        world = self.world(cluster.fleet_id)
        with world.lock:
            return {h: w.workers for h, w in world.workers.items()
                    if w.cluster == cluster.name and h not in world.exited
                    and (not cluster.pool or w.pool == cluster.pool)}

    def observe(self, cluster: Cluster[MemoryOptions], handles: Sequence[str]) -> Observation:
        listed = self.list_workers(cluster)
        asked = list(dict.fromkeys([*handles, *listed]))
        status = self.worker_status(cluster, asked)
        world = self.world(cluster.fleet_id)
        with world.lock:
            taken = {h: world.reclaimed[h] for h in asked if h in world.reclaimed}
            revisions = {h: w.revision for h in listed if (w := world.workers.get(h)) and w.revision}
        return Observation(listed, status, taken, revisions)

    def interruptions(self, cluster: Cluster[MemoryOptions]) -> list[Interruption]:
        world = self.world(cluster.fleet_id)
        with world.lock:
            return [n for h, n in world.notices.items()
                    if (w := world.workers.get(h)) is None or (w.cluster == cluster.name
                                                              and (not cluster.pool or w.pool == cluster.pool))]

    def acknowledge(self, cluster: Cluster[MemoryOptions], notices: Sequence[Interruption]) -> None:
        world = self.world(cluster.fleet_id)
        with world.lock:
            for n in notices:
                world.notices.pop(n.handle, None)
