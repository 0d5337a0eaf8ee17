"""The interruption planner (fleet.planners.interruption): the replacements of workers the cloud
reclaims may go above max_workers by as many, never more. Pure, no Redis."""

from __future__ import annotations

from hypothesis import given, settings

from fleet.model import HandleRecord, HandleStatus
from fleet.planners import interruption, scale
from fleet.planners.decision import Decision, Reason
from fleet.planners.view import ClusterView
from tests.kits.views import Loader, spec_of, view_of, views

RUNNING, DRAINING = HandleStatus.RUNNING, HandleStatus.DRAINING


def test_interrupted_workers_are_replaced_above_max() -> None:
    spec = spec_of(0, max_workers=4)
    records = {"a": HandleRecord(1, RUNNING), "b": HandleRecord(1, RUNNING),
               "spot1": HandleRecord(1, DRAINING, interrupted="spot"), "spot2": HandleRecord(1, DRAINING, interrupted="spot")}
    view, loader = view_of(spec, records, desired=4)
    d = interruption.decide(view)
    assert d == Decision(Reason.INTERRUPTION, headroom=2)
    assert scale.decide(view, (d,)).planned == 2  # 2 running + 2 draining + 2 new = max + 2 interrupted
    assert scale.decide(view).planned == 0  # without it, the draining ones hold the room
    # an ordinary drain (not interrupted) gives no such room
    records["spot2"] = HandleRecord(1, DRAINING)
    view, _ = view_of(spec, records, desired=4)
    assert scale.decide(view, (interruption.decide(view),)).planned == 1
    assert loader.calls == 0


@settings(max_examples=300, deadline=None)
@given(views())
def test_never_more_than_the_interrupted(drawn: tuple[ClusterView, Loader]) -> None:
    view, loader = drawn
    d = interruption.decide(view)
    assert not d.acts and d.surge == 0 and d.headroom == view.counts.interrupted and loader.calls == 0
    s = scale.decide(view, (d,))
    if s.planned:
        pending = view.pending
        still = sum(p.count for lid, p in pending.items() if not (lid in s.cancel and p.state.value == "queued"))
        committed = view.counts.live + view.counts.going + still + view.unknown
        assert committed + s.planned <= view.spec.max_workers + view.counts.interrupted
