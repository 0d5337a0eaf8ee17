"""Recovery, orphan reaping, boot timeouts, kill retries and the typed cloud errors, each against
a real Redis and real Celery workers (the control plane of tests/conftest.py)."""

from __future__ import annotations

import json
import sys
import time
import uuid
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.cli import main
from fleet.errors import InvalidRequest
from fleet.provider import ContainerSpec, Hardware, ProviderContext, WorkerStatus
from fleet.store import per_handle
from providers.local import LocalProvider
from providers.memory import MemoryProvider
from tests.conftest import FLEET_ID, ROOT, converged, wait_for


def scale(app: Any, cluster: str, n: int) -> dict[str, Any]:
    return app.send_task("fleet.scale", args=[cluster, n]).get(timeout=20)


def wipe(r: redis.Redis, cluster: str) -> None:
    """What a Redis without persistence loses on a restart, for this cluster: all at once (one
    DEL), as a restart does; one key at a time, a reconcile could read half-wiped state."""
    keys = list(r.scan_iter(f"fleet:{FLEET_ID}:{cluster}:*"))
    if keys:
        r.delete(*keys)


def test_lost_redis_state_is_rebuilt_from_the_provider(fleet: Any, control_plane: Any, r: redis.Redis) -> None:
    scale(control_plane, "shared", 10)
    wait_for(converged(fleet, "shared", 10), what="10")
    world = MemoryProvider.world(FLEET_ID)
    before = dict(fleet.store.read("shared").handles)
    launches = len(world.launches)
    wipe(r, "shared")
    # the sweep adopts what the provider lists and, the desired number being gone, keeps it
    wait_for(converged(fleet, "shared", 10), timeout=15, what="adopted")
    after = fleet.store.read("shared")
    assert set(after.handles) == set(before)
    assert {h: rec.workers for h, rec in after.handles.items()} == {h: rec.workers for h, rec in before.items()}
    assert len(world.launches) == launches  # nothing launched again
    assert any(e["kind"] == "desired" and e.get("source") == "adopted" for e in fleet.store.events("shared"))
    # and it goes on from there
    scale(control_plane, "shared", 4)
    wait_for(converged(fleet, "shared", 4), what="4")
    assert world.live("shared") == 4


def test_orphans_are_adopted_after_the_grace_and_killed_when_not_needed(fleet: Any, control_plane: Any) -> None:
    scale(control_plane, "single", 2)
    wait_for(converged(fleet, "single", 2), what="2")
    # workers of this fleet and cluster that Fleet never launched (a control plane died mid-launch)
    provider = fleet.pool.raw("memory")
    ref = fleet.pool.cluster("single")
    orphans = set(provider.run_workers(ref, ContainerSpec(command=("w",)), Hardware(), 3, launch_id=uuid.uuid4().hex))
    # until the grace passes they are not Fleet's, but they count against max_workers
    wait_for(lambda: fleet.api.status("single")["unknown"] == 3, what="seen as unknown")
    wait_for(lambda: set(provider.list_workers(ref)).isdisjoint(orphans), timeout=15, what="orphans killed")
    events = per_handle(fleet.store.events("single", 200))
    assert {e["handle"] for e in events if e["kind"] == "adopted"} == orphans
    assert {e["handle"] for e in events if e["kind"] == "kill"} == orphans  # the newest go first
    wait_for(converged(fleet, "single", 2), what="back to 2")
    assert set(provider.list_workers(ref)) == set(fleet.store.read("single").handles)


def test_another_fleets_workers_are_never_touched(fleet: Any, control_plane: Any) -> None:
    scale(control_plane, "local", 2)
    wait_for(converged(fleet, "local", 2), what="2")
    stranger = LocalProvider(ProviderContext("other" + FLEET_ID, ROOT))
    ref = fleet.pool.cluster("local")
    theirs = type(ref)("other" + FLEET_ID, "local", 2, ref.options)
    (h,) = set(stranger.run_workers(theirs, ContainerSpec(command=(sys.executable, "-c", "import time; time.sleep(60)")),
                                    Hardware(), 2, launch_id=uuid.uuid4().hex))
    try:
        time.sleep(4)  # two orphan graces, several sweeps
        assert stranger.worker_status(theirs, [h]) == {h: WorkerStatus.RUNNING}
        assert h not in fleet.store.read("local").handles
        assert fleet.api.status("local")["unknown"] == 0
    finally:
        stranger.kill_workers(theirs, [h])
    scale(control_plane, "local", 0)
    wait_for(converged(fleet, "local", 0), timeout=30, what="0")


