"""Every writer of a handle's status keeps to the one table, fleet.model.TRANSITIONS: the Python
writes (`Store.transition`, the reconcile's commit, whose retire() drains and kills) and the Lua
scripts (record, status, interrupt, adopt, expire; lua/prelude.lua carries the table generated
from the model). A move the table does not allow is refused and logged, never written.

Real parts: the session's Redis, a Manager in this process whose work runs inline
(fleet.testing.inline), the `memory` provider."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from importlib.resources import files
from typing import Any, cast

import pytest
import redis

from fleet.counters import lua_constants
from fleet.model import TRANSITIONS, EventKind, HandleRecord, HandleStatus, LaunchRecord, LaunchState, may_move
from fleet.scripts import model_constants
from fleet.store import PlanView, Store, Writes
from tests.conftest import REDIS_URL, inline

Move = tuple[HandleStatus | None, HandleStatus | None]

#: every Store method that writes handle records (and so may move a handle)
WRITERS = ("record_launch", "apply_status", "interrupt", "adopt", "expire", "record_kills", "transition", "commit",
           "rebuild_counts", "cleanup_due")


def statuses(store: Store, cluster: str) -> dict[str, HandleStatus]:
    """Every handle's status as its record in Redis says."""
    raw = cast("dict[bytes, bytes]", store.r.hgetall(store.of(cluster).handles))
    return {h.decode(): HandleRecord.decode(v).status for h, v in raw.items()}


class Watch:
    """Wraps every writer of `store`: the statuses before and after each call are compared, and
    each move it made is checked against TRANSITIONS and remembered (writer -> moves)."""

    def __init__(self, store: Store) -> None:
        self.moves: dict[str, set[Move]] = defaultdict(set)
        for name in WRITERS:
            setattr(store, name, self._watched(store, name, getattr(store, name)))

    def _watched(self, store: Store, name: str, writer: Callable[..., Any]) -> Callable[..., Any]:
        def call(cluster: str, *args: Any, **kwargs: Any) -> Any:
            before = statuses(store, cluster)
            result = writer(cluster, *args, **kwargs)
            after = statuses(store, cluster)
            for h in before.keys() | after.keys():
                old, new = before.get(h), after.get(h)
                if old != new:
                    assert may_move(old, new), f"{name} moved {h} from {old} to {new}"
                    self.moves[name].add((old, new))
            return result
        return call


@pytest.fixture
def two_clusters(fid: str) -> Iterator[tuple[Any, Any, Watch]]:
    """(manager, dispatcher, watch) of a cluster `d` that drains (queues, drain_timeout) and a
    cluster `k` that kills, on the memory provider."""
    m, d = inline(fid, {
        "d": {"provider": "memory", "max_workers": 10, "queues": [f"{fid}-q"], "drain_timeout": 300,
              "container": {"command": ["worker"]}},
        "k": {"provider": "memory", "max_workers": 10, "container": {"command": ["worker"]}},
    })
    yield m, d, Watch(m.store)
    for cluster in ("d", "k"):
        ref = m.pool.cluster(cluster)
        raw = m.pool.raw("memory")
        raw.kill_workers(ref, list(raw.list_workers(ref)))


def settle(m: Any, d: Any, cluster: str, done: Callable[[], bool], timeout: float = 30.0) -> None:
    """Work and sweep `cluster` until `done` (a livelock fails the test, never hangs it)."""
    deadline = time.monotonic() + timeout
    while True:
        d.work()
        if done():
            return
        assert time.monotonic() < deadline, statuses(m.store, cluster)
        m.sweeper.sweep_cluster(cluster)


def running(m: Any, cluster: str, n: int) -> Callable[[], bool]:
    return lambda: sorted(statuses(m.store, cluster).values()) == [HandleStatus.RUNNING] * n


def test_every_writer_keeps_to_the_table(two_clusters: tuple[Any, Any, Watch]) -> None:
    m, d, watch = two_clusters
    store: Store = m.store
    # launched and recorded (record_launch), then seen running (apply_status)
    m.api.scale("d", 4)
    m.api.scale("k", 3)
    settle(m, d, "d", running(m, "d", 4))
    settle(m, d, "k", running(m, "k", 3))
    a, b, c, _ = sorted(statuses(store, "d"))
    # the cloud reclaims one (interrupt: to draining); another expires (no move)
    assert store.interrupt("d", {a: ("spot_interruption", None)}) == [a]
    assert store.expire("d", [b]) == [b]
    # an operator drains one, then puts it back (transition), then kills it (transition, record_kills)
    m.api.drain_handle("d", c)
    assert store.transition("d", [c], [HandleStatus.DRAINING], HandleStatus.RUNNING, EventKind.ADOPTED) == [c]
    m.api.kill_handle("d", c)
    # scale-downs: the reconcile's commit drains (d) and kills (k) what it retires
    m.api.scale("d", 0)
    m.api.scale("k", 0)
    d.work()
    assert set(statuses(store, "d").values()) <= {HandleStatus.DRAINING, HandleStatus.STOPPING}
    # the drains end: killed (transition), then seen stopped (apply_status)
    for h, st in statuses(store, "d").items():
        if st is HandleStatus.DRAINING:
            m.api.kill_handle("d", h)
    settle(m, d, "d", lambda: not statuses(store, "d"))
    settle(m, d, "k", lambda: not statuses(store, "k"))
    # a worker Redis does not know, adopted (adopt)
    ref, raw = m.pool.cluster("k"), m.pool.raw("memory")
    spec = m.config.spec("k")
    (found,) = raw.run_workers(ref, spec.container, spec.hardware, 1, launch_id="found")
    assert store.adopt("k", {found: (1, "running")}, set_desired=False) == 1
    # counts deleted: rebuilt from the records (no move)
    store.r.delete(store.of("k").counts)
    store.counts("k")

    seen = watch.moves
    init, run, drain, stop = (HandleStatus.INITIALIZING, HandleStatus.RUNNING, HandleStatus.DRAINING,
                              HandleStatus.STOPPING)
    assert (None, init) in seen["record_launch"]
    assert {(init, run), (stop, None)} <= seen["apply_status"]
    assert (run, drain) in seen["interrupt"]
    assert {(run, drain), (run, stop)} <= seen["commit"]
    assert {(run, drain), (drain, run), (run, stop), (drain, stop)} <= seen["transition"]
    assert (None, run) in seen["adopt"]
    assert not seen["expire"] and not seen["record_kills"] and not seen["rebuild_counts"]


