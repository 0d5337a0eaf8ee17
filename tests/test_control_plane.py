"""The managed layer end to end: a real Redis, a real Celery worker and a real beat."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
import redis

from fleet.store import per_handle
from providers.memory import MemoryProvider
from tests.conftest import FLEET_ID, REDIS_URL, converged, wait_for, workers_by_handle


def scale(app: Any, cluster: Any, n: Any) -> dict[str, Any]:
    return app.send_task("fleet.scale", args=[cluster, n]).get(timeout=20)


def test_status_task_returns_the_numbers(fleet: Any, control_plane: Any) -> None:
    scale(control_plane, "single", 3)
    wait_for(converged(fleet, "single", 3), what="3 running")
    status = control_plane.send_task("fleet.status", args=["single"]).get(timeout=20)
    assert {k: status[k] for k in ("cluster", "desired", "initializing", "running")} == {
        "cluster": "single", "desired": 3, "initializing": 0, "running": 3}


def test_shared_handles_are_counted_by_workers(fleet: Any, control_plane: Any) -> None:
    scale(control_plane, "shared", 6)  # 4 + 2
    wait_for(converged(fleet, "shared", 6), what="6 running")
    assert workers_by_handle(fleet, "shared") == [2, 4]
    world = MemoryProvider.world(FLEET_ID)
    assert world.live("shared") == 6


def test_exact_convergence_with_shared_handles(fleet: Any, control_plane: Any) -> None:
    # two full containers, then 5: kill one (below the target) and launch the difference
    scale(control_plane, "shared", 8)
    wait_for(converged(fleet, "shared", 8), what="8")
    assert workers_by_handle(fleet, "shared") == [4, 4]
    scale(control_plane, "shared", 5)
    wait_for(converged(fleet, "shared", 5), what="5")
    assert workers_by_handle(fleet, "shared") == [1, 4]
    # 3 + 4 + 3 (three scale-ups on a 4-per-container cluster), then 11
    scale(control_plane, "shared", 0)
    wait_for(converged(fleet, "shared", 0), what="0")
    for n in (3, 7, 10):
        scale(control_plane, "shared", n)
        wait_for(converged(fleet, "shared", n), what=str(n))
    assert workers_by_handle(fleet, "shared") == [3, 3, 4]
    scale(control_plane, "shared", 11)
    wait_for(converged(fleet, "shared", 11), what="11")
    assert workers_by_handle(fleet, "shared") == [1, 3, 3, 4]
    scale(control_plane, "shared", 0)
    wait_for(converged(fleet, "shared", 0), what="0")
    assert MemoryProvider.world(FLEET_ID).live("shared") == 0


def test_scale_down_kills_initializing_before_running(fleet: Any, control_plane: Any) -> None:
    # 'booting' workers never finish booting; mark two as running by hand to mix the states
    scale(control_plane, "booting", 4)
    wait_for(lambda: len(fleet.store.read("booting").handles) == 4 and not fleet.store.read("booting").pending,
             what="4 handles")
    world = MemoryProvider.world(FLEET_ID)
    running = sorted(fleet.store.read("booting").handles)[:2]
    for h in running:
        world.workers[h].boot_seconds = 0
    wait_for(lambda: fleet.store.read("booting").count("running") == 2, what="2 running")
    scale(control_plane, "booting", 2)
    wait_for(lambda: len(fleet.store.read("booting").handles) == 2, what="2 left")
    assert sorted(fleet.store.read("booting").handles) == running
    kinds = [(e["kind"], e.get("was")) for e in per_handle(fleet.store.events("booting", 100))
             if e["kind"] == "kill"]
    assert kinds == [("kill", "initializing"), ("kill", "initializing")]


def test_dead_workers_are_pruned_and_replaced_by_the_sweep(fleet: Any, control_plane: Any) -> None:
    scale(control_plane, "shared", 8)
    wait_for(converged(fleet, "shared", 8), what="8")
    before = set(fleet.store.read("shared").handles)
    victim = sorted(before)[0]
    MemoryProvider.world(FLEET_ID).crash(victim)
    wait_for(lambda: victim not in fleet.store.read("shared").handles and converged(fleet, "shared", 8)(),
             what="replacement")
    after = set(fleet.store.read("shared").handles)
    assert victim not in after and len(after - before) == 1
    assert any(e["kind"] == "stopped" and e["handle"] == victim for e in per_handle(fleet.store.events("shared")))


def test_a_run_task_delivered_twice_launches_once(fleet: Any, control_plane: Any, r: redis.Redis) -> None:
    # a pending launch as a reconcile records it, then its run task delivered twice, concurrently
    launch_id = "dup" + "0" * 29
    fleet.store.set_desired("single", 3)  # so that no reconcile cancels the launch meanwhile
    r.hset(fleet.store.of("single").pending, launch_id, json.dumps({"count": 3, "state": "queued", "at": time.time()}))
    queue = f"fleet.{FLEET_ID}.provider.memory"
    for _ in range(2):
        control_plane.send_task("fleet.run", args=["single", launch_id], queue=queue)
    wait_for(lambda: not fleet.store.read("single").pending, what="launch recorded")
    time.sleep(0.5)
    world = MemoryProvider.world(FLEET_ID)
    assert len([w for w in world.workers.values() if w.launch_id == launch_id]) == 3
    assert {w.launch_id for w in world.workers.values() if w.cluster == "single"} == {launch_id}
    assert len(fleet.store.read("single").handles) == 3
    # and later redeliveries find nothing pending: no provider call at all
    calls = world.calls["run"]
    control_plane.send_task("fleet.run", args=["single", launch_id], queue=queue)
    time.sleep(0.5)
    assert world.calls["run"] == calls


def _burst(args: tuple[str, int, list[int]]) -> list[tuple[int, int]]:
    from celery import Celery

    url, _, values = args
    client = Celery("burst", broker=url, backend=url)
    results = [client.send_task("fleet.scale", args=["burst", n]) for n in values]
    return [(res.get(timeout=30)["version"], n) for res, n in zip(results, values)]


def test_concurrent_scale_requests_coalesce_and_never_pass_max(fleet: Any, control_plane: Any) -> None:
    import random

    rng = random.Random(7)
    plans = [(REDIS_URL, i, [rng.randint(0, 12) for _ in range(10)]) for i in range(5)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(5) as pool:
        replies = [pair for chunk in pool.map(_burst, plans) for pair in chunk]
    assert len(replies) == 50
    version, last = max(replies)
    desired = fleet.store.get_desired("burst")
    assert (desired.version, desired.n) == (version, last) == (50, last)
    wait_for(converged(fleet, "burst", last), timeout=30, what=f"converged to {last}")
    world = MemoryProvider.world(FLEET_ID)
    assert world.live("burst") == last
    assert world.high_water["burst"] <= 12
    reconciles = sum(1 for e in fleet.store.events("burst", 1000) if e["kind"] == "launch")
    assert reconciles < 50  # bursts coalesce into fewer launches than requests


@pytest.mark.parametrize(
    "cluster, workers, error",
    [
        ("single", -1, "ScaleRefused"),
        ("single", 21, "ScaleRefused"),
        ("single", 2.5, "InvalidRequest"),
        ("single", "4", "InvalidRequest"),
        ("single", True, "InvalidRequest"),
        ("single", None, "InvalidRequest"),
        ("nope", 1, "UnknownCluster"),
        (["single"], 1, "UnknownCluster"),
        ("x" * 100_000, 1, "UnknownCluster"),
        ("single", "9" * 100_000, "InvalidRequest"),
    ],
)
def test_bad_scale_requests_are_refused_and_change_nothing(
    fleet: Any, control_plane: Any, r: redis.Redis, cluster: Any, workers: Any, error: str
) -> None:
    scale(control_plane, "single", 2)
    wait_for(converged(fleet, "single", 2), what="2")
    keys = [getattr(fleet.store.of(c), k) for c in fleet.config.clusters for k in ("desired", "handles", "pending", "events")]
    before = [r.dump(k) for k in keys]
    with pytest.raises(Exception) as info:
        scale(control_plane, cluster, workers)
    assert type(info.value).__name__ == error
    assert 0 < len(str(info.value)) < 400  # clear, and an oversized argument is not echoed back
    time.sleep(0.2)
    assert [r.dump(k) for k in keys] == before


def test_a_service_that_imports_nothing_of_fleet_scales_by_name(fleet: Any, control_plane: Any) -> None:
    script = textwrap.dedent(f"""
        import sys
        sys.modules['fleet'] = None  # prove nothing of Fleet is needed
        from celery import Celery
        app = Celery(broker={REDIS_URL!r}, backend={REDIS_URL!r})
        print(app.send_task("fleet.scale", args=["single", 4]).get(timeout=20)["desired"])
        print(app.send_task("fleet.status", args=["single"]).get(timeout=20)["cluster"])
        try:
            app.send_task("fleet.scale", args=["single", 99]).get(timeout=20)
        except Exception as exc:
            print(type(exc).__name__, exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == ["4", "single"]
    assert lines[2].startswith("ScaleRefused") and "between 0 and 20" in lines[2]
    wait_for(converged(fleet, "single", 4), what="4")