def test_workers_that_never_boot_are_killed_and_replaced(fleet: Any, control_plane: Any) -> None:
    scale(control_plane, "slowboot", 2)
    wait_for(lambda: len([e for e in per_handle(fleet.store.events("slowboot", 200))
                          if e["kind"] == "boot_timeout"]) >= 4,
             timeout=20, what="two rounds of boot timeouts")
    events = per_handle(fleet.store.events("slowboot", 200))
    timed_out = [e["handle"] for e in events if e["kind"] == "boot_timeout"]
    killed = {e["handle"] for e in events if e["kind"] == "killed"}
    assert set(timed_out[:2]) <= killed  # killed, and replaced by new launches
    assert len([e for e in events if e["kind"] == "launch"]) >= 2
    scale(control_plane, "slowboot", 0)
    wait_for(converged(fleet, "slowboot", 0), what="0")


def test_failed_kills_are_retried_until_the_worker_is_gone(fleet: Any, control_plane: Any) -> None:
    scale(control_plane, "flaky", 1)
    wait_for(converged(fleet, "flaky", 1), what="1")
    faulty = fleet.pool.raw("faulty")
    faulty.script["kill"].extend(["transient", "transient", "transient"])
    (handle,) = fleet.store.read("flaky").handles
    scale(control_plane, "flaky", 0)
    wait_for(lambda: getattr(fleet.store.read("flaky").handles.get(handle), "status", None) == "stopping",
             what="stopping")
    wait_for(converged(fleet, "flaky", 0), timeout=30, what="gone after retries")
    failures = [e for e in per_handle(fleet.store.events("flaky", 200)) if e["kind"] == "kill_failed"]
    assert len(failures) >= 3 and {e["handle"] for e in failures} == {handle}
    assert MemoryProvider.world(FLEET_ID).live("flaky") == 0


def test_a_dead_workers_remains_are_cleaned_up_though_the_first_kill_fails(fleet: Any, control_plane: Any,
                                                                           r: redis.Redis) -> None:
    """A worker that dies but leaves remains (an exited container, a stopped VM) is replaced at
    once, and its remains are killed again from the cleanup hash until a kill succeeds."""
    scale(control_plane, "flaky", 1)
    wait_for(converged(fleet, "flaky", 1), what="1")
    world = MemoryProvider.world(FLEET_ID)
    (dead,) = fleet.store.read("flaky").handles
    world.refuse_kills(dead, 2)  # the cloud refuses its first two kills
    world.exit(dead)
    wait_for(lambda: fleet.api.status("flaky")["cleanup"] == 1, what="remains shown in the status")
    wait_for(lambda: dead not in fleet.store.read("flaky").handles and converged(fleet, "flaky", 1)(),
             what="replaced")
    wait_for(lambda: dead not in world.workers, timeout=20, what="remains removed by a re-sent kill")
    assert world.refused[dead] == 0
    wait_for(lambda: not r.hexists(f"fleet:{FLEET_ID}:flaky:cleanup", dead), what="cleanup ended")
    assert fleet.api.status("flaky")["cleanup"] == 0
    events = per_handle(fleet.store.events("flaky", 200))
    assert [e["handle"] for e in events if e["kind"] == "stopped"] == [dead]
    (done,) = [e for e in events if e["kind"] == "cleaned_up"]
    assert done["handle"] == dead and int(done["tries"]) >= 2  # refused, refused on the first re-send, then done
    assert world.live("flaky") == 1
    assert len([w for w in world.workers.values() if w.cluster == "flaky"]) == 1  # nothing left behind


def _stopping_handle(r: redis.Redis) -> tuple[Any, str]:
    """A State of a fleet id nobody sweeps, with one handle that a scale-down marked stopping."""
    from fleet.model import EventKind, HandleStatus
    from fleet.store import Store

    state = Store(r, "t" + uuid.uuid4().hex[:8])
    state.claim_launch("web", "L1")
    state.record_launch("web", "L1", ["h1"])
    assert state.transition("web", ["h1"], [HandleStatus.INITIALIZING], HandleStatus.STOPPING,
                            EventKind.KILL) == ["h1"]
    return state, "h1"


