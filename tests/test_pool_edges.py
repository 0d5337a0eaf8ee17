"""The edges of pools that a review found broken, each kept broken-proof: rebalances that must not
livelock (a surge at max_workers, a surge that fills the better pool's cap, a held handle left in
a worse pool), a cluster switched from `provider` to `pools` with live workers, a pool removed
from the config with live workers, a failing interruption signal, and nonsense deadlines. The
managed layer on the session's real Redis, work run in order by the inline dispatcher, the
memory provider in this process (and the local one where real processes matter)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fleet.errors import PermanentProviderError
from fleet.manager import Manager
from fleet.provider import Cause, Cluster, Interruption, ProviderContext
from fleet.testing.inline import InlineDispatcher
from providers.local import LocalProvider
from providers.memory import MemoryProvider
from tests.conftest import inline, work

CMD = [sys.executable, "-c", "import time; time.sleep(600)"]


def by_pool(m: Manager, cluster: str) -> dict[tuple[str, str], int]:
    out: Counter[tuple[str, str]] = Counter()
    for r in m.store.read(cluster).handles.values():
        out[(r.pool or "-", r.status.value)] += r.workers
    return dict(out)


def two_pools(spot: dict[str, Any] | None = None, most: int = 10, **extra: Any) -> dict[str, Any]:
    return {"c": {"max_workers": most, "container": {"command": ["w"]}, "rebalance": {"max_in_flight": 1},
                  "pools": [{"name": "spot", "provider": "memory", **(spot or {})},
                            {"name": "od", "provider": "memory"}], **extra}}


def on_demand_first(m: Manager, d: InlineDispatcher, n: int) -> None:
    m.holds.set_no_capacity("c", 3600, "spot")
    m.api.scale("c", n)
    work(d)
    m.sweeper.sweep_cluster("c")
    work(d)
    assert by_pool(m, "c") == {("od", "running"): n}
    m.holds.clear("c", ["spot", "od"])


@pytest.mark.parametrize("clusters", [
    two_pools({"provider_options": {"boot_seconds": 30}}, most=5),  # one above desired: no other room
    two_pools({"provider_options": {"boot_seconds": 30}, "max_workers": 1}),  # the surge fills spot's cap
], ids=["surge-at-max", "surge-fills-the-pool-cap"])
def test_a_surge_that_boots_slowly_is_kept_not_cancelled_and_launched_again(fid: str, clusters: dict[str, Any]) -> None:
    m, d = inline(fid, clusters)
    desired = 4 if clusters["c"]["max_workers"] == 5 else 2
    on_demand_first(m, d, desired)
    m.dispatcher.reconcile("c")
    for _ in range(5):  # sweeps while the spot worker boots: nothing may flap
        work(d)
        m.sweeper.sweep_cluster("c")
    work(d)
    world = MemoryProvider.world(fid)
    assert world.calls["run"] == 2 and world.calls["kill"] == 0, world.calls
    assert by_pool(m, "c") == {("od", "running"): desired, ("spot", "initializing"): 1}


def test_a_held_handle_in_a_worse_pool_stays_and_nothing_churns(fid: str) -> None:
    m, d = inline(fid, two_pools())
    on_demand_first(m, d, 2)
    held = sorted(m.store.read("c").handles)[0]
    m.api.hold("c", held, True)
    m.dispatcher.reconcile("c")
    for _ in range(6):
        work(d)
        m.sweeper.sweep_cluster("c")
    work(d)
    assert by_pool(m, "c") == {("od", "running"): 1, ("spot", "running"): 1}
    assert held in m.store.read("c").handles
    launches = MemoryProvider.world(fid).calls["run"]
    for _ in range(4):  # settled: no more launches or kills, sweep after sweep
        m.sweeper.sweep_cluster("c")
        work(d)
    assert MemoryProvider.world(fid).calls["run"] == launches


def test_switching_a_cluster_to_pools_keeps_its_live_workers(fid: str, tmp_path: Path) -> None:
    local = {"kill_grace": 1}
    m, d = inline(fid, {"c": {"provider": "local", "provider_options": local, "max_workers": 4,
                            "container": {"command": CMD}}}, tmp_path)
    lp = LocalProvider(ProviderContext(fid, tmp_path))
    everything = Cluster(fid, "c", 1, lp.options_model())
    try:
        m.api.scale("c", 2)
        work(d)
        m.sweeper.sweep_cluster("c")
        work(d)
        before = set(m.store.read("c").handles)
        pools = [{"name": "a", "provider": "local", "provider_options": local},
                 {"name": "b", "provider": "local", "provider_options": local}]
        m2, d2 = inline(fid, {"c": {"max_workers": 4, "container": {"command": CMD}, "pools": pools}}, tmp_path)
        for _ in range(3):
            report = m2.sweeper.sweep_cluster("c")
            assert report["pruned"] == 0, report
            work(d2)
        assert set(m2.store.read("c").handles) == before  # the same workers, still running
        assert set(lp.list_workers(everything)) == before
        assert by_pool(m2, "c") == {("-", "running"): 2}
        m2.api.scale("c", 0)  # and they are killed through the first pool's provider
        work(d2)
        assert not m2.store.read("c").handles
    finally:
        left = lp.list_workers(everything)
        if left:
            lp.kill_workers(everything, list(left))


def test_a_pool_removed_from_the_config_is_still_swept_and_killed_by_its_own_provider(
        fid: str, tmp_path: Path) -> None:
    a = {"name": "a", "provider": "local", "provider_options": {"kill_grace": 1}}
    b = {"name": "b", "provider": "memory"}
    m, d = inline(fid, {"c": {"max_workers": 4, "container": {"command": CMD}, "pools": [a, b]}}, tmp_path)
    m.holds.set_no_capacity("c", 3600, "a")
    m.api.scale("c", 2)
    work(d)
    assert by_pool(m, "c") == {("b", "running"): 2}
    m.holds.clear("c", ["a", "b"])
    m2, d2 = inline(fid, {"c": {"max_workers": 4, "container": {"command": CMD}, "pools": [a]}}, tmp_path)
    world = MemoryProvider.world(fid)
    lp = LocalProvider(ProviderContext(fid, tmp_path))
    try:
        report = m2.sweeper.sweep_cluster("c")
        assert report["pruned"] == 0 and world.live("c") == 2  # asked of their own provider: alive
        world.crash(sorted(m2.store.read("c").handles)[0])  # and their own provider tells of a death
        assert m2.sweeper.sweep_cluster("c")["pruned"] == 1
        # a removed pool's workers are outdated: a rollout replaces them in the pools left, killing
        # them through their own provider (none left behind there)
        for _ in range(10):
            work(d2)
            m2.sweeper.sweep_cluster("c")
        work(d2)
        assert world.live("c") == 0 and by_pool(m2, "c") == {("a", "running"): 2}
    finally:
        m2.api.scale("c", 0)
        work(d2)
        left = lp.list_workers(Cluster(fid, "c", 1, lp.options_model()))
        if left:
            lp.kill_workers(Cluster(fid, "c", 1, lp.options_model()), list(left))


def test_a_failing_interruption_signal_does_not_blind_the_sweep(fid: str, monkeypatch: pytest.MonkeyPatch) -> None:
    m, d = inline(fid, {"c": {"max_workers": 4, "container": {"command": ["w"]},
                            "pools": [{"name": "spot", "provider": "memory"}]}})
    m.api.scale("c", 2)
    work(d)
    victim = sorted(m.store.read("c").handles)[0]
    MemoryProvider.world(fid).crash(victim)

    def broken(self: Any, cluster: Any) -> list[Interruption]:
        raise PermanentProviderError("sqs:ReceiveMessage AccessDenied")

    monkeypatch.setattr(MemoryProvider, "interruptions", broken)
    m.sweeper.sweep_cluster("c")
    work(d)
    assert victim not in m.store.read("c").handles and by_pool(m, "c") == {("spot", "running"): 2}


@pytest.mark.parametrize("deadline", [float("inf"), float("nan")])
def test_a_nonsense_deadline_is_no_deadline_and_leaves_the_counts_whole(fid: str, deadline: float) -> None:
    m, d = inline(fid, {"c": {"max_workers": 4, "container": {"command": ["w"]},
                            "pools": [{"name": "spot", "provider": "memory"}]}})
    m.api.scale("c", 1)
    work(d)
    (victim,) = m.store.read("c").handles
    MemoryProvider.world(fid).warn(victim, Cause.SPOT_INTERRUPTION, deadline)
    m.sweeper.sweep_cluster("c")
    st = m.store.read("c")
    counts = m.store.counts("c")
    assert st.handles[victim].interrupted == "spot_interruption" and st.handles[victim].status.value == "draining"
    assert counts.interrupted == st.counts.interrupted == 1 and counts.of("draining") == 1
    assert m.store.sweep_view("c").index[victim].value == "draining"
