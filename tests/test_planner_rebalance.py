"""The rebalance planner's rules (fleet.planners.rebalance), by example and as properties: pure, no Redis."""

from __future__ import annotations

from hypothesis import given, settings

from fleet.model import HandleRecord, HandleStatus
from fleet.planners import interruption, rebalance
from fleet.planners.decision import Decision, Reason
from fleet.planners.view import ClusterView
from tests.kits.views import Loader, spec_of, specs, view_of, views

RUNNING = HandleStatus.RUNNING


def spot_and_on_demand(**kw: object) -> dict[str, object]:
    return {"max_workers": 4, "rebalance": {"max_in_flight": 1}, **kw}


def test_a_surge_in_the_better_pool_then_the_worse_pool_retires() -> None:
    spec = spec_of(2, **spot_and_on_demand())
    rev = spec.revision("p1")
    od = {f"od{i}": HandleRecord(1, RUNNING, since=float(i), pool="p1", rev=rev) for i in range(3)}
    view, _ = view_of(spec, od, desired=3)
    d = rebalance.decide(view)
    assert d == Decision(Reason.REBALANCE, surge=1)  # one spot worker first, nothing retired yet
    spot = {"s0": HandleRecord(1, RUNNING, pool="p0", rev=spec.revision("p0"))}
    view, _ = view_of(spec, {**od, **spot}, desired=3)
    d = rebalance.decide(view)
    assert d.retire == ("od2",) and d.surge == 0  # it runs: the newest on-demand one goes, no more room
    view, _ = view_of(spec, {**od, **spot}, desired=3, blocked={"p0": "no capacity"})
    assert not rebalance.decide(view).acts  # the better pool is held: nothing moves


def test_held_and_busy_handles_stay_put() -> None:
    spec = spec_of(2, **spot_and_on_demand(queues=["q"]))
    spot = {"s0": HandleRecord(1, RUNNING, pool="p0")}
    od = {"held": HandleRecord(1, RUNNING, pool="p1", hold=True), "busy": HandleRecord(1, RUNNING, pool="p1", busy=2)}
    view, _ = view_of(spec, {**spot, **od}, desired=1)
    assert rebalance.decide(view).retire == ()  # no drain_timeout: a busy one would lose its work


def test_no_rebalance_reads_nothing() -> None:
    spec = spec_of(2)
    view, loader = view_of(spec, {"a": HandleRecord(1, RUNNING, pool="p1")}, desired=1)
    assert rebalance.decide(view) == Decision(Reason.REBALANCE) and loader.calls == 0


@settings(max_examples=400, deadline=None)
@given(views(specs(rebalance=True), outdated=False))
def test_rebalance_properties(drawn: tuple[ClusterView, Loader]) -> None:
    view, loader = drawn
    spec = view.spec
    d = rebalance.decide(view, (interruption.decide(view),))
    assert d.reason is Reason.REBALANCE and not d.launch and d.headroom == 0
    if not spec.rebalance or view.retired or view.outdated:
        assert not d.acts and d.surge == 0 and loader.calls == 0
        return
    assert loader.calls <= 1  # records read once at most, and only when something moves
    if loader.calls == 0:
        assert not d.acts and d.surge == 0
        return
    assert 0 <= d.surge <= spec.rebalance.max_in_flight
    records = view.records
    open_ranks = [p.rank for p in view.pools if p.blocked is None]
    for h in d.retire:  # running, of a pool worse than the best that may launch, never held
        r = records[h]
        assert r.status is RUNNING and not r.hold and view.rank_of(r) > min(open_ranks)
        assert not (spec.queues and not spec.drain_timeout and r.busy)
    assert len(set(d.retire)) == len(d.retire)
    assert view.running - sum(records[h].workers for h in d.retire) >= min(view.goal, view.running)


@settings(max_examples=200, deadline=None)
@given(views(specs()))
def test_a_rebalance_waits_for_a_rollout(drawn: tuple[ClusterView, Loader]) -> None:
    view, loader = drawn
    if view.outdated:
        assert rebalance.decide(view) == Decision(Reason.REBALANCE) and loader.calls == 0
