"""The scale planner in its planner shape (fleet.planners.scale.decide), and the planners in order
(fleet.planners.decide_all), as properties: pure, no Redis. The arithmetic of `plan` itself is
tests/test_planner.py's."""

from __future__ import annotations

from hypothesis import given, settings

from fleet import planner
from fleet.model import HandleRecord, HandleStatus, LaunchRecord, LaunchState
from fleet.planners import PLANNERS, decide_all, interruption, rebalance, rollout, scale
from fleet.planners.decision import Decision, Reason
from fleet.planners.view import ClusterView, target
from tests.kits.views import Loader, spec_of, view_of, views

RUNNING = HandleStatus.RUNNING


def test_the_old_module_is_the_same_planner() -> None:
    assert planner.plan is scale.plan and planner.HandleView is scale.HandleView


def test_launches_go_to_the_best_open_pool_and_fall_back() -> None:
    spec = spec_of(2, max_workers=10)
    view, loader = view_of(spec, {}, desired=3)
    d = scale.decide(view)
    assert d.launch == {"p0": 3} and d.planned == 3 and d.skipped == () and loader.calls == 0
    view, _ = view_of(spec, {}, desired=3, blocked={"p0": "no capacity"})
    d = scale.decide(view)
    assert d.launch == {"p1": 3} and d.skipped == (("p0", "no capacity"),)


def test_queued_launches_cover_a_scale_down_without_reading_records() -> None:
    spec = spec_of(0, max_workers=10)
    pending = {"q": LaunchRecord(2, LaunchState.QUEUED, 5.0)}
    view, loader = view_of(spec, {"a": HandleRecord(2, RUNNING)}, pending, desired=2)
    d = scale.decide(view)
    assert d.cancel == ("q",) and d.retire == () and loader.calls == 0
    view, loader = view_of(spec, {"a": HandleRecord(2, RUNNING)}, pending, desired=0)
    d = scale.decide(view)
    assert d.cancel == ("q",) and d.retire == ("a",) and d.reason is Reason.SCALE and loader.calls == 1


def test_what_an_earlier_planner_retires_is_going() -> None:
    spec = spec_of(0, max_workers=3)
    view, _ = view_of(spec, {"a": HandleRecord(1, RUNNING), "b": HandleRecord(1, RUNNING)}, desired=2)
    earlier = (Decision(Reason.ROLLOUT, retire=("a",), surge=1, headroom=1),)
    d = scale.decide(view, earlier)
    # b stays, a is going (counted against max); desired 2 + surge 1 = 3: two new ones fit max 3 + 1
    assert d.retire == () and d.planned == 2 and not d.capped_by_max


def test_the_goal_without_a_desired_number_keeps_what_runs() -> None:
    spec = spec_of(0, max_workers=10, min_workers=1)
    view, _ = view_of(spec, {"a": HandleRecord(4, RUNNING)}, {"q": LaunchRecord(2, LaunchState.QUEUED)})
    assert view.goal == 6 and target(spec, None) == 1
    assert scale.decide(view).empty


@settings(max_examples=400, deadline=None)
@given(views())
def test_scale_properties(drawn: tuple[ClusterView, Loader]) -> None:
    view, loader = drawn
    d = scale.decide(view)
    pools = {p.name: p for p in view.pools}
    for name, n in d.launch.items():  # only where it may launch, within the pool's cap
        assert n > 0 and pools[name].open and (pools[name].room is None or n <= pools[name].room)
    assert sum(d.launch.values()) <= d.planned
    if any(p.open and p.room is None for p in pools.values()):
        assert sum(d.launch.values()) == d.planned
    if not any(p.open for p in pools.values()):
        assert d.planned == 0
    counts, pending = view.counts, view.pending
    removed = sum(pending[lid].count for lid in d.cancel)
    killed = sum(view.records[h].workers for h in d.retire)
    for h in d.retire:
        assert view.records[h].status in (HandleStatus.INITIALIZING, RUNNING) and not view.records[h].hold
    assert counts.live + view.open_waiting - removed - killed + d.planned <= max(view.goal, 0) or d.planned == 0
    if d.planned:  # never past max_workers: live, going, every launch that may still appear, unknown
        still = sum(p.count for lid, p in pending.items() if not (lid in d.cancel and p.state is LaunchState.QUEUED))
        assert counts.live + counts.going + still + view.unknown + d.planned <= view.spec.max_workers
    if counts.live <= view.goal:  # the pending launches cover any excess: no record read, no kill
        assert loader.calls == 0 and d.retire == ()
    assert loader.calls <= 1


@settings(max_examples=300, deadline=None)
@given(views())
def test_the_planners_in_order(drawn: tuple[ClusterView, Loader]) -> None:
    view, loader = drawn
    decisions = decide_all(view)
    assert len(decisions) == len(PLANNERS) and decisions[-1].reason is Reason.SCALE
    assert [d.reason for d in decisions] == [Reason.INTERRUPTION, Reason.ROLLOUT, Reason.REBALANCE, Reason.SCALE]
    assert decisions[0] == interruption.decide(view) and decisions[1] == rollout.decide(view)
    assert decisions[2] == rebalance.decide(view, decisions[:2])
    retired = [h for d in decisions for h in d.retire]
    assert len(retired) == len(set(retired))  # a handle is retired once, for one reason
    assert not (decisions[1].acts and decisions[2].acts)  # a rollout and a rebalance never in one step
    surge = decisions[1].surge + decisions[2].surge
    scale_d = decisions[-1]
    assert isinstance(scale_d, scale.ScaleDecision)
    assert scale_d.capped_by_max is False or scale_d.planned < view.goal + surge
    assert loader.calls <= 1  # the records are read once per reconcile at most
