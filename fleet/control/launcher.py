"""The provider's side of a plan: carry out one pending launch, settle a launch cancelled while a
run task had it, and kill handles; and the policy for what a failed launch means.

Contract:
* A launch is idempotent by its launch id at four points: the claim stops a cancelled or finished
  launch from reaching the provider; the launch's lease stops a re-sent run task from calling the
  provider while another is at work; the provider returns the first call's handles for a launch
  id it has seen; the record script never adds a handle twice.
* A launch whose outcome is unknown (a transient error: an answer lost, a timeout) stays pending
  and claimed, so it keeps counting against `max_workers`, and is retried with its launch id.
* A killed handle stays `stopping` (counted) until the provider reports it stopped.
* Recorded handles get a prompt follow-up check (`after_launch`, see `fleet.control.followup`).
* Every launch is priced (as `fleet.pool_prices.price_of`, cached `PRICE_TTL` seconds per cluster): its
  claim records the price (the launch counts in the run rate while in flight), and so does each
  handle it makes (`HandleRecord.price`). A price that cannot be had is unknown (costs 0), never
  an error of the launch.
* The claim admits a launch under the hourly caps over its cluster (`fleet.budget`): cut to what
  fits, or dropped; either way the cluster is held "at budget" a while, with an `at_budget` event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from fleet.budget import claim_caps
from fleet.config import ClusterSpec, FleetConfig
from fleet.control.api import validate_handles
from fleet.control.dispatcher import Dispatcher
from fleet.control.pool import ProviderPool
from fleet.errors import (
    CapacityError,
    ProviderError,
    ProviderTimeout,
    QuotaExceeded,
    TransientProviderError,
)
from fleet.holds import Holds
from fleet.lease import Lease
from fleet.model import EventKind
from fleet.pool_prices import ProviderFor, pool_prices, providers_of
from fleet.provider import WorkerStatus
from fleet.store import Claim, ClaimState, Store

log = logging.getLogger(__name__)
#: seconds a pool's price is reused before it is asked again (spot prices move)
PRICE_TTL = 600.0


class Launcher:
    def __init__(self, config: FleetConfig, store: Store, holds: Holds, pool: ProviderPool, dispatcher: Dispatcher,
                 lease: float, request_reconcile: Callable[[str], bool],
                 after_launch: Callable[[str, str], None] = lambda cluster, pool: None) -> None:
        self.config = config
        self.store = store
        self.holds = holds
        self.pool = pool
        self.dispatcher = dispatcher
        self.lease = lease
        self.request_reconcile = request_reconcile
        self.after_launch = after_launch
        self._provider_for: ProviderFor | None = None
        self._prices: dict[str, tuple[float, dict[str, float | None]]] = {}

    def prices(self, cluster: str) -> dict[str, float | None]:
        """What one handle of each pool of `cluster` costs per hour (None: unknown), the dearest
        type of each (as `fleet.pool_prices.price_of`), cached `PRICE_TTL` seconds."""
        cached = self._prices.get(cluster)
        if cached and time.monotonic() - cached[0] < PRICE_TTL:
            return cached[1]
        if self._provider_for is None:
            self._provider_for = providers_of(self.config)
        out: dict[str, float | None] = {p.name: None for p in self.config.spec(cluster).pool_list}
        try:
            for pool, quote in ((p.pool, p.quote) for p in pool_prices(self.config, cluster, self._provider_for)):
                if quote is not None:
                    out[pool] = max(out.get(pool) or 0.0, quote.price.per_hour)
        except Exception:  # a price is worth a log line, never a failed launch
            log.warning("no prices for %s", cluster, exc_info=True)
            out = dict.fromkeys(out)
        self._prices[cluster] = (time.monotonic(), out)
        return out

    def _timed_out(self, cluster: str, op: str, exc: ProviderTimeout, **fields: Any) -> None:
        if not exc.held:  # the first call that hung says so; the held ones after it are quiet
            self.store.event(cluster, EventKind.TIMEOUT, op=op, message=str(exc)[:300], **fields)

    # -- launches --------------------------------------------------------------------------
    def run_launch(self, cluster: str, launch_id: str) -> dict[str, Any]:
        """Carry out one pending launch, idempotently (see the module's contract)."""
        spec = self.config.spec(cluster)
        claim = self.store.claim_launch(cluster, launch_id, self.prices(cluster), spec.workers_per_container,
                                        claim_caps(self.config, cluster))
        if claim.cut:
            self._at_budget(cluster, launch_id, claim)
        if claim.state not in (ClaimState.CLAIMED, ClaimState.SETTLE):
            return {"launch_id": launch_id, "state": claim.state.value, "handles": 0}
        lease = Lease(self.store.r, self.store.of(cluster).launch(launch_id), self.lease)
        if not lease.acquire():
            return {"launch_id": launch_id, "state": "busy", "handles": 0}
        count, pool, rev = claim.count, claim.pool, claim.revision
        price = self.prices(cluster).get(pool)
        provider = self.pool.of(cluster, pool).name  # the one that launches it (see ProviderPool.definition)
        settle = claim.state is ClaimState.SETTLE
        if cluster in self.config.retired:  # a launch planned before the cluster left the config
            if claim.first:
                self.store.drop_launch(cluster, launch_id)
                lease.release()
                return {"launch_id": launch_id, "state": "retired", "handles": 0}
            settle = True  # an earlier attempt may have made workers: find them and kill them
        if settle:
            return self._settle(cluster, spec, launch_id, count, lease, pool)
        try:
            ref = self.pool.cluster(cluster, pool, excluded_types=self.holds.held_types(provider, pool),
                                    first_attempt=claim.first, revision=rev)
            try:
                handles = self.pool.of(cluster, pool).run_workers(ref, spec.container, spec.hardware, count,
                                                                  launch_id=launch_id)
            except ProviderTimeout as exc:
                self._timed_out(cluster, "run", exc, launch=launch_id)
                raise  # the task retries; the pending entry stays claimed, so the launch stays counted
            except TransientProviderError:
                raise  # the task retries with back-off; the pending entry stays claimed
            except ProviderError as exc:
                self._failed(cluster, spec, launch_id, exc, ref.excluded_types, pool)
                return {"launch_id": launch_id, "state": "failed", "error": type(exc).__name__}
            previous = self.store.record_launch(cluster, launch_id, handles, pool, rev, price)
            if previous == "missing":  # Redis lost the launch while we ran it
                self.holds.start_recovery(self.config.fleet.launch_timeout)
        finally:
            lease.release()
        unique = list(dict.fromkeys(handles))
        if previous == "cancelled" and unique:
            self.dispatcher.kill(cluster, unique, provider, pool)
        elif unique:
            self.after_launch(cluster, pool)
        if len(handles) != count:
            self.store.event(cluster, EventKind.SHORT_LAUNCH, launch=launch_id, asked=count, got=len(handles))
        self.request_reconcile(cluster)
        return {"launch_id": launch_id, "state": previous, "handles": len(unique), "workers": len(handles)}

    def _at_budget(self, cluster: str, launch_id: str, claim: Claim) -> None:
        """A cap cut a launch (or refused it: the claim dropped it): hold the cluster's launches
        for `fleet.quota_hold` seconds (no re-plan at once; a worker going away lifts it) and say
        so with the figures."""
        self.holds.set_at_budget(cluster, self.config.fleet.quota_hold, claim.cap, claim.committed, claim.limit)
        self.store.event(cluster, EventKind.AT_BUDGET, launch=launch_id, cap=claim.cap, rate=round(claim.committed, 6),
                         limit=round(claim.limit, 6), asked=claim.asked, launched=claim.count,
                         **({"pool": claim.pool} if claim.pool else {}))
        if claim.state is ClaimState.AT_BUDGET:
            self.request_reconcile(cluster)  # the launch is gone: the reconcile sees the hold

    def retrying(self, cluster: str, launch_id: str, countdown: float) -> None:
        """Say that the launch's run task will be retried in `countdown` seconds: until then (and
        a lease lifetime more) the sweep does not take the launch for abandoned and send it again,
        which would skip the back-off (see Sweeper._abandoned)."""
        self.store.r.set(self.store.of(cluster).launch_retry(launch_id), "1", px=int((countdown + self.lease) * 1000))

    def _settle(self, cluster: str, spec: ClusterSpec, launch_id: str, count: int, lease: Lease,
                pool: str = "") -> dict[str, Any]:
        """A launch cancelled after a run task had taken it: that task may have made workers whose
        answer never came back. Ask the provider by launch id (without launching); a provider that
        cannot tell is asked `run_workers` with the same launch id, which returns what the launch
        made (or makes it). Whatever exists is recorded as stopping and killed; only then does the
        pending entry go, so until the provider has answered the launch counts against max."""
        provider = self.pool.of(cluster, pool)
        name = provider.name
        try:
            ref = self.pool.cluster(cluster, pool, excluded_types=self.holds.held_types(name, pool))
            try:
                handles = provider.find_launch(ref, launch_id)
                if handles is None:
                    handles = provider.run_workers(ref, spec.container, spec.hardware, count, launch_id=launch_id)
            except ProviderTimeout as exc:
                self._timed_out(cluster, "find", exc, launch=launch_id)
                raise
            except TransientProviderError:
                raise  # the task retries; the cancelled entry still counts against max_workers
            except ProviderError as exc:
                # the provider cannot answer for good: drop the entry; whatever the launch made, the
                # sweep's listing counts it (unknown) and adopts it, and the planner kills it
                self.store.drop_launch(cluster, launch_id)
                self.store.event(cluster, EventKind.ERROR, op="find", launch=launch_id, error=type(exc).__name__,
                                 message=str(exc)[:500])
                return {"launch_id": launch_id, "state": "failed", "error": type(exc).__name__}
            self.store.record_launch(cluster, launch_id, handles, pool)  # as stopping: it was cancelled
        finally:
            lease.release()
        unique = list(dict.fromkeys(handles))
        if unique:
            self.dispatcher.kill(cluster, unique, name, pool)
        self.request_reconcile(cluster)
        return {"launch_id": launch_id, "state": "settled", "handles": len(unique), "workers": len(handles)}

    def _failed(self, cluster: str, spec: ClusterSpec, launch_id: str, exc: ProviderError,
                excluded: frozenset[str] = frozenset(), pool: str = "") -> None:
        """Give up a launch after an error retrying will not fix soon, and remember why, so that
        every control-plane worker holds off (no hot loop). The hold is the pool's: with pools,
        the next reconcile, asked for at once, sends the shortfall to the next pool.

        A `CapacityError` naming a type this launch was told to avoid (`excluded`) means the
        provider cannot change type (an explicit `instance_type`, a Fargate size): the cluster is
        then held as if no type were left, instead of failing the same way launch after launch."""
        self.store.drop_launch(cluster, launch_id)
        fields: dict[str, Any] = {"op": "run", "launch": launch_id, "error": type(exc).__name__,
                                  "message": str(exc)[:500], **({"pool": pool} if pool else {})}
        provider = self.pool.of(cluster, pool).name
        if isinstance(exc, QuotaExceeded):
            self.holds.set_at_quota(cluster, self.config.fleet.quota_hold, pool)
            self.store.event(cluster, EventKind.AT_QUOTA, **fields)
        elif isinstance(exc, CapacityError):
            if exc.instance_type and exc.instance_type not in excluded:
                # hold that type; the next eligible one is tried at once
                self.holds.hold_type(provider, exc.instance_type, self.config.fleet.capacity_hold, pool)
            else:  # nothing else to try: hold the pool's launches (no hot loop)
                self.holds.set_no_capacity(cluster, self.config.fleet.capacity_hold, pool)
            self.store.event(cluster, EventKind.NO_CAPACITY, instance_type=exc.instance_type or "", **fields)
        else:
            self.holds.set_error(cluster, str(exc), spec.fingerprint, pool)
            self.store.event(cluster, EventKind.ERROR, **fields)
        if len(spec.pool_list) > 1 or isinstance(exc, CapacityError):
            self.request_reconcile(cluster)  # the next pool (or type) now, not at the next sweep

    # -- kills -----------------------------------------------------------------------------
    def kill_handles(self, cluster: str, handles: Sequence[str], pool: str = "") -> dict[str, Any]:
        """Kill handles of one pool. They stay tracked as stopping until the provider reports
        them stopped; failed kills are retried by the sweep with back-off."""
        self.config.spec(cluster)
        unique = validate_handles(handles)
        if not isinstance(pool, str) or (pool and self.pool.definition(cluster, pool) is None):
            pool = ""  # garbage, or a pool nobody declared: the first pool's provider
        ref, provider = self.pool.cluster(cluster, pool), self.pool.of(cluster, pool)
        retry = self.config.fleet.kill_retry
        try:
            raw = provider.kill_workers(ref, unique)
        except ProviderError as exc:
            self.store.record_kills(cluster, dict.fromkeys(unique, False), retry, pool)
            if isinstance(exc, ProviderTimeout):
                self._timed_out(cluster, "kill", exc)
            else:
                self.store.event(cluster, EventKind.ERROR, op="kill", error=type(exc).__name__,
                                 message=str(exc)[:500])
            raise
        results = {h: raw.get(h, False) is not False for h in unique}
        self.store.record_kills(cluster, results, retry, pool)
        # the kill's answer may say where each handle is now; the others are asked at once
        seen = {h: v.value for h, v in raw.items() if h in results and isinstance(v, WorkerStatus)}
        confirm = [h for h in unique if raw.get(h) is True]
        if confirm:
            try:
                status = provider.worker_status(ref, confirm)
                seen.update({h: WorkerStatus(status[h]).value for h in confirm if h in status})
            except ProviderError:
                pass  # the next sweep confirms
        gone = self.store.apply_status(cluster, seen, provider.grace, retry).gone if seen else 0
        if gone:
            self.holds.worker_went_away(cluster, (pool,))
        self.request_reconcile(cluster)
        return {"killed": gone, "failed": sum(1 for ok in results.values() if not ok)}
