"""The requests of other services and operators, behind the public tasks: `fleet.scale`,
`fleet.status`, `fleet.clear`, `fleet.hold`, `fleet.drain_handle`, `fleet.kill_handle`.

Contract: every argument comes from the outside world and is checked before anything is written;
bad input raises a typed `InvalidRequest` (or `UnknownCluster`, `ScaleRefused`) whose message
quotes the argument cut short, and changes nothing. A request that changes something asks for a
reconcile; it never waits for one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from fleet import budget
from fleet.config import FleetConfig, shorten
from fleet.control.dispatcher import Dispatcher, kill_by_pool
from fleet.control.queries import Queries
from fleet.errors import InvalidRequest, ScaleRefused
from fleet.holds import Holds
from fleet.model import EventKind, HandleStatus
from fleet.pool_prices import ProviderFor, price_of, providers_of
from fleet.replication import confirm_replicated
from fleet.requests import Gate
from fleet.store import Store


def validate_workers(value: Any) -> int:
    """A worker number from the outside world: a non-negative int, nothing else."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"workers must be an integer, got {shorten(value)} ({type(value).__name__})")
    if value < 0:
        raise ScaleRefused(f"workers must be >= 0, got {shorten(value)}")
    return value


def validate_handles(handles: Any, limit: int = 100_000) -> list[str]:
    """Handles from a task message: a list of non-empty strings, unique, not absurdly many."""
    if not isinstance(handles, (list, tuple)) or not all(isinstance(h, str) and 0 < len(h) <= 1024 for h in handles):
        raise InvalidRequest(f"handles must be a list of strings, got {shorten(handles)}")
    if len(handles) > limit:
        raise InvalidRequest(f"at most {limit} handles per call, got {len(handles)}")
    return list(dict.fromkeys(handles))


