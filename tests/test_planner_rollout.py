"""The rollout planner's rules (fleet.planners.rollout), by example and as properties: pure, no Redis."""

from __future__ import annotations

from hypothesis import given, settings

from fleet.model import HandleRecord, HandleStatus
from fleet.planners import rollout
from fleet.planners.decision import Reason
from fleet.planners.view import ClusterView
from tests.kits.views import Loader, spec_of, view_of, views

RUNNING = HandleStatus.RUNNING


def old(workers: int = 1, busy: int = 0, born: float = 0.0) -> HandleRecord:
    return HandleRecord(workers, RUNNING, busy=busy, born=born, rev="old")


def test_idle_ones_go_first_then_the_oldest_never_below_desired() -> None:
    spec = spec_of(0, max_workers=10, rollout={"max_surge": 2})
    new = HandleRecord(1, RUNNING, rev=next(iter(spec.revisions)))
    records = {"busy-oldest": old(busy=2, born=1.0), "idle-young": old(born=50.0), "idle-old": old(born=10.0),
               "new": new}
    view, _ = view_of(spec, records, desired=3)
    d = rollout.decide(view)
    # 4 running, 3 desired, none may be unavailable: one retires, the idle oldest
    assert d.retire == ("idle-old",) and d.reason is Reason.ROLLOUT
    assert d.surge == 2 and d.headroom == 2 and d.left == 2
    view, _ = view_of(spec, records, desired=3, rollout_held="paused")
    held = rollout.decide(view)
    assert held.retire == () and held.surge == 1  # frozen: only the surge already there (4 live - 3) stays


def test_no_outdated_worker_no_rollout_and_no_read() -> None:
    spec = spec_of(1)
    view, loader = view_of(spec, {"a": HandleRecord(2, RUNNING, rev=next(iter(spec.revisions)))}, desired=4)
    assert rollout.decide(view) == rollout.RolloutDecision(Reason.ROLLOUT) and loader.calls == 0
    view, loader = view_of(spec, {"a": old(2)}, desired=4, retired=True)
    assert not rollout.decide(view).acts and loader.calls == 0  # a retired cluster launches nothing new


@settings(max_examples=400, deadline=None)
@given(views())
def test_rollout_properties(drawn: tuple[ClusterView, Loader]) -> None:
    view, loader = drawn
    spec = view.spec
    d = rollout.decide(view)
    if not view.outdated:
        assert not d.acts and d.surge == d.headroom == 0 and loader.calls == 0
        return
    assert loader.calls == 1  # a rollout reads the live records, once
    records = view.records
    surge_max = spec.rollout.surge(view.goal)
    assert d.headroom == surge_max and 0 <= d.surge <= surge_max
    retired = sum(records[h].workers for h in d.retire)
    assert len(set(d.retire)) == len(d.retire)
    for h in d.retire:  # running, outdated, not held; not busy where it would be killed without a drain
        r = records[h]
        assert r.status is RUNNING and view.is_outdated(r) and not r.hold
        assert not (spec.queues and not spec.drain_timeout and r.busy)
    # never below desired - max_unavailable
    assert retired <= max(view.running - (view.goal - spec.rollout.unavailable(view.goal)), 0)
    assert d.left == view.outdated - retired
    # new workers only for outdated ones it may still retire
    movable = sum(r.workers for h, r in records.items() if h not in d.retire and not r.hold and view.is_outdated(r))
    assert d.surge <= movable
    if view.rollout_held is not None:  # paused or stopped: it freezes
        assert d.retire == () and d.surge <= max(view.counts.live + view.open_waiting - view.goal, 0)
