"""One step towards the desired number: read the cluster, ask the pure planners (`fleet.planners`)
what to cancel, retire and launch, commit their decisions in one transaction, then send the run,
kill and drain work. The reconciler decides nothing itself: it builds the planners' view, calls
them in order and carries out what they decided.

Contract:
* Level-triggered: a reconcile reads everything it needs from Redis, so running it again (or
  late, or twice) only repeats a decision that still holds.
* One at a time per cluster (a lease), and nobody waits for it: a reconcile that finds it taken
  leaves the "again" marker, and the holder reconciles once more after it lets go, so a change
  made while it planned is never missed and no thread is held.
* Bursts coalesce: `request` sends a reconcile only if none is queued (the "queued" marker).
* The commit is a WATCH/MULTI (`Store.commit`): a concurrent launch record or sweep makes it
  re-plan, never act twice.
* Its cost follows the change: it plans from the counts by status and the pending launches, and
  reads handle records only when it has to choose which to kill.
* Pools: the scale planner decides how many to launch, `fleet.allocation` where (the best pools
  that may launch; a held pool's share goes to the next at once, with a `fallback` event), and,
  for a cluster with `rebalance`, the rebalance planner how many to launch in a better pool and
  retire from worse ones.
* Interrupted workers (draining until the cloud takes them) still count against max_workers,
  but their replacements may go above it by as many: never above max_workers + interrupted
  (`fleet.planners.interruption`).
* A rollout (`fleet.planners.rollout`) replaces outdated workers; a retired cluster launches
  nothing, and its drained handles are marked to be called off if it comes back (`fleet.retire`).
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet import planners
from fleet.config import ClusterSpec, FleetConfig
from fleet.control.dispatcher import Dispatcher, kill_by_pool
from fleet.control.epoch import EpochWatch
from fleet.counters import fallback_field
from fleet.holds import Holds
from fleet.lease import Lease
from fleet.model import EventKind, HandleStatus, LaunchRecord, LaunchState
from fleet.planners.decision import Decision, Reason, status_after, surge
from fleet.planners.rollout import RolloutDecision
from fleet.planners.scale import ScaleDecision
from fleet.planners.view import ClusterView
from fleet.planners.view import target as target  # re-exported (fleet.control.draining)
from fleet.store import PlanView, Store, Writes

#: Workers per launch (and so per run task); larger launches are split so several control-plane
#: workers and provider batches can work in parallel. Rounded down to whole containers, and to
#: whole provider calls (`Provider.launch_batch`) when one call launches fewer.
LAUNCH_CHUNK = 256


@dataclass
class ReconcileResult:
    cluster: str
    launched: list[tuple[str, int, str]] = field(default_factory=list)  # (launch id, workers, pool)
    cancelled: list[str] = field(default_factory=list)
    killed: dict[str, str] = field(default_factory=dict)  # handle -> its pool
    drained: dict[str, str] = field(default_factory=dict)
    desired: int | None = None
    observed: int = 0
    outdated: int = 0  # live workers of an older revision (a rollout replaces them)


def split(count: int, per_container: int, batch: int = 0) -> list[tuple[str, int]]:
    """A launch of `count` workers as chunks of at most LAUNCH_CHUNK workers (at least one
    container), whole containers each, and whole provider calls of `batch` containers each when
    a chunk holds more than one call (256 workers on EC2's 100 per call: chunks of 200)."""
    containers = max(LAUNCH_CHUNK // per_container, 1)
    if 0 < batch < containers:
        containers -= containers % batch
    chunk = containers * per_container
    return [(uuid.uuid4().hex, min(chunk, count - i)) for i in range(0, count, chunk)]


class Reconciler:
    def __init__(self, config: FleetConfig, store: Store, holds: Holds, dispatcher: Dispatcher, epoch: EpochWatch,
                 lease: float, launch_batch: Callable[[str, str], int] = lambda cluster, pool: 0) -> None:
        self.config = config
        self.store = store
        self.holds = holds
        self.dispatcher = dispatcher
        self.epoch = epoch
        self.lease = lease
        self.marker_ttl = math.ceil(lease)
        self.launch_batch = launch_batch

    def request(self, cluster: str) -> bool:
        """Ask for a reconcile unless one is already queued: bursts coalesce into few tasks."""
        if self.store.mark_queued(cluster, self.marker_ttl):
            self.dispatcher.reconcile(cluster)
            return True
        return False

    def reconcile(self, cluster: str) -> ReconcileResult:
        """Plan and commit one step towards the desired number; then dispatch run/kill/drain."""
        spec = self.config.spec(cluster)
        self.epoch.check()
        self.store.clear_queued(cluster)  # from now on, a new request sends a new reconcile
        if cluster in self.config.retired and (not self.store.has_state(cluster) or self.store.declared(cluster)):
            return ReconcileResult(cluster)  # retired and gone, or declared again elsewhere (fleet.retire)
        lease = Lease(self.store.r, self.store.of(cluster).lock, self.lease)
        if not lease.acquire():
            self.store.mark_again(cluster, self.marker_ttl)
            # the holder reads `again` only after its release: if it let go meanwhile, that is us
            if not lease.acquire():
                return ReconcileResult(cluster)
        first: ReconcileResult | None = None
        while True:
            try:
                self.store.take_again(cluster)  # this pass reads the state after any change it stands for
                rollout = self.store.rollout_state(cluster)
                result = self._commit_plan(cluster, spec, self.blocked(cluster, spec), rollout.get("state"))
                self._rollout_progress(cluster, rollout, result)
            finally:
                lease.release()
            for launch_id, _, pool in result.launched:
                self.dispatcher.run(cluster, launch_id, spec.pool_or_first(pool).provider)
            if result.killed:
                kill_by_pool(self.dispatcher, spec, cluster, result.killed)
            if result.drained:
                self.dispatcher.drain(cluster, list(result.drained), spec.pool_list[0].provider)
            first = first or result
            # another reconcile came while we held the lease: go again (unless someone else now does)
            if not self.store.take_again(cluster) or not lease.acquire():
                return first

    def blocked(self, cluster: str, spec: ClusterSpec) -> dict[str, str | None]:
        """Why each pool may not launch now (None: it may). With several pools, a rate-limited
        provider or an unresponsive pool is skipped too: its launches go to the next pool."""
        several = len(spec.pool_list) > 1
        return {p.name: self.holds.skipped(cluster, spec.fingerprint, p.name, p.provider, several)
                for p in spec.pool_list}

    def _rollout_progress(self, cluster: str, rollout: dict[str, str], result: ReconcileResult) -> None:
        """Remember that a rollout is under way, and say when it is done."""
        if result.outdated and "active" not in rollout:
            if self.store.mark_rollout(cluster, True):
                self.store.event(cluster, EventKind.ROLLOUT, outdated=result.outdated, started=1)
        elif not result.outdated and "active" in rollout and self.store.mark_rollout(cluster, False):
            self.store.event(cluster, EventKind.ROLLOUT_DONE)

    def _commit_plan(self, cluster: str, spec: ClusterSpec, blocked: dict[str, str | None],
                     rollout_held: str | None = None) -> ReconcileResult:
        """Build the view from the store's read, let the planners decide, commit their decisions
        in one transaction (planned again from a new read if a watched key changed)."""
        unknown = self.store.unknown_workers(cluster)
        retired = cluster in self.config.retired  # nothing new for a retired cluster (fleet.retire)

        def plan(read: PlanView) -> tuple[Writes, ReconcileResult]:
            view = ClusterView(spec, read.desired, read.counts, read.pending, blocked, unknown, self.store.now(),
                               retired, rollout_held, read.live_records)
            return self._transaction(cluster, view, planners.decide_all(view))

        return self.store.commit(cluster, plan)

    def _transaction(self, cluster: str, view: ClusterView,
                     decisions: Sequence[Decision]) -> tuple[Writes, ReconcileResult]:
        """The planners' decisions (the scale planner's last) as what one MULTI writes, and what
        the reconcile then dispatches. Nothing to write when nothing is decided."""
        scale = decisions[-1]
        assert isinstance(scale, ScaleDecision)
        earlier = decisions[:-1]
        t = _Transaction(cluster, view, ReconcileResult(cluster, desired=view.goal, observed=scale.observed,
                                                        outdated=view.outdated))
        if scale.empty and not any(d.retire for d in earlier):
            return t.writes, t.result
        for d in earlier:
            for handle in d.retire:
                t.retire(handle, d.reason)
            if isinstance(d, RolloutDecision) and d.retire:
                t.writes.event(EventKind.ROLLOUT, outdated=d.left, retired=len(d.retire), surge=d.surge)
        cancelled = [t.cancel(launch_id) for launch_id in scale.cancel]
        for handle in scale.retire:
            t.retire(handle, scale.reason)
        for pool_name, n in scale.launch.items():
            for launch_id, count in split(n, view.spec.workers_per_container, self.launch_batch(cluster, pool_name)):
                t.launch(launch_id, count, pool_name)
        t.events(cancelled, scale, [d for d in earlier if d.reason is Reason.REBALANCE])
        if scale.capped_by_max and not surge(earlier):  # a surge waiting for room is no news
            t.writes.event(EventKind.AT_MAX, max_workers=view.spec.max_workers)
        t.result.cancelled = list(scale.cancel)
        return t.writes, t.result


@dataclass
class _Transaction:
    """One reconcile's writes being built from the decisions, with what it will dispatch."""

    cluster: str
    view: ClusterView
    result: ReconcileResult
    writes: Writes = field(default_factory=Writes)
    drain: list[dict[str, Any]] = field(default_factory=list)
    kill: list[dict[str, Any]] = field(default_factory=list)

    def retire(self, handle: str, reason: Reason) -> None:
        """Drain `handle` (running, in a cluster with a drain_timeout: it finishes its work, then
        the sweep kills it), else kill it now. Its record is copied: the view stays as read."""
        spec, now, read = self.view.spec, self.view.now, self.view.records[handle]
        rec = dataclasses.replace(read, extra=dict(read.extra))
        was = rec.status
        entry = {"handle": handle, "workers": rec.workers, "was": was, **({"by": reason.by} if reason.by else {})}
        if status_after(spec.drain_timeout, was) is HandleStatus.DRAINING:
            rec.status, rec.since, rec.drain_until = HandleStatus.DRAINING, now, now + spec.drain_timeout
            if self.view.retired:
                rec.extra["retire"] = 1  # called off if the cluster comes back (fleet.retire)
            self.result.drained[handle] = rec.pool
            self.drain.append(entry)
        else:
            rec.status, rec.since, rec.kill_at = HandleStatus.STOPPING, now, now
            self.result.killed[handle] = rec.pool
            self.kill.append(entry)
        self.writes.moves[handle] = (rec, was)

    def cancel(self, launch_id: str) -> dict[str, Any]:
        """Cancel a pending launch: a queued one is dropped; one a run task has is marked (it may
        still make workers: see Store.claim_launch). Returns its event entry."""
        launch = self.view.pending[launch_id]
        if launch.state is LaunchState.QUEUED:
            self.writes.dropped.append(launch_id)
        else:
            self.writes.pending[launch_id] = LaunchRecord(launch.count, LaunchState.CANCELLED, launch.at,
                                                          launch.claimed, launch.pool, usd=launch.usd,
                                                          rate=launch.rate)
        return {"launch": launch_id, "workers": launch.count}

    def launch(self, launch_id: str, count: int, pool: str) -> None:
        """Record a launch of `count` workers in `pool` (its run task is dispatched after the commit)."""
        self.result.launched.append((launch_id, count, pool))
        self.writes.pending[launch_id] = LaunchRecord(count, LaunchState.QUEUED, self.view.now, pool=pool,
                                                      rev=self.view.spec.revision(pool))

    def events(self, cancelled: list[dict[str, Any]], scale: ScaleDecision, rebalances: Sequence[Decision]) -> None:
        """The batch events (cancelled, drain, kill, launch), then a fallback (the launch went past
        pools that may not launch) and a rebalance (a surge launched in the better pool)."""
        launches = [{"launch": lid, "workers": n, **({"pool": pool} if pool else {})}
                    for lid, n, pool in self.result.launched]
        self.writes.events += [(EventKind.CANCELLED, cancelled), (EventKind.DRAIN, self.drain),
                               (EventKind.KILL, self.kill), (EventKind.LAUNCH, launches)]
        if scale.skipped and scale.launch:
            total = sum(scale.launch.values())
            self.writes.event(EventKind.FALLBACK, to=",".join(scale.launch), workers=total,
                              skipped=";".join(f"{name}: {why}" for name, why in scale.skipped))
            for name, why in scale.skipped:
                self.writes.counters[fallback_field(self.cluster, name, why)] = total
        for d in rebalances:
            if d.surge and scale.launch:
                self.writes.event(EventKind.REBALANCE, surge=d.surge, retired=len(d.retire))
