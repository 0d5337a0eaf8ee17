"""An in-memory provider: workers are records in this process, calls return at once.

For tests and benchmarks of Fleet's own work. Every control-plane worker that shares the
records must run in one process (thread pools). `MemoryProvider.world(fleet_id)` exposes the
records so a test can crash workers behind Fleet's back and read the high-water mark.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

from pydantic import BaseModel, ConfigDict, Field

from fleet.provider import Cluster, ContainerSpec, Hardware, Provider, WorkerStatus


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


@dataclass
class World:
    """Everything one fleet id's memory provider holds."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    workers: dict[str, Worker] = field(default_factory=dict)
    launches: dict[str, list[str]] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    high_water: Counter[str] = field(default_factory=Counter)

    def live(self, cluster: str) -> int:
        return sum(w.workers for w in self.workers.values() if w.cluster == cluster)

    def crash(self, handle: str) -> None:
        """The worker dies on its own; Fleet must notice and replace it."""
        with self.lock:
            self.workers.pop(handle, None)


class MemoryProvider(Provider):
    options_model = MemoryOptions
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

    def run_workers(self, cluster: Cluster, container: ContainerSpec, hardware: Hardware, count: int,
                    *, launch_id: str) -> list[str]:
        world = self.world(cluster.fleet_id)
        boot = getattr(cluster.options, "boot_seconds", 0.0)
        with world.lock:
            world.calls["run"] += 1
            if launch_id in world.launches:
                return list(world.launches[launch_id])
            handles: list[str] = []
            for i, size in enumerate(cluster.containers_for(count)):
                handle = f"mem-{launch_id[:12]}-{i}"
                env = {**container.env, **cluster.identity_env(handle, size)}
                world.workers[handle] = Worker(cluster.name, size, launch_id, time.monotonic(), boot, env)
                handles += [handle] * size
            world.launches[launch_id] = handles
            world.high_water[cluster.name] = max(world.high_water[cluster.name], world.live(cluster.name))
            return list(handles)

    def worker_status(self, cluster: Cluster, handles: Sequence[str]) -> dict[str, WorkerStatus]:
        world = self.world(cluster.fleet_id)
        now = time.monotonic()
        with world.lock:
            world.calls["status"] += 1
            out = {}
            for h in handles:
                w = world.workers.get(h)
                if w is None or w.cluster != cluster.name:
                    out[h] = WorkerStatus.STOPPED
                elif now - w.created < w.boot_seconds:
                    out[h] = WorkerStatus.INITIALIZING
                else:
                    out[h] = WorkerStatus.RUNNING
            return out

    def kill_workers(self, cluster: Cluster, handles: Sequence[str]) -> dict[str, bool]:
        world = self.world(cluster.fleet_id)
        with world.lock:
            world.calls["kill"] += 1
            for h in handles:
                if h in world.workers and world.workers[h].cluster == cluster.name:
                    del world.workers[h]
            return {h: True for h in handles}

    def list_workers(self, cluster: Cluster) -> dict[str, int]:
        world = self.world(cluster.fleet_id)
        with world.lock:
            return {h: w.workers for h, w in world.workers.items() if w.cluster == cluster.name}
