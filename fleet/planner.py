"""The scale planner, kept importable under its old name: it lives in `fleet.planners.scale`."""

from __future__ import annotations

from fleet.planners.scale import (
    HandleView,
    PendingView,
    Plan,
    Totals,
    choose_at_least,
    plan,
)

__all__ = ["HandleView", "PendingView", "Plan", "Totals", "choose_at_least", "plan"]
