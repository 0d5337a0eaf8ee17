"""Capacity pools against a real control plane (separate worker processes, real Redis, real local
worker processes behind the fault-injecting provider): a spot pool without capacity sends its
shortfall to the on-demand pool at once; once spot has capacity again, the opt-in rebalance moves
the workers back one at a time without ever going below the desired number; and a worker warned
of its interruption is replaced before it is killed, while its job finishes."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from fleet.provider import Cluster, ProviderContext
from fleet.testing.plane import Plane, plane
from providers.local import LocalOptions, LocalProvider
from tests.conftest import wait_for

PY = sys.executable
FLEET = """
    sweep_interval = 0.5
    capacity_hold = 1
    orphan_grace = 3
    """


def pools_of(p: Plane, cluster: str) -> dict[str, dict[str, Any]]:
    return {row["pool"]: row for row in p.call("fleet.status", cluster)["pools"]}


def events(p: Plane, cluster: str) -> list[dict[str, str]]:
    rows = p.r.xrange(p.keys.cluster(cluster).events)
    return [{k.decode(): v.decode() for k, v in data.items()} for _, data in rows]


class Watch:
    """Ten times a second: live worker processes by pool, as the provider itself counts them, and
    Fleet's own running and live counts (from Redis)."""

    def __init__(self, p: Plane, cluster: str, pools: tuple[str, ...]) -> None:
        self.local = LocalProvider(ProviderContext(p.fleet_id, p.stack.state_dir))
        self.refs = {pool: Cluster(p.fleet_id, cluster, 1, LocalOptions(kill_grace=1), pool=pool) for pool in pools}
        self.counts = p.keys.cluster(cluster).counts
        self.r = redis.Redis.from_url(p.stack.url)
        self.samples: list[tuple[float, dict[str, int], int, int, int]] = []  # (t, by pool, running, live, int)
        self._on = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while self._on.is_set():
            before = int(self.r.hget(self.counts, "int") or 0)
            by = {pool: sum(self.local.list_workers(ref).values()) for pool, ref in self.refs.items()}
            c = {k.decode(): int(v) for k, v in self.r.hgetall(self.counts).items() if b"@" not in k and b":" not in k}
            interrupted = max(before, c.get("int", 0))
            self.samples.append((time.monotonic(), by, c.get("running", 0),
                                 c.get("running", 0) + c.get("initializing", 0), interrupted))
            time.sleep(0.1)

    def __enter__(self) -> Watch:
        self._on.set()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._on.clear()
        self._thread.join(5)
        for ref in self.refs.values():
            left = self.local.list_workers(ref)
            if left:
                self.local.kill_workers(ref, list(left))

    def since(self, t: float) -> list[tuple[float, dict[str, int], int, int, int]]:
        return [s for s in self.samples if s[0] >= t]


@pytest.mark.parametrize("most", [6, 4])  # 4: one above desired, the surge has no other room
def test_no_spot_capacity_falls_back_at_once_and_the_rebalance_moves_workers_back(tmp_path: Path, most: int) -> None:
    nocap = tmp_path / "no-spot-capacity"
    nocap.touch()
    inner = '{ inner = "local", inner_options = { kill_grace = 1 }'
    with plane(tmp_path, f"""
        [clusters.batch]
        max_workers = {most}
        rebalance = {{ max_in_flight = 1 }}
        pools = [
          {{ name = "spot", provider = "faulty", provider_options = {inner}, capacity_file = "{nocap}" }} }},
          {{ name = "od", provider = "faulty", provider_options = {inner} }} }},
        ]
        [clusters.batch.container]
        command = ["sh", "-c", "exec sleep 600"]
        """, fleet=FLEET, workers=1, concurrency=4) as p, Watch(p, "batch", ("spot", "od")) as watch:
        started = time.monotonic()
        p.call("fleet.scale", "batch", 3)
        wait_for(lambda: pools_of(p, "batch")["od"]["running"] == 3, timeout=30, what="3 on-demand workers")
        fell_back = time.monotonic() - started
        status = pools_of(p, "batch")
        assert status["spot"]["running"] == 0 and status["spot"]["skipped"] == "no capacity", status
        kinds = [e["kind"] for e in events(p, "batch")]
        fallback = next(e for e in events(p, "batch") if e["kind"] == "fallback")
        assert fallback["to"] == "od" and fallback["skipped"] == "spot: no capacity", fallback
        # the shortfall went on at once: the spot failure, then the very next launch was on-demand
        failed = kinds.index("no_capacity")
        assert kinds[failed:].index("fallback") <= 2, kinds
        print(f"pools: 3 workers on-demand {fell_back:.1f} s after fleet.scale (spot had no capacity)")

        nocap.unlink()  # spot has capacity again: the rebalance moves the workers back
        back = time.monotonic()
        wait_for(lambda: (lambda s: s["spot"]["running"] == 3 and s["od"]["running"] == 0
                          and s["od"]["stopping"] == 0)(pools_of(p, "batch")),
                 timeout=60, what="3 spot workers and no on-demand one")
        moved_in = time.monotonic() - back
        during = watch.since(back)
        assert min(s[2] for s in during) >= 3, "the rebalance went below the desired number"
        assert max(s[3] for s in during) <= 3 + 1, "more than max_in_flight replacements at once"
        assert max(sum(s[1].values()) for s in during) <= most, "above max_workers, as the provider counts"
        churn = [e for e in events(p, "batch")[len(kinds):] if e["kind"] in ("cancelled", "at_max")]
        assert not churn, churn  # a surge under way is never cancelled (and launched again)
        rebalances = [e for e in events(p, "batch") if e["kind"] == "rebalance"]
        assert len(rebalances) >= 3 and all(e["surge"] == "1" for e in rebalances), rebalances
        print(f"pools: moved back to spot in {moved_in:.1f} s, {len(rebalances)} steps of one; "
              f"running never below {min(s[2] for s in during)}")
        metrics = {k.decode(): int(float(v)) for k, v in p.r.hgetall(p.keys.metrics).items()}
        assert metrics.get("events|batch|fallback", 0) >= 1