def test_a_kill_that_fails_after_its_handle_left_redis_is_cleaned_up(r: redis.Redis) -> None:
    """The sweep sees a stopping handle stopped (it exited on its own) while its kill is still
    queued; then that kill fails: its remains still get killed, from the cleanup hash."""
    state, h = _stopping_handle(r)
    assert state.apply_status("web", {h: "stopped"}, 0.0, 0.2).gone == 1  # no failed kill yet
    assert not r.hexists(state.of("web").cleanup, h)
    state.record_kills("web", {h: False}, 0.2)
    assert r.hexists(state.of("web").cleanup, h)
    assert [e["kind"] for e in state.events("web")][-1] == "kill_failed"
    assert state.cleanup_due("web", 0.2, 20) == {}  # not before its retry time
    time.sleep(0.25)
    assert state.cleanup_due("web", 0.2, 20) == {h: ""}
    state.record_kills("web", {h: True}, 0.2)
    assert not r.hexists(state.of("web").cleanup, h)
    assert [e["kind"] for e in state.events("web")][-1] == "cleaned_up"


def test_an_adopted_handle_leaves_the_cleanup_hash(r: redis.Redis) -> None:
    """A dead handle whose cleanup kill failed comes back to life (a stopped VM started again)
    and is adopted: its re-sent cleanup kills must not kill a worker Fleet tracks again."""
    state, h = _stopping_handle(r)
    state.record_kills("web", {h: False}, 0.2)
    state.apply_status("web", {h: "stopped"}, 0.0, 0.2)  # left, after a failed kill: cleanup
    assert r.hexists(state.of("web").cleanup, h)
    assert state.adopt("web", {h: (1, "running")}, set_desired=False) == 1
    assert not r.hexists(state.of("web").cleanup, h)
    time.sleep(0.25)
    assert state.cleanup_due("web", 0.2, 20) == {}


def test_rate_limited_holds_every_worker_off_the_provider(fleet: Any, control_plane: Any) -> None:
    faulty = fleet.pool.raw("faulty")
    faulty.script["run"].append("rate_limited:2")
    scale(control_plane, "flaky", 2)
    wait_for(lambda: fleet.api.status("flaky")["rate_limited"] > 0, what="a shared hold")
    calls = MemoryProvider.world(FLEET_ID).calls["run"]
    time.sleep(1.0)
    assert MemoryProvider.world(FLEET_ID).calls["run"] == calls  # nobody calls during the hold
    wait_for(converged(fleet, "flaky", 2), timeout=20, what="launched after the hold")


def test_quota_exceeded_holds_launches_until_a_worker_goes(fleet: Any, control_plane: Any) -> None:
    faulty = fleet.pool.raw("faulty")
    scale(control_plane, "flaky", 2)
    wait_for(converged(fleet, "flaky", 2), what="2")
    faulty.script["run"].append("quota")
    scale(control_plane, "flaky", 4)
    wait_for(lambda: fleet.api.status("flaky")["at_quota"] > 0, what="at quota")
    time.sleep(1.5)  # several sweeps: no launch is tried while at quota
    status = fleet.api.status("flaky")
    assert (status["running"], status["pending"], status["at_quota"] > 0) == (2, 0, True)
    assert "at quota for" in CliRunner().invoke(main, ["status", "flaky"]).output
    assert len([e for e in fleet.store.events("flaky", 200) if e["kind"] == "at_quota"]) == 1
    MemoryProvider.world(FLEET_ID).crash(next(iter(fleet.store.read("flaky").handles)))  # a worker goes away
    wait_for(converged(fleet, "flaky", 4), timeout=20, what="launches resume")


def test_capacity_error_holds_the_type_and_tries_the_next(fleet: Any, control_plane: Any) -> None:
    faulty = fleet.pool.raw("faulty")
    faulty.script["run"].append("capacity:big.large")
    scale(control_plane, "flaky", 1)
    wait_for(converged(fleet, "flaky", 1), timeout=20, what="launched on another type")
    assert "big.large" in faulty.excluded_seen[-1]
    assert "big.large" in fleet.holds.held_types("faulty")
    assert any(e["kind"] == "no_capacity" and e["instance_type"] == "big.large" for e in fleet.store.events("flaky"))