class FleetAPI:
    def __init__(self, config: FleetConfig, store: Store, holds: Holds, queries: Queries, dispatcher: Dispatcher,
                 lease: float, request_reconcile: Callable[[str], bool]) -> None:
        self.config = config
        self.store = store
        self.holds = holds
        self.queries = queries
        self.dispatcher = dispatcher
        self.marker_ttl = math.ceil(lease)
        self.request_reconcile = request_reconcile
        self.gate = Gate(config, store)
        self._provider_for: ProviderFor | None = None

    def admit(self, task: str, task_id: str | None, headers: Mapping[str, Any], args: tuple[Any, ...],
              mutating: bool = True) -> None:
        """Before a public task runs: raise unless it is for this fleet and not expired (`fleet.requests`)."""
        self.gate.admit(task, task_id, headers, args, mutating)

    def confirm_replicated(self) -> None:
        """After a mutating request: return once a replica has its writes (`fleet.replication`)."""
        confirm_replicated(self.store.r, self.store.keys.replicated)

    def scale(self, cluster: Any, workers: Any) -> dict[str, Any]:
        """Store the desired number and ask for a reconcile: {cluster, desired, version}. On an
        autoscaled cluster the number is also the autoscaler's floor (0 clears it)."""
        spec = self.config.spec(cluster)
        n = validate_workers(workers)
        if cluster in self.config.retired:
            raise ScaleRefused(f"cluster {cluster!r} is retired (removed from the config): its workers are being "
                               "drained and killed; put it back in the config to scale it")
        if not spec.min_workers <= n <= spec.max_workers:
            raise ScaleRefused(f"cluster {cluster!r} takes between {spec.min_workers} and {spec.max_workers} "
                               f"workers, got {shorten(n)}")
        # the desired number and the "reconcile queued" marker in one round trip
        version, queued = self.store.set_desired(cluster, n, floor=n if spec.autoscale else None,
                                                 queued_ttl=self.marker_ttl)
        if queued:
            self.dispatcher.reconcile(cluster)
        self._budget_capped(cluster, n)
        return {"cluster": cluster, "desired": n, "version": version}

    def _budget_capped(self, cluster: str, n: int) -> None:
        """A scale request above what the hourly caps let run stays as asked; an event says the
        budget caps it, and with no room left at all the cluster is held at budget at once."""
        if not budget.caps_over(self.config, cluster):
            return
        if self._provider_for is None:
            self._provider_for = providers_of(self.config)
        first = self.config.spec(cluster).pool_list[0].name
        price = price_of(self.config, cluster, first, self._provider_for)
        capped = budget.scale_cap(self.config, self.store, cluster, n, price.per_hour if price else None)
        if capped is None:
            return
        room = capped.pop("room")
        self.store.event(cluster, EventKind.BUDGET_CAPPED, **capped)
        if not room:
            self.holds.set_at_budget(cluster, self.config.fleet.quota_hold, capped["cap"], capped["rate"],
                                     capped["limit"])

    def status(self, cluster: Any) -> dict[str, Any]:
        return self.queries.status(cluster)

    ROLLOUT_ACTIONS = ("start", "pause", "resume", "status")

    def rollout(self, cluster: Any, action: Any = "start") -> dict[str, Any]:
        """A cluster's rollout (the replacement of its outdated workers): `start` (let it go on,
        after a stop too), `pause`, `resume` (as start), or `status`. Every action answers the
        status: {cluster, state, reason, outdated, desired, running, revisions}."""
        self.config.spec(cluster)
        if action not in self.ROLLOUT_ACTIONS:
            raise InvalidRequest(f"action must be one of {', '.join(self.ROLLOUT_ACTIONS)}, got {shorten(action)}")
        if cluster in self.config.retired and action != "status":
            raise InvalidRequest(f"cluster {cluster!r} is retired (removed from the config): nothing to roll out")
        if action == "pause":
            if self.store.hold_rollout(cluster, "paused", "paused by an operator"):
                self.store.event(cluster, EventKind.ROLLOUT_STOPPED, state="paused", reason="paused by an operator")
        elif action in ("start", "resume"):
            if self.store.release_rollout(cluster):
                self.store.event(cluster, EventKind.ROLLOUT, resumed=1)
            self.request_reconcile(cluster)
        return self.queries.rollout(cluster)

    def clear(self, cluster: Any) -> dict[str, Any]:
        """An operator's reset of a cluster's permanent error, quota and no-capacity holds (and a
        fleet-wide recovery hold)."""
        self.config.spec(cluster)
        cleared = self.holds.clear(cluster, [p.name for p in self.config.spec(cluster).pool_list])
        if cleared:
            self.store.event(cluster, EventKind.CLEARED)
        self.request_reconcile(cluster)
        return {"cluster": cluster, "cleared": cleared}

    # -- operator controls per handle (as Arvados's management API) ------------------------
    def hold(self, cluster: Any, handle: Any, hold: Any = True) -> dict[str, Any]:
        """Never kill this handle automatically (hold=False releases it). `hold` must be a real
        boolean: "false" is a string, and Python would take it for True."""
        self.config.spec(cluster)
        if not isinstance(hold, bool):
            raise InvalidRequest(f"hold must be true or false, got {shorten(hold)} ({type(hold).__name__})")
        (h,) = validate_handles([handle])
        if not self.store.set_hold(cluster, h, hold):
            raise InvalidRequest(f"cluster {cluster!r} has no handle {shorten(h)}")
        self.store.event(cluster, EventKind.HELD if hold else EventKind.RELEASED, handle=h)
        return {"cluster": cluster, "handle": h, "hold": hold}

    def drain_handle(self, cluster: Any, handle: Any) -> dict[str, Any]:
        """Drain one handle now (its replacement is launched as for any worker that goes away)."""
        spec = self.config.spec(cluster)
        (h,) = validate_handles([handle])
        if not spec.queues:
            raise InvalidRequest(f"cluster {cluster!r} has no `queues`: nothing to drain; kill the handle instead")
        moved = self.store.transition(cluster, [h], [HandleStatus.RUNNING, HandleStatus.INITIALIZING],
                                      HandleStatus.DRAINING, EventKind.DRAIN, event_fields={"by": "operator"},
                                      drain_until=self.store.now() + (spec.drain_timeout or 300.0))
        if not moved:
            raise InvalidRequest(f"cluster {cluster!r} has no running handle {shorten(h)}")
        self.dispatcher.drain(cluster, moved, spec.pool_list[0].provider)
        self.request_reconcile(cluster)
        return {"cluster": cluster, "handle": h, "draining": True}

    def kill_handle(self, cluster: Any, handle: Any) -> dict[str, Any]:
        """Kill one handle now, held or not (its replacement is launched as for any worker that dies)."""
        spec = self.config.spec(cluster)
        (h,) = validate_handles([handle])
        moved = self.store.transition(cluster, [h], [HandleStatus.RUNNING, HandleStatus.INITIALIZING,
                                                     HandleStatus.DRAINING],
                                      HandleStatus.STOPPING, EventKind.KILL, event_fields={"by": "operator"})
        if not moved:
            raise InvalidRequest(f"cluster {cluster!r} has no live handle {shorten(h)}")
        kill_by_pool(self.dispatcher, spec, cluster, self.store.pools_of(cluster, moved))
        self.request_reconcile(cluster)
        return {"cluster": cluster, "handle": h, "killed": True}