CELERY = [PY, "-m", "celery", "-A", "fleet.demo.jobs", "worker", "--queues", "spot-jobs", "--pool", "threads",
          "--concurrency", "1", "--hostname", "${FLEET_HANDLE}@%h", "--loglevel", "WARNING",
          "--without-gossip", "--without-mingle", "--prefetch-multiplier", "1"]


def test_an_interrupted_worker_is_replaced_before_it_is_killed_and_its_job_finishes(tmp_path: Path) -> None:
    notices = tmp_path / "notices"
    with plane(tmp_path, f"""
        [clusters.spot]
        max_workers = 2
        queues = ["spot-jobs"]
        drain_timeout = 60
        pools = [
          {{ name = "spot", provider = "faulty", provider_options = {{ inner = "local", inner_options = {{ kill_grace = 5 }}, notice_file = "{notices}", notice_seconds = 60 }} }},
        ]
        [clusters.spot.container]
        command = {json.dumps(CELERY)}
        """, fleet=FLEET, workers=1, concurrency=4) as p, Watch(p, "spot", ("spot",)) as watch:
        jobs = Celery("spot-jobs", broker=p.stack.url, backend=p.stack.url, set_as_current=False)
        jobs.conf.task_acks_late = True
        p.call("fleet.scale", "spot", 2)
        wait_for(lambda: p.call("fleet.status", "spot")["running"] == 2, timeout=60, what="2 workers")
        job = jobs.send_task("demo.sleep", args=[6.0, "long"], queue="spot-jobs")
        handles = p.r.hgetall(p.keys.cluster("spot").handles)

        def busy() -> str | None:
            for h, raw in p.r.hgetall(p.keys.cluster("spot").handles).items():
                if json.loads(raw).get("busy"):
                    return h.decode()
            return None

        victim = wait_for(busy, timeout=30, what="the worker that took the job")
        noticed = time.monotonic()
        notices.write_text(victim + "\n")  # the cloud warns: this one goes in 60 s
        wait_for(lambda: not notices.read_text().strip(), timeout=15, what="the notice handled and acknowledged")
        record = json.loads(p.r.hget(p.keys.cluster("spot").handles, victim))
        assert record["s"] == "draining" and record["int"] == "spot_interruption", record
        assert job.get(timeout=60)["handle"] == victim  # it finished its job
        wait_for(lambda: not p.r.hexists(p.keys.cluster("spot").handles, victim), timeout=60,
                 what="the interrupted worker killed")
        wait_for(lambda: p.call("fleet.status", "spot")["running"] == 2, timeout=60, what="2 workers again")
        kinds = [(e["kind"], e.get("handles", e.get("handle", ""))) for e in events(p, "spot")]
        interrupted = kinds.index(("interrupted", victim))
        launch = next(i for i, (k, _) in enumerate(kinds) if k == "launch" and i > interrupted)
        gone = next(i for i, (k, hs) in enumerate(kinds) if k in ("drained", "drain_timeout", "kill") and victim in hs)
        assert interrupted < launch < gone, kinds  # the replacement was launched before the kill
        assert set(p.r.hkeys(p.keys.cluster("spot").handles)) != set(handles)
        during = watch.since(noticed)
        # above max_workers only by the interrupted count, as the provider counts its processes
        assert all(s[1]["spot"] <= 2 + s[4] for s in during), [s for s in during if s[1]["spot"] > 2 + s[4]][:3]
        assert max(s[1]["spot"] for s in during) == 3  # and it did use the allowance
        metrics = {k.decode(): v.decode() for k, v in p.r.hgetall(p.keys.metrics).items()}
        assert metrics["interruptions|spot|spot|spot_interruption"] == "1"
        assert sum(int(v) for k, v in metrics.items() if k.startswith("replaced|spot|")) >= 1  # time to replace