def test_capacity_error_on_a_type_that_cannot_change_holds_the_cluster(fleet: Any, control_plane: Any) -> None:
    """An explicit instance type (or a Fargate size) fails again after Fleet excluded it: the
    cluster is then held, not retried launch after launch."""
    faulty = fleet.pool.raw("faulty")
    faulty.script["run"].extend(["capacity:fixed.type"] * 2)  # the provider asks for it again
    scale(control_plane, "flaky", 1)
    wait_for(lambda: fleet.api.status("flaky")["no_capacity"] > 0, what="the cluster held")
    assert "fixed.type" in faulty.excluded_seen[-1]  # the second launch was told to avoid it
    calls = MemoryProvider.world(FLEET_ID).calls["run"]
    time.sleep(1.5)  # several sweeps and reconciles: nothing is tried during the hold
    status = fleet.api.status("flaky")
    assert (status["running"], status["pending"]) == (0, 0)
    assert MemoryProvider.world(FLEET_ID).calls["run"] == calls
    assert len([e for e in fleet.store.events("flaky", 200) if e["kind"] == "no_capacity"]) == 2
    assert "no capacity for" in CliRunner().invoke(main, ["status", "flaky"]).output
    fleet.redis.delete(fleet.store.keys.provider_capacity("faulty"))  # the type's own hold ends first
    assert CliRunner().invoke(main, ["clear", "flaky"]).exit_code == 0
    wait_for(converged(fleet, "flaky", 1), timeout=20, what="launched after the operator cleared it")


def test_a_fresh_start_never_takes_itself_for_lost_data(fleet: Any, r: redis.Redis) -> None:
    """Many threads checking the epoch of a fleet id Redis has never seen: no recovery hold. The
    epoch changing under a process that saw one: a hold, which `fleet clear` ends."""
    import threading

    from fleet.holds import Holds
    from fleet.manager import Manager

    fid = "epoch" + uuid.uuid4().hex[:8]
    config = fleet.config.model_copy(update={"fleet": fleet.config.fleet.model_copy(update={"id": fid})})
    for _ in range(5):
        managers = [Manager(config, r, fleet.dispatcher, fleet.url) for _ in range(2)]
        go = threading.Barrier(8)

        def check(m: Manager, go: threading.Barrier = go) -> None:
            go.wait()
            m.epoch.check()

        threads = [threading.Thread(target=check, args=(managers[i % 2],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        guard = Holds(r, fid)
        assert guard.recovering() == 0
        r.delete(f"fleet:{fid}:epoch")
    managers[0].epoch.check()
    r.delete(f"fleet:{fid}:epoch")  # Redis lost its data under a running process
    managers[0].epoch.check()
    assert guard.recovering() > 0
    assert guard.clear("single")
    assert guard.recovering() == 0
    r.delete(*r.keys(f"fleet:{fid}:*") or ["-"])


def test_permanent_error_shows_in_status_and_stops_retrying_until_cleared(fleet: Any, control_plane: Any) -> None:
    faulty = fleet.pool.raw("faulty")
    faulty.script["run"].append("permanent")
    scale(control_plane, "flaky", 1)
    wait_for(lambda: fleet.api.status("flaky")["error"], what="the error in status")
    assert "fix the injected option" in fleet.api.status("flaky")["error"]
    calls = MemoryProvider.world(FLEET_ID).calls["run"]
    time.sleep(1.5)  # several sweeps and reconciles: no hot loop, no retry
    assert fleet.api.status("flaky")["pending"] == 0
    assert len([e for e in fleet.store.events("flaky", 200) if e["kind"] == "error"]) == 1
    assert MemoryProvider.world(FLEET_ID).calls["run"] == calls
    shown = CliRunner().invoke(main, ["status", "flaky"])
    assert shown.exit_code == 0 and "error: injected permanent error" in shown.output
    cleared = CliRunner().invoke(main, ["clear", "flaky"])  # the operator's reset
    assert cleared.exit_code == 0 and "flaky: cleared" in cleared.output, cleared.output
    wait_for(converged(fleet, "flaky", 1), timeout=20, what="launched after the operator cleared it")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cluster=st.one_of(st.text(max_size=70), st.integers(), st.none(), st.lists(st.text(), max_size=2)),
       workers=st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=10), st.none(),
                         st.booleans(), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(), st.integers(), max_size=2)))
