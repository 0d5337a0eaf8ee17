"""Hourly caps on what the fleet runs, at run time (docs/budgets.md: Caps): what the claim script
needs to admit a launch, and what a scale request above the caps says. (The caps themselves, and
their checks at load time: `fleet.caps`.)

Contract:
* A cap covers clusters: a cluster's its own, a group's every cluster naming the group, the
  fleet's every cluster. Every cap covering a cluster applies to its launches.
* A cap is checked when a run task claims a launch, in the claim script (lua/claim.lua), against
  the committed run rate of the clusters it covers (handles in Redis plus claimed launches in
  flight): the check and the claim are one step. A launch that does not fit is cut to what fits,
  or dropped when not one handle fits; the cluster is then held "at budget" for a while.
* Nothing running is ever killed to meet a cap: a cap lowered below what runs stops new launches.
* Every pool of a capped cluster must have a price, and a group a cluster names must be declared
  under `[groups]` once any group is declared: configuration errors (`fleet.caps`).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from fleet.caps import Cap, caps_over

if TYPE_CHECKING:
    from fleet.config import FleetConfig
    from fleet.state.costs import ClusterCost
    from fleet.store import Store


def claim_caps(config: FleetConfig, cluster: str) -> tuple[list[str], str]:
    """What the claim script needs for `cluster`'s caps: the clusters they cover (in the order
    their keys go in KEYS, `cluster` first) and the caps as its JSON argument ("" for none)."""
    caps = caps_over(config, cluster)
    if not caps:
        return [], ""
    names = list(dict.fromkeys([cluster, *(c for cap in caps for c in cap.clusters)]))
    index = {c: i + 1 for i, c in enumerate(names)}
    payload = [{"name": cap.name, "cap": round(cap.usd * 1e6), "clusters": [index[c] for c in cap.clusters]}
               for cap in caps]
    return names, json.dumps(payload, separators=(",", ":"))


def workers_that_fit(config: FleetConfig, cluster: str, costs: dict[str, ClusterCost], usd: float | None,
                     per_handle: int) -> tuple[int, Cap | None]:
    """How many more workers of `cluster` fit under its caps at `usd` per handle, given each
    cluster's cost (`Store.costs` of every cluster the caps cover), and the cap that binds
    (None and a huge number when none does, or the price is unknown or 0)."""
    best, binding = 1 << 40, None
    if not usd:
        return best, None
    for cap in caps_over(config, cluster):
        committed = sum(costs[c].hourly for c in cap.clusters if c in costs)
        handles = max(math.floor((cap.usd - committed) / usd + 1e-9), 0)
        if handles * per_handle < best:
            best, binding = handles * per_handle, cap
    return best, binding


def scale_cap(config: FleetConfig, store: Store, cluster: str, asked: int, usd: float | None) -> dict[str, Any] | None:
    """For a scale request of `asked` workers: None when the caps let that many run (or none covers
    the cluster), else the `budget_capped` event's fields: `asked`, `fits` (the workers the cluster
    may reach now: those it has, launches planned included, and what the caps leave room for at
    `usd` per handle), and the binding cap's `cap`, `rate` (USD/h committed) and `limit`."""
    caps = caps_over(config, cluster)
    if not caps or not usd:
        return None
    covered = list(dict.fromkeys(c for cap in caps for c in cap.clusters))
    costs = store.costs(covered)
    seen = store.summary(cluster)
    summary = seen.as_dict(cluster)
    per = config.spec(cluster).workers_per_container
    unclaimed = sum(p.count for p in seen.pending.values() if p.claimed is None and p.state.value != "cancelled")
    room, binding = workers_that_fit(config, cluster, costs, usd, per)
    has = int(summary["initializing"]) + int(summary["running"]) + int(summary["pending"])
    fits = has + max(room - unclaimed, 0)
    if binding is None or asked <= fits:
        return None
    committed = sum(costs[c].hourly for c in binding.clusters if c in costs)
    return {"asked": asked, "fits": fits, "cap": binding.name, "rate": round(committed, 6),
            "limit": binding.usd, "room": max(room - unclaimed, 0)}
