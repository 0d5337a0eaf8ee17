"""What a planner returns: one decision value, carried out by the reconciler (no I/O here).

Every planner decides from the same read-only `ClusterView` and the decisions of the planners
before it (`fleet.planners.PLANNERS` gives the order), and says what it wants done: handles to
retire (drained or killed: the reconciler's choice, by the cluster's `drain_timeout`), workers to
launch per pool, launches to cancel, and the reason. A decision never writes; the reconciler
turns all of them into one transaction.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fleet.model import HandleRecord, HandleStatus


class Reason(str, enum.Enum):
    """Why a planner acts: the `by` field of the drain and kill events (none for a scale-down)."""

    SCALE = "scale"  # towards the desired number (its events carry no `by`)
    ROLLOUT = "rollout"
    REBALANCE = "rebalance"
    INTERRUPTION = "interruption"

    def __str__(self) -> str:
        return self.value

    @property
    def by(self) -> str:
        """The `by` field of its drain and kill events ("": none)."""
        return "" if self is Reason.SCALE else self.value


@dataclass(frozen=True)
class Decision:
    """What one planner decided.

    `retire`: running or initializing handles to drain or kill, in order. `launch`: pool ->
    workers to launch there. `surge`: workers the scale planner should ask for above the desired
    number (it alone turns workers into launches). `headroom`: workers the cluster may go above
    `max_workers` by, for this decision's sake."""

    reason: Reason
    retire: tuple[str, ...] = ()
    launch: Mapping[str, int] = field(default_factory=dict)
    surge: int = 0
    headroom: int = 0

    @property
    def acts(self) -> bool:
        """It retires or launches something."""
        return bool(self.retire or self.launch)


def headroom(earlier: Sequence[Decision]) -> int:
    """Workers the earlier decisions let the cluster go above `max_workers` by."""
    return sum(d.headroom for d in earlier)


def surge(earlier: Sequence[Decision]) -> int:
    """Workers the earlier decisions ask for above the desired number."""
    return sum(d.surge for d in earlier)


def retired(earlier: Sequence[Decision]) -> dict[str, Reason]:
    """The handles the earlier decisions retire, in order, with their reason."""
    return {h: d.reason for d in earlier for h in d.retire}


def status_after(drain_timeout: float, was: HandleStatus) -> HandleStatus:
    """The status a retired handle moves to: a running one drains first when the cluster has a
    `drain_timeout` (it finishes its work, then the sweep kills it); any other is killed."""
    if drain_timeout and was is HandleStatus.RUNNING:
        return HandleStatus.DRAINING
    return HandleStatus.STOPPING


def up_to(ranked: Sequence[tuple[str, HandleRecord]], most: int) -> list[str]:
    """The handles of `ranked` (best first) taken in order while their workers fit in `most`:
    a retirement never takes more than it may (never below the desired number)."""
    chosen, total = [], 0
    for h, r in ranked:
        if total + r.workers <= most:
            chosen.append(h)
            total += r.workers
    return chosen