def test_the_scripts_carry_the_models_table(fid: str) -> None:
    """lua/prelude.lua's may_move, with the table fleet/scripts.py generates, answers as
    fleet.model.may_move for every pair of statuses (None: not in Redis)."""
    client = redis.Redis.from_url(REDIS_URL)
    prelude = lua_constants() + model_constants() + files("fleet").joinpath("lua", "prelude.lua").read_text()
    script = client.register_script(prelude + """
        local function status(s) if s == '' then return nil end return s end
        if may_move('h', status(ARGV[4]), status(ARGV[5])) then return 1 end
        return 0
    """)
    every: list[HandleStatus | None] = [None, *HandleStatus]
    assert set(TRANSITIONS) == set(every)
    for old in every:
        for new in every:
            answer = script(keys=[f"fleet:{fid}:c:events", f"fleet:{fid}:metrics"],
                            args=["c", 1000, time.time(), old or "", new or ""])
            assert bool(answer) == may_move(old, new), (old, new)


def test_an_illegal_move_is_refused_and_logged(fid: str, caplog: pytest.LogCaptureFixture) -> None:
    """The commit (the reconcile's writes), the adopt and status scripts, and a transition asked
    for a move the table does not allow write nothing of it; the legal moves beside it go in."""
    store = Store(redis.Redis.from_url(REDIS_URL), fid)
    c, k = "c", store.of("c")
    store.r.hset(k.pending, "l1", LaunchRecord(2, LaunchState.IN_FLIGHT).encode())
    store.record_launch(c, "l1", ["x", "y"])
    store.apply_status(c, {"x": "running", "y": "running"})
    store.transition(c, ["x"], [HandleStatus.RUNNING], HandleStatus.STOPPING, EventKind.KILL)
    counts = store.counts(c)

    def plan(view: PlanView) -> tuple[Writes, None]:
        writes = Writes()
        for h, rec in store.records(c, ["x", "y"]).items():
            was, rec.status = rec.status, HandleStatus.RUNNING if h == "x" else HandleStatus.DRAINING
            writes.moves[h] = (rec, was)  # x: stopping -> running, not allowed; y: running -> draining
        return writes, None

    with caplog.at_level(logging.WARNING, logger="fleet.state.handles"):
        store.commit(c, plan)
    assert statuses(store, c) == {"x": HandleStatus.STOPPING, "y": HandleStatus.DRAINING}
    assert "x stopping -> running" in caplog.text and "y " not in caplog.text
    after = store.counts(c)
    assert after.of("stopping") == counts.of("stopping") and after.of("draining") == 1
    assert store.sweep_view(c).index == {"x": HandleStatus.STOPPING, "y": HandleStatus.DRAINING}

    with pytest.raises(ValueError, match="not an allowed handle transition"):
        store.transition(c, ["x"], [HandleStatus.STOPPING], HandleStatus.RUNNING, EventKind.ADOPTED)
    assert statuses(store, c)["x"] is HandleStatus.STOPPING

    # a worker found draining may not enter Redis so (None -> draining): left unknown, unwritten
    store.track_unknown(c, {"z": 1}, store.now())
    assert store.adopt(c, {"z": (1, "draining")}, set_desired=False) == 0
    assert "z" not in statuses(store, c) and store.unknown_workers(c) == 1
    # a provider's report that is no status at all: refused, the handle left running
    store.r.hset(k.pending, "l2", LaunchRecord(1, LaunchState.IN_FLIGHT).encode())
    store.record_launch(c, "l2", ["w"])
    store.apply_status(c, {"w": "running"})
    result = store.apply_status(c, {"w": "exploded"})
    assert result.changed == 0 and statuses(store, c)["w"] is HandleStatus.RUNNING
    assert store.sweep_view(c).index["w"] is HandleStatus.RUNNING
