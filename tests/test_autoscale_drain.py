"""Autoscaling from a real broker queue, draining real Celery workers before they are killed, and
the operator's hold / drain / kill per handle. The cluster `auto` runs real `celery worker`
processes of the demo job app (local provider), named after their handles."""

from __future__ import annotations

import time
from typing import Any

import pytest
from celery import Celery
from click.testing import CliRunner

from fleet.cli import main
from fleet.store import per_handle
from providers.memory import MemoryProvider
from tests.conftest import FLEET_ID, REDIS_URL, converged, wait_for

QUEUE = "auto-jobs"


@pytest.fixture
def jobs() -> Celery:
    client = Celery("test-jobs", broker=REDIS_URL, backend=REDIS_URL, set_as_current=False)
    client.conf.task_acks_late = True
    return client


def desired_changes(fleet: Any, cluster: str) -> list[tuple[float, int, str]]:
    return [(e["at"], int(e["n"]), e.get("source", "")) for e in fleet.store.events(cluster, 1000)
            if e["kind"] == "desired"]


def settle_to_zero(fleet: Any, control_plane: Any) -> None:
    control_plane.send_task("fleet.scale", args=["auto", 0]).get(timeout=20)


def test_autoscaling_follows_the_queue_up_at_once_and_down_after_the_delay(fleet: Any, control_plane: Any,
                                                                          jobs: Celery, r: Any) -> None:
    r.delete(QUEUE)
    results = [jobs.send_task("demo.sleep", args=[2.0, f"j{i}"], queue=QUEUE) for i in range(8)]
    # load 8, two tasks a worker: 4 workers, at once
    wait_for(lambda: (fleet.store.get_desired("auto") or type("", (), {"n": 0})).n == 4, timeout=15,
             what="desired 4 from the load")
    wait_for(lambda: fleet.store.read("auto").count("running") == 4, timeout=30, what="4 workers")
    wait_for(lambda: any(res.ready() for res in results), timeout=60, what="a first job done")
    load_fell = time.time()  # from here the load is below 8: the scale-down clock may start
    assert {res.get(timeout=60)["tag"] for res in results} == {f"j{i}" for i in range(8)}
    wait_for(lambda: fleet.store.get_desired("auto").n < 4, timeout=30, what="a scale-down")
    changes = desired_changes(fleet, "auto")
    down = [c for c in changes if c[1] < 4]
    assert down[0][0] - load_fell >= 4 - 0.5  # not before scale_down_delay (4 s) of lower load
    assert all("autoscale" in source for _, _, source in changes)
    wait_for(converged(fleet, "auto", 0), timeout=60, what="back to 0")


def test_no_flapping_under_a_steady_load(fleet: Any, control_plane: Any, jobs: Celery, r: Any) -> None:
    r.delete(QUEUE)
    started = time.monotonic()
    pending: list[Any] = []
    while time.monotonic() - started < 12:  # keep about 4 jobs waiting or running
        pending = [p for p in pending if not p.ready()]
        while len(pending) < 4:
            pending.append(jobs.send_task("demo.sleep", args=[0.5], queue=QUEUE))
        time.sleep(0.1)
    for p in pending:
        p.get(timeout=60)
    changes = [n for _, n, _ in desired_changes(fleet, "auto")]
    assert 0 < len(changes) <= 3, changes  # up once or twice, never up and down and up again
    assert changes == sorted(changes)
    settle_to_zero(fleet, control_plane)
    wait_for(converged(fleet, "auto", 0), timeout=60, what="back to 0")


def test_a_busy_worker_is_drained_not_killed(fleet: Any, control_plane: Any, jobs: Celery, r: Any) -> None:
    r.delete(QUEUE)
    control_plane.send_task("fleet.scale", args=["auto", 1]).get(timeout=20)  # a floor of 1
    wait_for(lambda: fleet.store.read("auto").count("running") == 1, timeout=30, what="1 worker")
    long = jobs.send_task("demo.sleep", args=[5.0, "long"], queue=QUEUE)
    wait_for(lambda: any(rec.busy for rec in fleet.store.read("auto").handles.values()),
             timeout=15, what="the worker busy")
    (handle,) = fleet.store.read("auto").handles
    control_plane.send_task("fleet.scale", args=["auto", 0]).get(timeout=20)
    wait_for(lambda: getattr(fleet.store.read("auto").handles.get(handle), "status", None) == "draining",
             timeout=10, what="draining")
    assert long.get(timeout=30)["handle"] == handle  # the job ended on that worker
    wait_for(lambda: any(e["kind"] == "drained" for e in fleet.store.events("auto", 1000)), what="drained")
    events = per_handle(fleet.store.events("auto", 1000))
    finished = next(e["at"] for e in events if e["kind"] == "drained" and e["handle"] == handle)
    drain = next(e["at"] for e in events if e["kind"] == "drain" and e["handle"] == handle)
    assert finished - drain >= 3.0  # it waited for the job
    wait_for(converged(fleet, "auto", 0), timeout=30, what="gone")