def test_bad_input_to_the_public_tasks_changes_nothing(fleet: Any, r: redis.Redis, cluster: Any, workers: Any) -> None:
    def snapshot() -> dict[bytes, Any]:  # what a scale request may change: desired numbers, launches
        return {k: r.dump(k) for k in r.scan_iter(f"fleet:{FLEET_ID}:*") if k.endswith((b":desired", b":pending"))}

    before = snapshot()
    try:
        result = fleet.api.scale(cluster, workers)
    except InvalidRequest as exc:
        assert 0 < len(str(exc)) < 400
        assert snapshot() == before
    else:
        spec = fleet.config.spec(cluster)
        assert isinstance(workers, int) and not isinstance(workers, bool)
        assert spec.min_workers <= workers <= spec.max_workers and result["desired"] == workers
        fleet.api.scale(cluster, 0)


def test_malformed_messages_never_crash_a_control_plane_worker(fleet: Any, control_plane: Any) -> None:
    from kombu import Connection

    with Connection(control_plane.conf.broker_url) as conn:
        producer = conn.Producer()
        producer.publish(b"\xff not json", routing_key="celery", content_type="application/json",
                         content_encoding="binary", headers={"task": "fleet.scale", "id": str(uuid.uuid4())})
        producer.publish({"no": "task"}, routing_key="celery", serializer="json")
        producer.publish(b"\x80\x04K\x01.", routing_key="celery", content_type="application/x-python-serialize",
                         content_encoding="binary", headers={"task": "fleet.scale", "id": str(uuid.uuid4())})
    bad = [control_plane.send_task("fleet.scale", args=["single"]),
           control_plane.send_task("fleet.scale", args=["single", 1, 2, 3]),
           control_plane.send_task("fleet.scale", kwargs={"bogus": 1}),
           control_plane.send_task("fleet.kill", args=["single", "not-a-list"], queue=f"fleet.{FLEET_ID}.provider.memory"),
           control_plane.send_task("fleet.nope", args=[])]
    for result in bad[:3]:
        with pytest.raises(TypeError):
            result.get(timeout=20)
    scale(control_plane, "single", 3)  # the worker is alive and well
    wait_for(converged(fleet, "single", 3), what="3")
    assert json.loads(json.dumps(fleet.api.status("single")))["running"] == 3


def test_a_launch_cancelled_while_its_answer_is_lost_is_asked_for_and_killed(fleet: Any, control_plane: Any) -> None:
    """A launch reaches the provider, its answer is lost (the run task retries), and a scale-down
    cancels it meanwhile: the retry asks the provider what the launch made (`find_launch`),
    records it as stopping and kills it, instead of dropping the launch with its workers running
    and counted nowhere."""
    faulty = fleet.pool.raw("faulty")
    world = MemoryProvider.world(FLEET_ID)
    faulty.script["run"].append("lost")
    scale(control_plane, "flaky", 3)
    wait_for(lambda: world.live("flaky") == 3, what="the launch carried out")
    pending = fleet.store.read("flaky").pending
    assert [p.state for p in pending.values()] == ["running"]  # unknown outcome: still counted
    scale(control_plane, "flaky", 0)  # cancels the launch while its run task waits to retry
    wait_for(lambda: world.live("flaky") == 0 and converged(fleet, "flaky", 0)(), timeout=30,
             what="the lost launch's workers killed")
    assert world.calls["find"] >= 1
    assert world.high_water["flaky"] == 3
    kinds = [e["kind"] for e in fleet.store.events("flaky", 200)]
    assert "cancelled" in kinds and kinds.count("launched") == 1 and "killed" in kinds


def test_refusals_are_short_and_hold_takes_only_a_real_boolean(fleet: Any, control_plane: Any) -> None:
    scale(control_plane, "single", 1)
    wait_for(converged(fleet, "single", 1), what="1")
    (handle,) = fleet.store.read("single").handles
    before = dict(fleet.store.read("single").handles)
    for value in ("false", "0", 0, 1, None, [], {"hold": True}):
        with pytest.raises(Exception) as info:
            control_plane.send_task("fleet.hold", args=["single", handle, value]).get(timeout=20)
        assert type(info.value).__name__ == "InvalidRequest" and "hold must be true or false" in str(info.value)
    assert fleet.store.read("single").handles == before  # nothing held
    for n in (10 ** 4200, -(10 ** 4200)):  # as big as a JSON message can carry
        with pytest.raises(Exception) as info:
            control_plane.send_task("fleet.scale", args=["single", n]).get(timeout=20)
        assert type(info.value).__name__ == "ScaleRefused" and len(str(info.value)) < 200, str(info.value)[:300]
        assert "bits" in str(info.value)
    assert control_plane.send_task("fleet.hold", args=["single", handle, False]).get(timeout=20)["hold"] is False
