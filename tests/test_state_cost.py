"""State whose cost follows what changed: the status index and the counts stay exactly what the
records say through every kind of change, a steady sweep writes nothing and reads no record, a
reconcile that kills nothing reads no record, and events about many handles are one per batch.

All against the session's real Redis, with the `memory` provider in this process."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.config import parse_config
from fleet.manager import Manager
from fleet.model import Counts, EventKind, HandleRecord, HandleStatus, LaunchRecord, LaunchState
from fleet.store import PlanView, Store, Writes, per_handle
from fleet.testing.counting import Tally, counting_client
from providers.memory import MemoryProvider
from tests.conftest import REDIS_URL


class Recorder:
    """A dispatcher that only remembers what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...]]] = []

    def run(self, *a: Any) -> None:
        self.sent.append(("run", a))

    def kill(self, *a: Any) -> None:
        self.sent.append(("kill", a))

    def reconcile(self, *a: Any) -> None:
        self.sent.append(("reconcile", a))

    def drain(self, *a: Any) -> None:
        self.sent.append(("drain", a))

    def check(self, *a: Any) -> None:
        self.sent.append(("check", a))


def truth(store: Store, cluster: str) -> tuple[Counts, dict[str, HandleStatus]]:
    """The counts and the index as the records say they should be."""
    st = store.read(cluster)
    return st.counts, {h: r.status for h, r in st.handles.items()}


def stored(store: Store, cluster: str) -> tuple[Counts, dict[str, HandleStatus]]:
    view = store.sweep_view(cluster)
    pools = {}
    for h, raw in store.r.hgetall(store.of(cluster).handles).items():
        try:
            rec = HandleRecord.decode(raw)
        except ValueError:
            continue  # a record no script can read is in no count (see the test below)
        if rec.pool:
            pools[h.decode()] = rec.pool
    assert view.pools == pools  # the index names each handle's pool
    return store.counts(cluster), view.index


def same(a: Counts, b: Counts) -> bool:
    def nonzero(d: dict[HandleStatus, int]) -> dict[HandleStatus, int]:
        return {k: v for k, v in d.items() if v}
    pools = {p: nonzero(by) for p, by in a.pools.items() if nonzero(by)} == {
        p: nonzero(by) for p, by in b.pools.items() if nonzero(by)}
    return (nonzero(a.workers) == nonzero(b.workers) and nonzero(a.handles) == nonzero(b.handles) and pools
            and a.interrupted == b.interrupted)