def test_no_job_is_lost_across_a_scale_down_with_jobs_in_flight(fleet: Any, control_plane: Any,
                                                                jobs: Celery, r: Any) -> None:
    r.delete(QUEUE)
    control_plane.send_task("fleet.scale", args=["auto", 4]).get(timeout=20)
    wait_for(lambda: fleet.store.read("auto").count("running") == 4, timeout=30, what="4 workers")
    results = [jobs.send_task("demo.sleep", args=[0.3, f"j{i}"], queue=QUEUE) for i in range(40)]
    time.sleep(1.0)  # jobs in flight on every worker
    control_plane.send_task("fleet.scale", args=["auto", 0]).get(timeout=20)
    wait_for(lambda: fleet.store.read("auto").count("running") == 0 and fleet.store.read("auto").count("draining") == 0,
             timeout=60, what="every worker drained")
    done = sum(1 for res in results if res.ready())
    assert all(res.successful() for res in results if res.ready())
    # what was not done is still waiting in the queue, not lost: a new worker finishes it
    control_plane.send_task("fleet.scale", args=["auto", 1]).get(timeout=20)
    assert sorted(res.get(timeout=90)["tag"] for res in results) == sorted(f"j{i}" for i in range(40))
    assert done > 0
    settle_to_zero(fleet, control_plane)
    wait_for(converged(fleet, "auto", 0), timeout=60, what="back to 0")


def test_operator_hold_drain_and_kill_per_handle(fleet: Any, control_plane: Any) -> None:
    runner = CliRunner()
    control_plane.send_task("fleet.scale", args=["single", 3]).get(timeout=20)
    wait_for(converged(fleet, "single", 3), what="3")
    handles = sorted(fleet.store.read("single").handles)
    held = handles[0]
    out = runner.invoke(main, ["hold", "single", held])
    assert out.exit_code == 0 and "held" in out.output
    control_plane.send_task("fleet.scale", args=["single", 0]).get(timeout=20)
    wait_for(lambda: set(fleet.store.read("single").handles) == {held}, what="all but the held one gone")
    time.sleep(1.5)  # several reconciles: the held handle stays, above the target
    assert set(fleet.store.read("single").handles) == {held}
    out = runner.invoke(main, ["kill", "single", held])  # the operator may kill it all the same
    assert out.exit_code == 0, out.output
    wait_for(converged(fleet, "single", 0), what="gone")
    assert MemoryProvider.world(FLEET_ID).live("single") == 0
    kills = [e for e in per_handle(fleet.store.events("single", 200)) if e["kind"] == "kill"]
    assert [e["handle"] for e in kills if e.get("by") == "operator"] == [held]  # the story names who
    # drain needs a cluster whose workers consume known queues
    out = runner.invoke(main, ["drain", "single", "nope"])
    assert out.exit_code == 2 and "no `queues`" in out.output
    out = runner.invoke(main, ["hold", "single", "nope"])
    assert out.exit_code == 2 and "no handle" in out.output


def test_operator_drain_replaces_the_worker(fleet: Any, control_plane: Any) -> None:
    control_plane.send_task("fleet.scale", args=["auto", 1]).get(timeout=20)
    wait_for(lambda: fleet.store.read("auto").count("running") == 1, timeout=30, what="1 worker")
    (handle,) = fleet.store.read("auto").handles
    out = CliRunner().invoke(main, ["drain", "auto", handle])
    assert out.exit_code == 0, out.output
    assert [e.get("by") for e in fleet.store.events("auto", 200) if e["kind"] == "drain"] == ["operator"]
    wait_for(lambda: handle not in fleet.store.read("auto").handles and fleet.store.read("auto").count("running") == 1,
             timeout=40, what="drained and replaced")
    settle_to_zero(fleet, control_plane)
    wait_for(converged(fleet, "auto", 0), timeout=60, what="back to 0")
