"""The rollout planner: replace outdated workers (of an older revision of the spec, or past
`max_lifetime`). Pure (no I/O).

A rollout launches up to `max_surge` new workers above the desired number (and above
`max_workers`), and retires outdated ones as soon as enough run (never below desired -
`max_unavailable`), idle ones first, then the oldest; never a held one, never a busy one where it
would be killed without a drain. Paused or stopped (`ClusterView.rollout_held`), it freezes: the
surge already there stays, nothing more is launched or retired. A retired cluster has no rollout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fleet.config import ClusterSpec
from fleet.model import LIVE, HandleRecord, HandleStatus
from fleet.planners.decision import Decision, Reason, up_to
from fleet.planners.view import ClusterView


def outdated_retirees(records: Mapping[str, HandleRecord], spec: ClusterSpec, current: frozenset[str],
                      most: int) -> list[str]:
    """Running outdated handles to retire, of `most` workers at most: idle ones first, then the
    oldest. Never a held one; never a busy one where it would be killed without a drain."""
    spare_busy = bool(spec.queues) and not spec.drain_timeout
    old = sorted(((h, r) for h, r in records.items()
                  if r.status is HandleStatus.RUNNING and r.rev and r.rev not in current and not r.hold
                  and not (spare_busy and r.busy)),
                 key=lambda hr: (hr[1].busy > 0, hr[1].busy, hr[1].born or 0.0))
    return up_to(old, most)


@dataclass(frozen=True)
class RolloutDecision(Decision):
    """`retire` outdated handles, ask for `surge` new workers, allow `headroom` (`max_surge`)
    above `max_workers`; `left`: outdated workers once these are retired."""

    left: int = 0


def decide(view: ClusterView, earlier: Sequence[Decision] = ()) -> RolloutDecision:
    """The rollout's step in this reconcile (none without outdated workers): see the module
    docstring. It reads the live records whenever it rolls."""
    if not view.outdated:  # none for a retired cluster either
        return RolloutDecision(Reason.ROLLOUT)
    spec, goal, records = view.spec, view.goal, view.records
    surge_max, unavailable = spec.rollout.surge(goal), spec.rollout.unavailable(goal)
    retire: list[str] = []
    if view.rollout_held is None:
        retire = outdated_retirees(records, spec, view.current, max(view.running - (goal - unavailable), 0))
    gone = set(retire)
    moved = sum(records[h].workers for h in retire)
    # only outdated workers a rollout may retire call for new ones (not held ones)
    movable = sum(r.workers for h, r in records.items() if h not in gone and not r.hold
                  and r.status in LIVE and view.is_outdated(r))
    surge = min(surge_max, movable)
    if view.rollout_held is not None:
        surge = max(min(surge, view.counts.live + view.open_waiting - goal), 0)
    return RolloutDecision(Reason.ROLLOUT, retire=tuple(retire), surge=surge, headroom=surge_max,
                           left=view.outdated - moved)