OPS = st.lists(st.tuples(st.sampled_from(["launch", "status", "kill", "drain", "commit", "adopt", "killed",
                                          "rebuild", "interrupt"]),
                         st.lists(st.integers(0, 11), min_size=1, max_size=6),
                         st.sampled_from(["initializing", "running", "stopped"])),
               min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_the_index_and_counts_follow_every_change(ops: list[tuple[str, list[int], str]]) -> None:
    store = Store(redis.Redis.from_url(REDIS_URL), "sc" + uuid.uuid4().hex[:8])
    c = "c"
    try:
        for op, picks, status in ops:
            names = [f"h{i}" for i in picks]
            pool = ["", "spot", "od"][picks[0] % 3]  # pools: counted per pool, named in the index
            if op == "launch":
                lid = uuid.uuid4().hex
                store.r.hset(store.of(c).pending, lid,
                             LaunchRecord(len(names), LaunchState.IN_FLIGHT, pool=pool).encode())
                store.record_launch(c, lid, names)  # a repeated name is one handle of several workers
            elif op == "interrupt":
                store.interrupt(c, dict.fromkeys(names, ("spot_interruption", None)))
            elif op == "status":
                store.apply_status(c, dict.fromkeys(names, status), grace=0.0)
            elif op == "kill":
                store.transition(c, names, [HandleStatus.INITIALIZING, HandleStatus.RUNNING], HandleStatus.STOPPING,
                                 EventKind.KILL)
            elif op == "drain":
                store.transition(c, names, [HandleStatus.RUNNING], HandleStatus.DRAINING, EventKind.KILL)
            elif op == "commit":
                def plan(view: PlanView, names: list[str] = names) -> tuple[Writes, None]:
                    writes = Writes()
                    for h, rec in view.live_records().items():
                        if h in names:
                            was, rec.status = rec.status, HandleStatus.STOPPING
                            writes.moves[h] = (rec, was)
                    return writes, None
                store.commit(c, plan)
            elif op == "adopt":
                store.adopt(c, dict.fromkeys(names, (2, status if status != "stopped" else "running")),
                            set_desired=False, pools=dict.fromkeys(names, pool))
            elif op == "killed":
                store.record_kills(c, dict.fromkeys(names, status == "running"))
            elif op == "rebuild":
                store.r.delete(store.of(c).counts)
            want_counts, want_index = truth(store, c)
            got_counts, got_index = stored(store, c)
            assert got_index == want_index, op
            assert same(got_counts, want_counts), (op, got_counts, want_counts)
    finally:
        keys = list(store.r.scan_iter(match=f"fleet:{store.fleet_id}:*"))
        if keys:
            store.r.delete(*keys)


def test_records_written_by_hand_are_counted_and_moved_as_python_reads_them() -> None:
    """A record with the readable names, one without a worker count, one that is not JSON: the
    rebuilt counts and every script read them as HandleRecord.decode does (the unreadable one is
    left alone, and no script fails half-way)."""
    store = Store(redis.Redis.from_url(REDIS_URL), "sc" + uuid.uuid4().hex[:8])
    c, k = "c", store.of("c")
    try:
        store.r.hset(k.handles, mapping={
            "named": '{"workers": 2, "status": "initializing", "since": 1, "launch": "x", "kills": 0}',
            "bare": '{"s": "running", "since": 1, "launch": "x"}',
        })
        store.r.delete(k.counts)
        store.counts(c)  # finds `v` missing: rebuilt from the records
        assert stored(store, c) == (truth(store, c)[0], {"named": HandleStatus.INITIALIZING,
                                                         "bare": HandleStatus.RUNNING})
        assert store.counts(c).of(HandleStatus.INITIALIZING) == 2 and store.counts(c).of(HandleStatus.RUNNING) == 1
        store.r.hset(k.handles, "junk", "not json")  # unreadable: in no count, and no script trips on it
        store.apply_status(c, {"named": "running", "bare": "stopped", "junk": "stopped"}, grace=0.0)
        store.record_kills(c, {"named": False, "junk": False})
        named = json.loads(store.r.hget(k.handles, "named"))
        assert named["s"] == "running" and named["w"] == 2 and named["kills"] == 1 and "status" not in named
        assert store.r.hget(k.handles, "junk") == b"not json" and not store.r.hexists(k.handles, "bare")
        assert not store.r.hexists(k.cleanup, "junk")
        counts, index = stored(store, c)
        assert index == {"named": HandleStatus.RUNNING}
        assert counts.of(HandleStatus.RUNNING) == 2 and counts.of(HandleStatus.INITIALIZING) == 0
    finally:
        keys = list(store.r.scan_iter(match=f"fleet:{store.fleet_id}:*"))
        if keys:
            store.r.delete(*keys)


# -- a manager in this process -------------------------------------------------------------------

@pytest.fixture
def counted() -> tuple[redis.Redis, Tally]:
    return counting_client(REDIS_URL)


@pytest.fixture
def tally(counted: tuple[redis.Redis, Tally]) -> Tally:
    return counted[1]


@pytest.fixture
def manager(counted: tuple[redis.Redis, Tally]) -> Iterator[Manager]:
    fid = "sc" + uuid.uuid4().hex[:8]
    config = parse_config({
        "fleet": {"id": fid, "launch_timeout": 600},
        "providers": {"memory": {"ops_per_second": 10000}},
        "clusters": {"big": {"provider": "memory", "max_workers": 100000, "boot_timeout": 36000,
                             "container": {"command": ["worker"]}}},
    }, "<test>")
    client = counted[0]
    MemoryProvider.reset()
    yield Manager(config, client, Recorder(), url=REDIS_URL)  # type: ignore[arg-type]
    MemoryProvider.reset()
    keys = list(client.scan_iter(match=f"fleet:{fid}:*"))
    if keys:
        client.delete(*keys)


def seed(manager: Manager, cluster: str, n: int) -> None:
    """n more running handles of one worker each (launched at the provider, recorded, swept
    once), and the desired number they make."""
    before = manager.store.counts(cluster).of(HandleStatus.RUNNING)
    spec, ref = manager.config.spec(cluster), manager.pool.cluster(cluster)
    raw = manager.pool.raw("memory")
    lid = uuid.uuid4().hex
    manager.store.r.hset(manager.store.of(cluster).pending, lid, LaunchRecord(n, LaunchState.IN_FLIGHT).encode())
    manager.store.record_launch(cluster, lid, raw.run_workers(ref, spec.container, spec.hardware, n, launch_id=lid))
    manager.store.set_desired(cluster, before + n)
    manager.sweeper.sweep_cluster(cluster)
    assert manager.store.counts(cluster).of(HandleStatus.RUNNING) == before + n


def commands(tally: Tally, fn: Any) -> Counter[str]:
    """The Redis commands `fn` sent through the manager's client, by name."""
    tally.reset()
    fn()
    return Counter(tally.commands)


@pytest.mark.parametrize("n", [50, 2000])
def test_a_steady_sweep_writes_nothing_and_reads_no_record(manager: Manager, tally: Tally, n: int) -> None:
    seed(manager, "big", n)
    events = manager.store.r.xlen(manager.store.of("big").events)
    handles_before = manager.store.r.hgetall(manager.store.of("big").handles)
    used = commands(tally, lambda: manager.sweeper.sweep_cluster("big"))
    assert manager.store.r.hgetall(manager.store.of("big").handles) == handles_before
    assert manager.store.r.xlen(manager.store.of("big").events) == events  # no event: nothing changed
    assert used["hmget"] == 0 and used["hvals"] == 0  # no record read
    assert tally.args["evalsha"] < 30  # no status sent to a script (the cleanup check, the lease's release)
    assert used["hset"] == 0 and used["xadd"] == 0


def test_a_steady_sweep_costs_the_same_commands_whatever_the_size(manager: Manager, tally: Tally) -> None:
    seed(manager, "big", 10)
    small = commands(tally, lambda: manager.sweeper.sweep_cluster("big"))
    seed(manager, "big", 2990)
    big = commands(tally, lambda: manager.sweeper.sweep_cluster("big"))
    assert sum(big.values()) <= sum(small.values()) + 2, (small, big)


def test_a_reconcile_that_kills_nothing_reads_no_record(manager: Manager, tally: Tally) -> None:
    seed(manager, "big", 2000)
    manager.store.set_desired("big", 2100)
    used = commands(tally, lambda: manager.reconciler.reconcile("big"))
    assert used["hmget"] == 0 and used["hgetall"] <= 4  # counts, desired, pending (and again on a re-plan)
    pending = manager.store.read("big").pending
    assert sum(p.count for p in pending.values()) == 100


def test_a_large_change_is_one_event_per_batch(manager: Manager) -> None:
    seed(manager, "big", 500)
    ev = manager.store.events("big", 1000)
    running = [e for e in ev if e["kind"] == "running"]
    assert len(running) == 1 and running[0]["count"] == "500" and running[0]["workers"] == "500"
    assert running[0]["handles"].endswith(",...") and len(per_handle(running)) == 50  # 50 named
    manager.store.set_desired("big", 0)
    manager.reconciler.reconcile("big")
    kills = [e for e in manager.store.events("big", 1000) if e["kind"] == "kill"]
    assert len(kills) == 1 and kills[0]["count"] == "500" and kills[0]["was"] == "running"
    metrics = manager.store.r.hgetall(manager.store.keys.metrics)
    assert int(metrics[b"events|big|running"]) == 500  # counted once per handle
    assert int(metrics[b"events|big|kill"]) == 500


def test_a_reconcile_reads_the_records_only_to_kill(manager: Manager, tally: Tally) -> None:
    seed(manager, "big", 300)
    manager.store.set_desired("big", 290)
    used = commands(tally, lambda: manager.reconciler.reconcile("big"))
    assert used["hmget"] == 1  # the live handles' records, to choose 10 to kill
    st = manager.store.read("big")
    assert st.count("running") == 290 and st.count("stopping") == 10


def test_an_interrupted_handle_counts_until_it_leaves_and_pools_are_counted_apart() -> None:
    store = Store(redis.Redis.from_url(REDIS_URL), "sc" + uuid.uuid4().hex[:8])
    c = "c"
    try:
        for pool, names in (("spot", ["a", "a", "b"]), ("", ["c"])):
            lid = uuid.uuid4().hex
            store.r.hset(store.of(c).pending, lid, LaunchRecord(len(names), LaunchState.IN_FLIGHT, pool=pool).encode())
            store.record_launch(c, lid, names)
        store.apply_status(c, {"a": "running", "b": "running", "c": "running"})
        assert store.interrupt(c, {"a": ("spot_interruption", None), "zz": ("preempted", None)}) == ["a"]
        assert store.interrupt(c, {"a": ("spot_interruption", None)}) == []  # twice: nothing more
        counts = store.counts(c)
        assert counts.interrupted == 2 and counts.in_pool("spot", "draining") == 2
        assert counts.in_pool("spot", "running") == 1 and counts.in_pool("spot", "running", "spot") == 2  # c: first pool
        assert store.sweep_view(c).pools == {"a": "spot", "b": "spot"}
        store.apply_status(c, {"a": "stopped"})
        assert store.counts(c).interrupted == 0 and store.counts(c).in_pool("spot", "draining") == 0
        assert [e for e in store.events(c) if e["kind"] == "stopped"][-1]["interrupted"] == "spot_interruption"
        metrics = store.r.hgetall(store.keys.metrics)
        assert int(metrics[f"interruptions|{c}|spot|spot_interruption".encode()]) >= 2
    finally:
        keys = list(store.r.scan_iter(match=f"fleet:{store.fleet_id}:*"))
        if keys:
            store.r.delete(*keys)
