"""Rolling replacement with real processes: a control plane (worker processes and beat, as `fleet
up` runs them) over local workers that are real Celery workers of the demo job app, with jobs in
flight. The control plane is stopped and started again with a changed command (the Redis stays
up, as a deployment's does); a worker reaches its max_lifetime while it runs a job; a cluster is
removed from the config while its workers run, and put back. Each time: no job lost, never fewer
workers than desired, never more than the provider should have."""

from __future__ import annotations

import json
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from fleet.config import load_config
from fleet.embedded import EmbeddedRedis
from fleet.provider import Cluster, ProviderContext
from fleet.stack import Stack
from providers.local import LocalOptions, LocalProvider
from tests.conftest import wait_for

PY = sys.executable


def celery(tag: str, queue: str) -> list[str]:
    """A worker of the demo job app; `tag` ends its hostname, so a process shows its command."""
    return [PY, "-m", "celery", "-A", "fleet.demo.jobs", "worker", "--queues", queue, "--pool", "threads",
            "--concurrency", "1", "--hostname", f"${{FLEET_HANDLE}}@{tag}", "--loglevel", "WARNING",
            "--without-gossip", "--without-mingle", "--prefetch-multiplier", "1"]


class World:
    """One fleet: its own Redis (up across control-plane restarts), state folder and config file."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.fid = "rl" + uuid.uuid4().hex[:8]
        self.redis = EmbeddedRedis(tmp / "redis", persist=False, die_with_parent=True)
        self.url = self.redis.start()
        self.r = redis.Redis.from_url(self.url)
        self.local = LocalProvider(ProviderContext(self.fid, tmp / "state"))
        self.log = open(tmp / "control-plane.log", "ab")

    def write(self, clusters: str) -> Path:
        path = self.tmp / "fleet.toml"
        path.write_text(f'[fleet]\nid = "{self.fid}"\nsweep_interval = 0.5\norphan_grace = 3\n'
                        + textwrap.dedent(clusters))
        return path

    @contextmanager
    def plane(self, clusters: str) -> Iterator[Stack]:
        path = self.write(clusters)
        with Stack(load_config(path), path, log=self.log, redis_url=self.url, state_dir=self.tmp / "state",
                   workers=1, concurrency=4, die_with_parent=True) as stack:
            yield stack

    def call(self, task: str, *args: Any) -> Any:
        app = Celery("rollout-client", broker=self.url, backend=self.url, set_as_current=False)
        return app.send_task(task, args=list(args)).get(timeout=30)

    def jobs(self) -> Celery:
        app = Celery("rollout-jobs", broker=self.url, backend=self.url, set_as_current=False)
        app.conf.task_acks_late = True
        return app

    def processes(self, cluster: str) -> dict[str, str]:
        """Live worker processes of `cluster`, as the provider counts them: handle -> command line."""
        ref = Cluster(self.fid, cluster, 1, LocalOptions())
        out = {}
        for h in self.local.list_workers(ref):
            pid = self.local._pid(ref, h)
            try:
                out[h] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, TypeError):
                continue
        return out

    def counts(self, cluster: str) -> dict[str, int]:
        raw = self.r.hgetall(f"fleet:{self.fid}:{cluster}:counts")
        return {k.decode(): int(v) for k, v in raw.items() if b":" not in k and b"@" not in k}

    def events(self, cluster: str) -> list[dict[str, str]]:
        rows = self.r.xrange(f"fleet:{self.fid}:{cluster}:events")
        return [{k.decode(): v.decode() for k, v in data.items()} for _, data in rows]

    def close(self) -> None:
        for name in ("roll", "life", "gone"):
            ref = Cluster(self.fid, name, 1, LocalOptions(kill_grace=1))
            left = self.local.list_workers(ref)
            if left:
                self.local.kill_workers(ref, list(left))
        self.redis.stop()
        self.log.close()


class Watch:
    """Ten times a second: the provider's processes of a cluster and Fleet's running count."""

    def __init__(self, world: World, cluster: str) -> None:
        self.world, self.cluster = world, cluster
        self.samples: list[tuple[int, int]] = []  # (processes, running in Redis)
        self._on = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        ref = Cluster(self.world.fid, self.cluster, 1, LocalOptions())
        r = redis.Redis.from_url(self.world.url)
        while self._on.is_set():
            procs = len(self.world.local.list_workers(ref))
            running = int(r.hget(f"fleet:{self.world.fid}:{self.cluster}:counts", "running") or 0)
            self.samples.append((procs, running))
            time.sleep(0.1)

    def __enter__(self) -> Watch:
        self._on.set()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._on.clear()
        self._thread.join(5)


def roll(command: list[str]) -> str:
    return f"""
        [clusters.roll]
        provider = "local"
        max_workers = 4
        queues = ["roll-jobs"]
        drain_timeout = 60
        boot_timeout = 60
        [clusters.roll.container]
        command = {json.dumps(command)}
        [clusters.roll.provider_options]
        kill_grace = 10
        """


def test_a_changed_command_replaces_every_worker_with_jobs_in_flight_and_loses_none(tmp_path: Path) -> None:
    world = World(tmp_path)
    try:
        with world.plane(roll(celery("v1", "roll-jobs"))):
            world.call("fleet.scale", "roll", 4)
            wait_for(lambda: world.counts("roll").get("running") == 4, timeout=60, what="4 workers")
            wait_for(lambda: len(world.processes("roll")) == 4, timeout=30, what="4 processes")
            old = world.processes("roll")
            assert all("@v1" in cmd for cmd in old.values())
            results = [world.jobs().send_task("demo.sleep", args=[0.5, f"j{i}"], queue="roll-jobs")
                       for i in range(40)]
        # the control plane restarts with a changed command; the workers and their jobs go on
        with world.plane(roll(celery("v2", "roll-jobs"))), Watch(world, "roll") as watch:
            status = world.call("fleet.rollout", "roll", "status")
            assert status["outdated"] == 4 and status["state"] in ("rolling", "idle"), status
            wait_for(lambda: (lambda p: len(p) == 4 and all("@v2" in c for c in p.values()))(world.processes("roll")),
                     timeout=120, interval=0.2, what="4 workers of the new command")
            wait_for(lambda: world.call("fleet.rollout", "roll", "status")["state"] == "idle", timeout=30,
                     what="the rollout done")
        done = {res.get(timeout=60)["tag"] for res in results}
        assert done == {f"j{i}" for i in range(40)}  # no job lost
        assert not set(old) & set(world.processes("roll"))  # every one of the 4 was replaced
        assert watch.samples and min(r for _, r in watch.samples) >= 4, "fewer than desired running"
        assert max(p for p, _ in watch.samples) <= 4 + 1, "more than max_workers + surge, as the provider counts"
        kinds = [e["kind"] for e in world.events("roll")]
        assert "rollout" in kinds and "rollout_done" in kinds and kinds.count("drained") >= 1, kinds
        print(f"rollout: 4 workers replaced, 40 jobs done, processes at most {max(p for p, _ in watch.samples)}, "
              f"running at least {min(r for _, r in watch.samples)}")
    finally:
        world.close()


def test_max_lifetime_replaces_a_busy_worker_without_a_gap_and_keeps_its_job(tmp_path: Path) -> None:
    world = World(tmp_path)
    try:
        spec = f"""
            [clusters.life]
            provider = "local"
            max_workers = 1
            queues = ["life-jobs"]
            drain_timeout = 60
            max_lifetime = 6
            [clusters.life.container]
            command = {json.dumps(celery("w", "life-jobs"))}
            [clusters.life.provider_options]
            kill_grace = 10
            """
        with world.plane(spec), Watch(world, "life") as watch:
            world.call("fleet.scale", "life", 1)
            wait_for(lambda: world.counts("life").get("running") == 1, timeout=60, what="1 worker")
            (first,) = world.processes("life")
            job = world.jobs().send_task("demo.sleep", args=[8.0, "long"], queue="life-jobs")
            assert job.get(timeout=60)["handle"] == first  # it finished its job, past its lifetime
            wait_for(lambda: first not in world.processes("life") and len(world.processes("life")) == 1,
                     timeout=60, what="the old worker replaced")
        started = next(i for i, (p, _) in enumerate(watch.samples) if p)
        assert min(r for _, r in watch.samples[started + 20:]) >= 1, "a gap without a running worker"
        assert max(p for p, _ in watch.samples) <= 2
        assert "expired" in [e["kind"] for e in world.events("life")]
    finally:
        world.close()


def gone(extra: str = "") -> str:
    return f"""
        [clusters.gone]
        provider = "local"
        max_workers = 3
        queues = ["gone-jobs"]
        drain_timeout = 60
        [clusters.gone.container]
        command = {json.dumps(celery("g", "gone-jobs"))}
        [clusters.gone.provider_options]
        kill_grace = 5
        {extra}
        """


KEEP = """
    [clusters.keep]
    provider = "memory"
    max_workers = 1
    [clusters.keep.container]
    command = ["w"]
    """


def test_a_cluster_removed_from_the_config_is_drained_killed_and_forgotten(tmp_path: Path) -> None:
    world = World(tmp_path)
    try:
        with world.plane(gone() + KEEP):
            world.call("fleet.scale", "gone", 2)
            wait_for(lambda: world.counts("gone").get("running") == 2, timeout=60, what="2 workers")
            wait_for(lambda: len(world.processes("gone")) == 2, timeout=30, what="2 processes")
            job = world.jobs().send_task("demo.sleep", args=[3.0, "last"], queue="gone-jobs")
            wait_for(lambda: any(json.loads(v).get("busy") for v in
                                 world.r.hvals(f"fleet:{world.fid}:gone:handles")), timeout=30, what="a busy worker")
        with world.plane(KEEP):  # restarted without it: retired
            status = world.call("fleet.status", "gone")
            assert status["retired"] is True
            wait_for(lambda: not list(world.r.scan_iter(match=f"fleet:{world.fid}:gone:*")), timeout=120,
                     interval=0.05, what="nothing of it left in Redis")
        # its event stream left with its other keys; the fleet's counters of its events stay
        prefix = "events|gone|"
        seen = {k.decode()[len(prefix):] for k in world.r.hkeys(f"fleet:{world.fid}:metrics")
                if k.decode().startswith(prefix)}
        assert job.get(timeout=30)["tag"] == "last"  # drained, not cut off
        assert world.processes("gone") == {}  # nothing left at the provider
        assert {"retiring", "drain", "drained", "killed"} <= seen, seen
    finally:
        world.close()


def test_a_retired_cluster_put_back_before_it_is_gone_keeps_its_live_workers(tmp_path: Path) -> None:
    world = World(tmp_path)
    try:
        with world.plane(gone() + KEEP):
            world.call("fleet.scale", "gone", 2)
            wait_for(lambda: len(world.processes("gone")) == 2 and world.counts("gone").get("running") == 2,
                     timeout=60, what="2 workers")
            before = set(world.processes("gone"))
            jobs = [world.jobs().send_task("demo.sleep", args=[20.0, f"long{i}"], queue="gone-jobs")
                    for i in range(2)]
            wait_for(lambda: sum(1 for v in world.r.hvals(f"fleet:{world.fid}:gone:handles")
                                 if json.loads(v).get("busy")) == 2, timeout=30, what="both workers busy")
        with world.plane(KEEP):  # retired: both start draining (busy for 20 s)
            wait_for(lambda: world.counts("gone").get("draining") == 2, timeout=30, what="both draining")
        with world.plane(gone() + KEEP):  # put back before the drains end: the live ones are kept
            wait_for(lambda: world.counts("gone").get("running") == 2, timeout=30, what="2 running again")
            time.sleep(2)
            assert set(world.processes("gone")) == before  # the same workers, nothing replaced
            assert world.counts("gone").get("draining", 0) == 0
            assert {r.get(timeout=60)["tag"] for r in jobs} == {"long0", "long1"}
            later = world.jobs().send_task("demo.sleep", args=[0.1, "after"], queue="gone-jobs")
            assert later.get(timeout=30)["handle"] in before  # they consume again
        assert "adopted" in [e["kind"] for e in world.events("gone")]
    finally:
        world.close()



