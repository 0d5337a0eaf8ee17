"""Fleet's shared state in Redis: desired numbers, handle and launch records, events, and the
small markers of the reconcile. The key names come from `fleet.keys`, the records from
`fleet.model`, the Lua scripts from `fleet/lua/`.

`Store` is the one object callers use; it is composed of the sections in `fleet.state`, one module
each, and `fleet.retire.Retirement`:

| section | holds |
|---|---|
| `fleet.state.handles` | handle records, the status index and the counts; snapshots; moves and patches |
| `fleet.state.plans` | the reconcile's commit (`PlanView`, `Writes`) |
| `fleet.state.launches` | a run task's `Claim` on a pending launch, the record of what a launch made |
| `fleet.state.sweeps` | statuses, interruptions, kills, cleanups, unknown handles and adoption |
| `fleet.state.costs` | the run rate and accumulated cost of each cluster, by pool (`ClusterCost`) |
| `fleet.state.rollouts` | the rollout memory, max_lifetime's expiry |
| `fleet.state.markers` | the desired number, the reconcile's markers, the autoscaler's memory, the epoch |
| `fleet.state.events` | the event stream (batched per group of handles) and the series of samples |
| `fleet.retire.Retirement` | spec records, "declared" markers, what is left of a retired cluster |

Beside the handle records the store keeps a status index (handle -> status) and the counts by
status, so that the work of a reconcile and a sweep follows what changed, not the fleet's size:
a reconcile reads the counts, and the handle records only when it kills; a sweep compares the
provider's answer with the index and writes only what differs. Events about many handles are
one event per batch (`count`, `workers`, and up to 50 `handles` named).

Every change that touches more than one key, or reads before it writes, is one Lua script or one
WATCH/MULTI transaction (`fleet.state.optimistic`, the one retry loop). Every event is counted in
the metrics hash, once per handle, by the same script or transaction that appends it. Safe to
share across threads (redis-py pools).
"""

from __future__ import annotations

from fleet.retire import Retirement
from fleet.state.base import EVENTS_MAXLEN
from fleet.state.costs import ClusterCost, Costs, PoolCost
from fleet.state.events import SAMPLE, SERIES_EVERY, SERIES_KEEP, event_handles, per_handle
from fleet.state.handles import SweepView, index_value, parse_index
from fleet.state.launches import Claim, ClaimState, Launches
from fleet.state.markers import Markers
from fleet.state.plans import Plans, PlanView, Writes
from fleet.state.rollouts import Rollouts
from fleet.state.sweeps import StatusResult, Sweeps

__all__ = [
    "EVENTS_MAXLEN", "SAMPLE", "SERIES_EVERY", "SERIES_KEEP", "Claim", "ClaimState", "ClusterCost", "PlanView",
    "PoolCost", "StatusResult",
    "Store", "SweepView", "Writes", "event_handles", "index_value", "parse_index", "per_handle",
]


class Store(Plans, Costs, Sweeps, Launches, Rollouts, Markers, Retirement):
    """Typed access to one fleet's state (`Store(client, fleet_id)`): every section's methods on
    one object. The sections share the client, the keyspace and the scripts (`StoreBase`)."""
