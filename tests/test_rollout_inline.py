"""Rollouts, lifetimes and retired clusters in the managed layer, step by step: the session's
real Redis, the memory provider in this process, the work run in order by the inline
dispatcher. (tests/test_rollout.py does the same with real processes and real Celery jobs.)"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest

from fleet.errors import ScaleRefused
from fleet.manager import Manager
from fleet.testing.inline import InlineDispatcher
from providers.memory import MemoryProvider
from tests.conftest import inline, work


def cluster(command: str = "v1", **extra: Any) -> dict[str, Any]:
    return {"provider": "memory", "max_workers": 4, "boot_timeout": 1, "container": {"command": [command]}, **extra}


def revs(m: Manager, name: str) -> Counter[str]:
    return Counter(r.rev for r in m.store.read(name).handles.values())


def settle(m: Manager, d: InlineDispatcher, name: str, rounds: int = 12, watch: list[tuple[int, int]] | None = None,
           pause: float = 0.0) -> None:
    for _ in range(rounds):
        work(d)
        m.sweeper.sweep_cluster(name)
        work(d)
        if watch is not None:
            counts = m.store.counts(name)
            watch.append((counts.of("running"), counts.live + counts.going))
        time.sleep(pause)


def test_a_changed_spec_rolls_out_one_surge_at_a_time(fid: str) -> None:
    m, d = inline(fid, {"c": cluster()})
    m.api.scale("c", 4)
    settle(m, d, "c", 2)
    old = m.config.spec("c").revision("")
    assert revs(m, "c") == {old: 4}
    m2, d2 = inline(fid, {"c": cluster("v2")})  # the control plane restarts with a changed command
    new = m2.config.spec("c").revision("")
    assert new != old and m2.api.rollout("c", "status")["outdated"] == 4
    seen: list[tuple[int, int]] = []
    settle(m2, d2, "c", 14, seen)
    assert revs(m2, "c") == {new: 4}
    assert min(r for r, _ in seen) >= 4 and max(t for _, t in seen) <= 4 + 1, seen  # max 4 + surge 1
    kinds = [e["kind"] for e in m2.store.events("c", 200)]
    assert ("rollout" in kinds and kinds[-1] == "rollout_done") or "rollout_done" in kinds, kinds
    status = m2.api.rollout("c", "status")
    assert status["state"] == "idle" and status["outdated"] == 0 and status["updated"] == 4
    assert MemoryProvider.world(fid).high_water["c"] <= 5


def test_new_workers_that_never_boot_stop_the_rollout_after_the_first_surge(fid: str) -> None:
    m, d = inline(fid, {"c": cluster()})
    m.api.scale("c", 4)
    settle(m, d, "c", 2)
    before = set(m.store.read("c").handles)
    broken = cluster(provider_options={"boot_seconds": 3600})  # a new revision whose workers never run
    m2, d2 = inline(fid, {"c": broken})
    settle(m2, d2, "c", 8, pause=0.3)
    status = m2.api.rollout("c", "status")
    assert status["state"] == "stopped" and "did not run within boot_timeout" in status["reason"], status
    assert before <= set(m2.store.read("c").handles)  # no old worker was killed
    assert MemoryProvider.world(fid).calls["run"] == 1 + 1  # the first launch, and one surge: no more
    assert any(e["kind"] == "rollout_stopped" for e in m2.store.events("c", 100))
    m2.api.rollout("c", "pause")
    assert m2.api.rollout("c", "status")["state"] == "paused"
    m2.api.rollout("c", "resume")
    assert m2.api.rollout("c", "status")["state"] == "rolling"


def test_max_lifetime_replaces_old_workers_without_a_gap(fid: str) -> None:
    m, d = inline(fid, {"c": cluster(max_lifetime=1.0)})
    m.api.scale("c", 2)
    settle(m, d, "c", 1)
    first = set(m.store.read("c").handles)
    seen: list[tuple[int, int]] = []
    time.sleep(1.1)
    settle(m, d, "c", 10, seen)
    now = set(m.store.read("c").handles)
    assert not first & now and len(now) == 2, (first, now)
    assert min(r for r, _ in seen) >= 2
    assert any(e["kind"] == "expired" for e in m.store.events("c", 200))


def test_a_cluster_removed_from_the_config_is_retired_then_forgotten(fid: str) -> None:
    m, d = inline(fid, {"c": cluster(), "keep": cluster()})
    m.api.scale("c", 3)
    settle(m, d, "c", 2)
    m2, d2 = inline(fid, {"keep": cluster()})  # restarted without "c"
    assert m2.config.retired == {"c"}
    assert m2.sweeper.sweep_cluster("c")["retired"] == "declared elsewhere"  # the old process's word holds
    m2.redis.delete(f"fleet:{fid}:c:declared")  # until it expires: the old process is gone
    assert m2.queries.status("c")["retired"] is True
    with pytest.raises(ScaleRefused, match="retired"):
        m2.api.scale("c", 3)
    settle(m2, d2, "c", 4)
    world = MemoryProvider.world(fid)
    assert world.live("c") == 0  # every worker killed
    assert not list(m2.redis.scan_iter(match=f"fleet:{fid}:c:*"))  # and nothing of it left in Redis
    assert m2.sweeper.sweep_cluster("c")["retired"] == "gone"
    assert not list(m2.redis.scan_iter(match=f"fleet:{fid}:c:*"))  # a later sweep writes nothing


def test_the_revision_survives_a_loss_of_redis_data_from_the_ec2_tags(fid: str, aws_world: Any) -> None:
    def ec2(command: str) -> dict[str, Any]:
        return {"c": {"provider": "aws_ec2", "max_workers": 4, "container": {"command": [command]},
                      "provider_options": aws_world.ec2_options()}}
    m, d = inline(fid, ec2("v1"))
    m.api.scale("c", 2)
    settle(m, d, "c", 2)
    launched = {h: r.rev for h, r in m.store.read("c").handles.items()}
    old = m.config.spec("c").revision("")
    assert set(launched.values()) == {old} and len(launched) == 2
    keys = list(m.redis.scan_iter(match=f"fleet:{fid}:*"))
    m.redis.delete(*keys)  # Redis loses everything (a restart without persistence)
    m2, d2 = inline(fid, ec2("v2"))  # and the control plane comes back with a changed command
    m2.sweeper.sweep_cluster("c")  # the desired number is gone: the listed instances are adopted at once
    adopted = m2.store.read("c").handles
    assert {h: r.rev for h, r in adopted.items()} == launched  # read back from the fleet:revision tags
    assert m2.api.rollout("c", "status")["outdated"] == 2  # so the rollout knows they are outdated
    try:
        m2.holds.clear("c")
        settle(m2, d2, "c", 20, pause=0.05)
        assert {r.rev for r in m2.store.read("c").handles.values()} == {m2.config.spec("c").revision("")}
    finally:
        m2.api.scale("c", 0)
        settle(m2, d2, "c", 4)


def test_a_paused_rollout_freezes_and_a_held_outdated_worker_does_not_surge_forever(fid: str) -> None:
    m, d = inline(fid, {"c": cluster(provider_options={"boot_seconds": 0.0})})
    m.api.scale("c", 2)
    settle(m, d, "c", 2)
    held = sorted(m.store.read("c").handles)[0]
    m.api.hold("c", held, True)
    m2, d2 = inline(fid, {"c": cluster("v2")})
    m2.api.rollout("c", "pause")
    launched = MemoryProvider.world(fid).calls["run"]
    settle(m2, d2, "c", 4)
    assert MemoryProvider.world(fid).calls["run"] == launched  # paused before it began: nothing moves
    assert m2.api.rollout("c", "status")["state"] == "paused"
    m2.api.rollout("c", "resume")
    settle(m2, d2, "c", 10)
    handles = m2.store.read("c").handles
    new = m2.config.spec("c").revision("")
    assert held in handles and sorted(r.rev == new for r in handles.values()) == [False, True]  # held one stays
    counts = m2.store.counts("c")
    assert counts.live == 2 and counts.going == 0  # and no surge is kept for it
    runs = MemoryProvider.world(fid).calls["run"]
    settle(m2, d2, "c", 4)
    assert MemoryProvider.world(fid).calls["run"] == runs


def test_a_retired_cluster_launches_nothing_and_bad_records_never_stop_a_process(fid: str) -> None:
    m, d = inline(fid, {"c": cluster(), "keep": cluster()})
    m.api.scale("c", 2)
    work(d)
    m.api.scale("c", 3)  # a launch planned, its run task not yet run when the process goes
    d.jobs.clear()
    m.reconciler.reconcile("c")
    pending = [args for kind, args in d.jobs if kind == "run"]
    assert pending
    m2, _ = inline(fid, {"keep": cluster()})
    m2.redis.delete(f"fleet:{fid}:c:declared")
    for args in pending:
        assert m2.launcher.run_launch(*args)["state"] == "retired"
    assert MemoryProvider.world(fid).calls["run"] == 1  # only the first launch, before the restart
    for bad in ("null", "[]", "5", '{"pools": "x"}', '{"pools": [{"name": "", "provider": "nope"}]}'):
        m2.redis.set(f"fleet:{fid}:c:spec", bad)
        m3, _ = inline(fid, {"keep": cluster()})  # starts; the unreadable record is left alone
        assert "c" not in m3.config.retired and m3.queries.including_retired(m3.config, m3.redis).retired() == []


def test_odd_field_types_in_a_record_are_read_alike_by_python_and_lua(fid: str) -> None:
    m, _ = inline(fid, {"c": cluster()})
    k = m.store.of("c")
    odd = {"h1": {"w": 1, "s": "running", "rev": 0}, "h2": {"w": 1, "s": "running", "rev": True, "p": 5},
           "h3": {"w": 2, "s": "running", "rev": {"x": 1}, "int": []}, "h4": {"w": 1, "s": "running", "rev": 5.0}}
    m.redis.hset(k.handles, mapping={h: json.dumps(r) for h, r in odd.items()})
    m.redis.delete(k.counts)
    counts = m.store.counts("c")
    assert counts.live == 5 and counts.revs == {} and counts.pools == {} and counts.interrupted == 0
    assert counts.revs == m.store.read("c").counts.revs
    applied = m.store.apply_status("c", {"h1": "stopped", "h2": "stopped", "h3": "stopped", "h4": "stopped"})
    assert applied.gone == 4 and set(applied.dead) == set(odd)
