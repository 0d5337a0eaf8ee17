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
* Pools: the planner decides how many to launch, `fleet.allocation` where (the best pools that
  may launch; a held pool's share goes to the next at once, with a `fallback` event), and, for
  a cluster with `rebalance`, how many to launch in a better pool and retire from worse ones.
* Interrupted workers (draining until the cloud takes them) still count against max_workers,
  but their replacements may go above it by as many: never above max_workers + interrupted.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleet import allocation, planner
from fleet.config import ClusterSpec, FleetConfig
from fleet.control.dispatcher import Dispatcher, kill_by_pool
from fleet.control.epoch import EpochWatch
from fleet.counters import fallback_field
from fleet.holds import Holds
from fleet.lease import Lease
from fleet.model import Counts, Desired, EventKind, HandleRecord, HandleStatus, LaunchRecord, LaunchState
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


def handle_views(records: dict[str, HandleRecord], spec: ClusterSpec | None = None,
                 current: frozenset[str] = frozenset(), now: float = 0.0) -> list[planner.HandleView]:
    first = spec.pool_list[0].name if spec else ""
    idle = spec.idle_timeout if spec else None
    return [planner.HandleView(h, r.workers, r.status, r.since, r.busy, r.hold,
                               spec.rank(r.pool or first) if spec else 0,
                               bool(current) and bool(r.rev) and r.rev not in current,
                               bool(idle) and r.idle_since is not None and now - r.idle_since >= (idle or 0))
            for h, r in records.items()]


def outdated_retirees(records: dict[str, HandleRecord], spec: ClusterSpec, current: frozenset[str],
                      most: int) -> list[str]:
    """Running outdated handles to retire, of `most` workers at most: idle ones first, then the
    oldest. Never a held one; never a busy one where it would be killed without a drain."""
    spare_busy = bool(spec.queues) and not spec.drain_timeout
    old = sorted(((h, r) for h, r in records.items()
                  if r.status is HandleStatus.RUNNING and r.rev and r.rev not in current and not r.hold
                  and not (spare_busy and r.busy)),
                 key=lambda hr: (hr[1].busy > 0, hr[1].busy, hr[1].born or 0.0))
    return up_to(old, most)


def up_to(ranked: list[tuple[str, HandleRecord]], most: int) -> list[str]:
    """The handles of `ranked` (best first) taken in order while their workers fit in `most`:
    a retirement never takes more than it may (never below the desired number)."""
    chosen, total = [], 0
    for h, r in ranked:
        if total + r.workers <= most:
            chosen.append(h)
            total += r.workers
    return chosen


def pending_views(pending: dict[str, LaunchRecord]) -> list[planner.PendingView]:
    return [planner.PendingView(lid, p.count, p.state, p.at) for lid, p in pending.items()]


def without_held(pools: list[allocation.PoolView], records: dict[str, HandleRecord],
                 spec: ClusterSpec) -> list[allocation.PoolView]:
    """The pools with their held handles' workers left out of `live` and `running`: a rebalance
    never moves a held handle, so it must not count on moving it."""
    first = spec.pool_list[0].name
    held: dict[str, tuple[int, int]] = {}
    for r in records.values():
        if r.hold and r.status in (HandleStatus.INITIALIZING, HandleStatus.RUNNING):
            live, running = held.get(r.pool or first, (0, 0))
            held[r.pool or first] = (live + r.workers, running + r.workers * (r.status is HandleStatus.RUNNING))
    return [dataclasses.replace(p, live=p.live - held[p.name][0], running=p.running - held[p.name][1])
            if p.name in held else p for p in pools]


def pool_views(spec: ClusterSpec, counts: Counts, pending: dict[str, LaunchRecord],
               blocked: dict[str, str | None]) -> list[allocation.PoolView]:
    """Every pool of the cluster with what is in it, from the counts and the pending launches."""
    first = spec.pool_list[0].name
    out = []
    for pool in spec.pool_list:
        def of(status: HandleStatus, name: str = pool.name) -> int:
            return counts.in_pool(name, status, first)
        waiting = sum(p.count for p in pending.values() if (p.pool or first) == pool.name)
        live = of(HandleStatus.INITIALIZING) + of(HandleStatus.RUNNING)
        out.append(allocation.PoolView(
            pool.name, spec.rank(pool.name), pool.weight, pool.max_workers,
            committed=live + of(HandleStatus.DRAINING) + of(HandleStatus.STOPPING) + waiting,
            live=live, running=of(HandleStatus.RUNNING), blocked=blocked.get(pool.name),
            waiting=sum(p.count for p in pending.values()
                        if (p.pool or first) == pool.name and p.state is not LaunchState.CANCELLED)))
    return out


def retirees(records: dict[str, HandleRecord], spec: ClusterSpec, best: int, most: int) -> list[str]:
    """Running handles of pools ranked worse than `best`, idle ones first, then the worst pool,
    then the newest, of `most` workers at most (a rebalance never goes below the desired
    number). Never a held one; never a busy one where it would be killed without a drain (a
    cluster with `queues` and no `drain_timeout`): it waits until it is idle."""
    first = spec.pool_list[0].name
    spare_busy = bool(spec.queues) and not spec.drain_timeout
    worse = sorted(((h, r) for h, r in records.items()
                    if r.status is HandleStatus.RUNNING and not r.hold and spec.rank(r.pool or first) > best
                    and not (spare_busy and r.busy)),
                   key=lambda hr: (hr[1].busy > 0, -spec.rank(hr[1].pool or first), hr[1].busy, -hr[1].since))
    return up_to(worse, most)


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
        unknown = self.store.unknown_workers(cluster)

        def plan(view: PlanView) -> tuple[Writes, ReconcileResult]:
            goal = target(spec, view.desired)
            if view.desired is None:
                # nobody asked for a number, or Redis lost it (a launch in flight may just have
                # recorded its workers): what runs stays until the sweep takes its count for the
                # desired number (Sweeper.observe) or someone asks; min_workers still launches
                goal = min(max(goal, view.counts.live + sum(
                    p.count for p in view.pending.values() if p.state is not LaunchState.CANCELLED)),
                    spec.max_workers)
            result = ReconcileResult(cluster, desired=goal)
            records: dict[str, HandleRecord] = {}
            pools = pool_views(spec, view.counts, view.pending, blocked)
            may_launch = any(p.open for p in pools)
            # interrupted workers are on their way out: their replacements may go above max by as many
            ceiling = spec.max_workers + view.counts.interrupted
            current = spec.revisions
            retired = cluster in self.config.retired  # nothing new for a retired cluster (fleet.retire)
            outdated = 0 if retired else view.counts.outdated(current)
            result.outdated = outdated
            now = self.store.now()
            writes = Writes()
            drain: list[dict[str, Any]] = []
            kill: list[dict[str, Any]] = []

            def retire(handle: str, by: str) -> None:
                rec = records[handle]
                was = rec.status
                if spec.drain_timeout and was is HandleStatus.RUNNING:
                    # finish its work first: stop consuming, then killed by the sweep
                    rec.status, rec.since, rec.drain_until = HandleStatus.DRAINING, now, now + spec.drain_timeout
                    if cluster in self.config.retired:
                        rec.extra["retire"] = 1  # called off if the cluster comes back (fleet.retire)
                    result.drained[handle] = rec.pool
                    drain.append({"handle": handle, "workers": rec.workers, "was": was, **({"by": by} if by else {})})
                else:
                    rec.status, rec.since, rec.kill_at = HandleStatus.STOPPING, now, now
                    result.killed[handle] = rec.pool
                    kill.append({"handle": handle, "workers": rec.workers, "was": was, **({"by": by} if by else {})})
                writes.moves[handle] = (rec, was)

            live_total, going_total = view.counts.live, view.counts.going
            surge = 0
            open_waiting = sum(p.count for p in view.pending.values() if p.state is not LaunchState.CANCELLED)
            if outdated and not retired:
                # a rollout: launch up to max_surge new workers above desired (and above
                # max_workers), retire outdated ones as soon as enough run (never below desired -
                # max_unavailable), idle ones first. Paused or stopped, it freezes: the surge
                # already there stays, nothing more is launched or retired.
                records.update(view.live_records())
                surge_max, unavailable = spec.rollout.surge(goal), spec.rollout.unavailable(goal)
                ceiling += surge_max
                if rollout_held is None:
                    running = view.counts.of(HandleStatus.RUNNING)
                    for handle in outdated_retirees(records, spec, current, max(running - (goal - unavailable), 0)):
                        retire(handle, "rollout")
                moved = sum(records[h].workers for h in writes.moves)
                live_total, going_total = live_total - moved, going_total + moved
                # only outdated workers a rollout may retire call for new ones (not held ones)
                movable = sum(r.workers for h, r in records.items() if h not in writes.moves and not r.hold
                              and r.status in (HandleStatus.INITIALIZING, HandleStatus.RUNNING)
                              and r.rev and r.rev not in current)
                surge = min(surge_max, movable)
                if rollout_held is not None:
                    surge = max(min(surge, live_total + open_waiting - goal), 0)
                if writes.moves:
                    writes.event(EventKind.ROLLOUT, outdated=outdated - moved, retired=len(writes.moves),
                                 surge=surge)
            elif spec.rebalance and not retired:
                waiting = sum(p.count for p in view.pending.values())
                room = max(ceiling - live_total - going_total - waiting - unknown, 0)
                above = live_total + open_waiting - goal
                step = allocation.rebalance(pools, goal, view.counts.of(HandleStatus.RUNNING),
                                            spec.rebalance.max_in_flight, room, above)
                if step.surge or step.retire:
                    # a rebalance under way: its moves need the records (held handles stay put)
                    records.update(view.live_records())
                    held = sum(r.workers for r in records.values() if r.hold)
                    views = without_held(pools, records, spec) if held else pools
                    step = allocation.rebalance(views, goal, view.counts.of(HandleStatus.RUNNING),
                                                spec.rebalance.max_in_flight, room, above)
                    for handle in retirees(records, spec, step.best, step.retire):
                        retire(handle, "rebalance")
                    moved = sum(records[h].workers for h in writes.moves)
                    live_total, going_total = live_total - moved, going_total + moved
                    after = pool_views(spec, _after(view.counts, records, writes), view.pending, blocked)
                    views = without_held(after, records, spec) if held else after
                    step = allocation.rebalance(views, goal, view.counts.of(HandleStatus.RUNNING) - moved,
                                                spec.rebalance.max_in_flight, room, live_total + open_waiting - goal)
                surge = step.surge

            def live() -> list[planner.HandleView]:
                if not records:
                    records.update(view.live_records())
                return handle_views({h: r for h, r in records.items() if h not in writes.moves}, spec, current, now)

            totals = planner.Totals(live_total, going_total)
            p = planner.plan(goal + surge, ceiling, live, pending_views(view.pending), totals=totals,
                             unknown=unknown, may_launch=may_launch)
            result.observed = p.observed
            if p.empty and not writes.moves:
                return writes, result
            cancelled = []
            for launch_id in p.cancel:
                launch = view.pending[launch_id]
                if launch.state is LaunchState.QUEUED:
                    writes.dropped.append(launch_id)
                else:  # a run task has it: it may still make workers (see Store.claim_launch)
                    writes.pending[launch_id] = LaunchRecord(launch.count, LaunchState.CANCELLED, launch.at,
                                                             launch.claimed, launch.pool)
                cancelled.append({"launch": launch_id, "workers": launch.count})
            for handle in p.kill:
                retire(handle, "")
            where = allocation.allocate(p.launch, pools)
            for pool_name, n in where.counts.items():
                for launch_id, count in split(n, spec.workers_per_container, self.launch_batch(cluster, pool_name)):
                    result.launched.append((launch_id, count, pool_name))
                    writes.pending[launch_id] = LaunchRecord(count, LaunchState.QUEUED, now, pool=pool_name,
                                                             rev=spec.revision(pool_name))
            launches = [{"launch": lid, "workers": n, **({"pool": pool} if pool else {})}
                        for lid, n, pool in result.launched]
            writes.events += [(EventKind.CANCELLED, cancelled), (EventKind.DRAIN, drain), (EventKind.KILL, kill),
                              (EventKind.LAUNCH, launches)]
            if where.skipped and where.counts:
                writes.event(EventKind.FALLBACK, to=",".join(where.counts), workers=where.total,
                             skipped=";".join(f"{name}: {why}" for name, why in where.skipped))
                for name, why in where.skipped:
                    writes.counters[fallback_field(cluster, name, why)] = where.total
            if surge and where.counts and spec.rebalance and not outdated:
                writes.event(EventKind.REBALANCE, surge=surge, retired=sum(1 for e in drain + kill if e.get("by")))
            if p.capped_by_max and not surge:  # a surge waiting for room is no news
                writes.event(EventKind.AT_MAX, max_workers=spec.max_workers)
            result.cancelled = p.cancel
            return writes, result

        return self.store.commit(cluster, plan)


def _after(counts: Counts, records: dict[str, HandleRecord], writes: Writes) -> Counts:
    """`counts` with the moves of `writes` applied (by pool): what the pools hold once they commit."""
    pools = {name: dict(by) for name, by in counts.pools.items()}
    workers = dict(counts.workers)
    for rec, old in writes.moves.values():
        for status, sign in ((old, -1), (rec.status, 1)):
            workers[status] = workers.get(status, 0) + sign * rec.workers
            if rec.pool:
                by = pools.setdefault(rec.pool, {})
                by[status] = by.get(status, 0) + sign * rec.workers
    return Counts(workers, counts.handles, counts.whole, pools, counts.interrupted)
