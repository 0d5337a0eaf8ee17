"""The interruption planner: workers the cloud reclaims (spot, preemptible) are replaced before
they go. Pure (no I/O).

An interrupted worker drains until the cloud takes it, and still counts against `max_workers`;
its replacement may therefore go above `max_workers` by as many workers as are interrupted,
never more (the scale planner launches it: an interrupted worker is not live).
"""

from __future__ import annotations

from collections.abc import Sequence

from fleet.planners.decision import Decision, Reason
from fleet.planners.view import ClusterView


def decide(view: ClusterView, earlier: Sequence[Decision] = ()) -> Decision:
    """Room above `max_workers` for the replacements of the interrupted workers."""
    return Decision(Reason.INTERRUPTION, headroom=view.counts.interrupted)
