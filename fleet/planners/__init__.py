"""The reconcile's decisions, one small pure module each, behind one shape (no I/O).

A planner is `decide(view, earlier) -> Decision`: it reads the cluster's read-only
`ClusterView` (built once per reconcile from the store's read) and the decisions of the planners
before it, and returns what it wants done (`fleet.planners.decision`): handles to retire and the
reason, workers to launch per pool, a surge above the desired number, headroom above
`max_workers`. The reconciler (`fleet.control.reconciler`) builds the view, calls `PLANNERS` in
order, turns their decisions into one transaction and dispatches; it decides nothing itself.

Order matters: the interruption planner's headroom bounds the rebalance's room; a rollout and a
rebalance never act in one reconcile (a rebalance waits while workers are outdated); the scale
planner comes last, launches their surge and leaves out the handles they retire.
`fleet.planners.lifetimes` holds the sweep's decision of which workers are past `max_lifetime`
(the rollout then replaces them) and which are idle past `idle_timeout` (a scale-down takes
them first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fleet.planners import interruption, rebalance, rollout, scale
from fleet.planners.decision import Decision, Reason
from fleet.planners.view import ClusterView

#: a planner: the view and the earlier decisions -> its decision
Planner = Callable[[ClusterView, Sequence[Decision]], Decision]

#: the planners a reconcile calls, in order
PLANNERS: tuple[Planner, ...] = (interruption.decide, rollout.decide, rebalance.decide, scale.decide)


def decide_all(view: ClusterView, planners: Sequence[Planner] = PLANNERS) -> list[Decision]:
    """Every planner's decision on `view`, in order, each seeing the ones before it."""
    decisions: list[Decision] = []
    for decide in planners:
        decisions.append(decide(view, tuple(decisions)))
    return decisions


__all__ = ["PLANNERS", "ClusterView", "Decision", "Planner", "Reason", "decide_all"]
