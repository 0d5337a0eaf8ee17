"""One step towards the desired number: read the cluster, ask the pure planner what to cancel,
kill and launch, commit that in one transaction, then send the run, kill and drain work.

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
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from fleet import planner
from fleet.config import ClusterSpec, FleetConfig
from fleet.control.dispatcher import Dispatcher
from fleet.control.epoch import EpochWatch
from fleet.holds import Holds
from fleet.lease import Lease
from fleet.model import Desired, EventKind, HandleRecord, HandleStatus, LaunchRecord, LaunchState
from fleet.store import PlanView, Store, Writes

#: Workers per launch (and so per run task); larger launches are split so several control-plane
#: workers and provider batches can work in parallel. Rounded down to whole containers, and to
#: whole provider calls (`Provider.launch_batch`) when one call launches fewer.
LAUNCH_CHUNK = 256


@dataclass
class ReconcileResult:
    cluster: str
    launched: list[tuple[str, int]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    drained: list[str] = field(default_factory=list)
    desired: int | None = None
    observed: int = 0


def target(spec: ClusterSpec, desired: Desired | None) -> int:
    """The desired number, within the cluster's limits as the config says *now*; `min_workers`
    while nobody has asked for a number."""
    n = desired.n if desired else spec.min_workers
    return min(max(n, spec.min_workers), spec.max_workers)


def split(count: int, per_container: int, batch: int = 0) -> list[tuple[str, int]]:
    """A launch of `count` workers as chunks of at most LAUNCH_CHUNK workers (at least one
    container), whole containers each, and whole provider calls of `batch` containers each when
    a chunk holds more than one call (256 workers on EC2's 100 per call: chunks of 200)."""
    containers = max(LAUNCH_CHUNK // per_container, 1)
    if 0 < batch < containers:
        containers -= containers % batch
    chunk = containers * per_container
    return [(uuid.uuid4().hex, min(chunk, count - i)) for i in range(0, count, chunk)]


def handle_views(records: dict[str, HandleRecord]) -> list[planner.HandleView]:
    return [planner.HandleView(h, r.workers, r.status, r.since, r.busy, r.hold) for h, r in records.items()]


def pending_views(pending: dict[str, LaunchRecord]) -> list[planner.PendingView]:
    return [planner.PendingView(lid, p.count, p.state, p.at) for lid, p in pending.items()]


class Reconciler:
    def __init__(self, config: FleetConfig, store: Store, holds: Holds, dispatcher: Dispatcher, epoch: EpochWatch,
                 lease: float, launch_batch: Callable[[str], int] = lambda cluster: 0) -> None:
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
                may_launch = self.holds.blocked(cluster, spec.fingerprint) is None
                result = self._commit_plan(cluster, spec, may_launch)
            finally:
                lease.release()
            for launch_id, _ in result.launched:
                self.dispatcher.run(cluster, launch_id, spec.provider)
            if result.killed:
                self.dispatcher.kill(cluster, result.killed, spec.provider)
            if result.drained:
                self.dispatcher.drain(cluster, result.drained, spec.provider)
            first = first or result
            # another reconcile came while we held the lease: go again (unless someone else now does)
            if not self.store.take_again(cluster) or not lease.acquire():
                return first

    def _commit_plan(self, cluster: str, spec: ClusterSpec, may_launch: bool) -> ReconcileResult:
        unknown = self.store.unknown_workers(cluster)

        def plan(view: PlanView) -> tuple[Writes, ReconcileResult]:
            goal = target(spec, view.desired)
            result = ReconcileResult(cluster, desired=goal)
            records: dict[str, HandleRecord] = {}

            def live() -> list[planner.HandleView]:
                records.update(view.live_records())
                return handle_views(records)

            totals = planner.Totals(view.counts.live, view.counts.going)
            p = planner.plan(goal, spec.max_workers, live, pending_views(view.pending), totals=totals,
                             unknown=unknown, may_launch=may_launch)
            result.observed = p.observed
            writes = Writes()
            if p.empty:
                return writes, result
            now = time.time()
            cancelled = []
            for launch_id in p.cancel:
                launch = view.pending[launch_id]
                if launch.state is LaunchState.QUEUED:
                    writes.dropped.append(launch_id)
                else:  # a run task has it: it may still make workers (see Store.claim_launch)
                    writes.pending[launch_id] = LaunchRecord(launch.count, LaunchState.CANCELLED, launch.at,
                                                             launch.claimed)
                cancelled.append({"launch": launch_id, "workers": launch.count})
            drain, kill = [], []
            for handle in p.kill:
                rec = records[handle]
                was = rec.status
                if spec.drain_timeout and was is HandleStatus.RUNNING:
                    # finish its work first: stop consuming, then killed by the sweep
                    rec.status, rec.since, rec.drain_until = HandleStatus.DRAINING, now, now + spec.drain_timeout
                    result.drained.append(handle)
                    drain.append({"handle": handle, "workers": rec.workers, "was": was})
                else:
                    rec.status, rec.since, rec.kill_at = HandleStatus.STOPPING, now, now
                    result.killed.append(handle)
                    kill.append({"handle": handle, "workers": rec.workers, "was": was})
                writes.moves[handle] = (rec, was)
            result.launched = split(p.launch, spec.workers_per_container, self.launch_batch(cluster))
            for launch_id, count in result.launched:
                writes.pending[launch_id] = LaunchRecord(count, LaunchState.QUEUED, now)
            writes.events += [(EventKind.CANCELLED, cancelled), (EventKind.DRAIN, drain), (EventKind.KILL, kill),
                              (EventKind.LAUNCH, [{"launch": lid, "workers": n} for lid, n in result.launched])]
            if p.capped_by_max:
                writes.event(EventKind.AT_MAX, max_workers=spec.max_workers)
            result.cancelled = p.cancel
            return writes, result

        return self.store.commit(cluster, plan)
