"""The sweep: observe a cluster through its provider, then act on what was observed.

Passive step (`observe`): one look at the provider (`Provider.observe`: what it lists, and the
status of every handle Redis knows and every one it does not), compare the answer with the status index in one pass and
write only the statuses that differ (one script call, one event per kind), clean up the dead, and
adopt live handles Redis does not know once they have waited `orphan_grace` (at once when the
desired number was lost).

Active step (`act`): kill handles that outlived `boot_timeout`, ask the cluster's Celery workers
what they hold (drains, autoscaling), and re-send work that was lost: launches never claimed,
launches whose run task went quiet, kills not confirmed, and cleanup kills that are due. It reads
the records of the handles it may act on only (initializing, draining and stopping ones; every
handle of a cluster with `queues`): a steady sweep of running handles reads no record at all.

Contract: at most one sweep per cluster at a time (a lease); a sweep that finds another at work
still asks for a reconcile; a provider error skips the passive step's writes, never the active
step; and every step is idempotent, so a lost or repeated sweep costs nothing but time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from fleet.config import ClusterSpec, FleetConfig
from fleet.control.dispatcher import Dispatcher, kill_by_pool
from fleet.control.draining import CeleryWatch
from fleet.control.epoch import EpochWatch
from fleet.control.pool import ProviderPool
from fleet.errors import ProviderError, ProviderTimeout, RateLimited
from fleet.holds import Holds
from fleet.lease import Lease
from fleet.model import GOING, ClusterState, EventKind, HandleStatus, LaunchState
from fleet.planners.lifetimes import expired
from fleet.provider import Interruption, WorkerStatus
from fleet.retire import declared_ttl
from fleet.store import SERIES_EVERY, StatusResult, Store, SweepView

log = logging.getLogger(__name__)

#: A queued launch whose run task has not claimed it after this long gets its task sent again.
RESEND_QUEUED_AFTER = 30.0
#: Seconds an interrupted worker whose notice gives no deadline (a rebalance recommendation, a
#: cluster without drain_timeout) may drain before it is killed: EC2's two-minute warning.
DEFAULT_NOTICE = 120.0
#: A dead handle's cleanup kill is re-sent this many times (back-off from `kill_retry`, doubling,
#: at most 5 minutes apart: about 1.5 hours in all) before Fleet gives it up with an event.
CLEANUP_TRIES = 20


def kill_backoff(attempts: int, base: float = 10.0) -> float:
    """Seconds before a kill is sent again: `base` doubling per attempt, at most 5 minutes."""
    return min(base * math.pow(2, max(attempts - 1, 0)), 300.0)


#: A provider's answer as the plain string the index compares with (WorkerStatus or its value).
_SEEN: dict[Any, str] = {**{w: w.value for w in WorkerStatus}, **{w.value: w.value for w in WorkerStatus}}
_STOPPED = WorkerStatus.STOPPED.value


# differs() and after_observe() run once per handle per sweep: they compare plain strings (the
# statuses are str enums, equal to their values) and build no enum member for an unchanged handle.
def differs(known: HandleStatus, seen: str) -> bool:
    """Whether a provider's answer changes what the index holds: stopped always does (the handle
    leaves, or its kill is confirmed); a live answer for a draining or stopping handle does not
    (Fleet moved it there itself, see lua/status.lua)."""
    if seen == _STOPPED:
        return True
    return known not in GOING and known != seen


def after_observe(index: dict[str, HandleStatus], observed: dict[str, str]) -> dict[str, HandleStatus]:
    """The index read before observing, minus the handles just seen stopped (they left Redis, or
    will), with the live statuses just seen. Stale entries are safe: every transition re-checks
    the status atomically."""
    out = {}
    for h, known in index.items():
        s = observed.get(h)
        if s is None:
            out[h] = known
        elif s != _STOPPED:
            out[h] = HandleStatus(s) if differs(known, s) else known
    return out


class Sweeper:
    def __init__(self, config: FleetConfig, store: Store, holds: Holds, pool: ProviderPool, dispatcher: Dispatcher,
                 epoch: EpochWatch, celery: CeleryWatch, lease: float,
                 request_reconcile: Callable[[str], bool]) -> None:
        self.config = config
        self.store = store
        self.holds = holds
        self.pool = pool
        self.dispatcher = dispatcher
        self.epoch = epoch
        self.celery = celery
        self.lease = lease
        self.request_reconcile = request_reconcile
        self._sampled: dict[str, float] = {}  # cluster -> when this process last sampled its workers

    def sweep_cluster(self, cluster: str) -> dict[str, Any]:
        """Observe the cluster once, act on it, and ask for a reconcile."""
        spec = self.config.spec(cluster)
        self.epoch.check()
        retired = cluster in self.config.retired
        if retired and self.store.declared(cluster):
            # another process's config declares it again: this one, on an older config, stands down
            return {"cluster": cluster, "retired": "declared elsewhere"}
        if not retired:
            self.store.declare([cluster], declared_ttl(self.config))
        elif not self._retiring(cluster):
            return {"cluster": cluster, "retired": "gone"}
        # A lease: a sweep whose worker died holds up the next ones for `self.lease` at most.
        lease = Lease(self.store.r, self.store.of(cluster).sweeping, self.lease)
        if not lease.acquire():
            # another sweep of this cluster is at work; the reconcile this sweep would ask for is
            # asked for all the same, so a sweep stuck in a provider call never delays one
            self.request_reconcile(cluster)
            return {"cluster": cluster, "skipped": True}
        try:
            now = self.store.now()
            if now - self._sampled.get(cluster, 0.0) >= SERIES_EVERY:  # one round trip per 30 s
                self._sampled[cluster] = now
                self.store.sample(cluster, now)
            view = self.store.sweep_view(cluster)
            index = view.index
            try:
                report, index = self.observe(cluster, spec, view)
            except ProviderError as exc:
                report = self._failed(cluster, exc)
            report.update(self.act(cluster, spec, self.acted_on(cluster, spec, view, index), self.store.now()))
        finally:
            lease.release()
        if retired and not self._retiring(cluster):
            return {**report, "retired": "gone"}
        self.request_reconcile(cluster)
        return report

    def _retiring(self, cluster: str) -> bool:
        """A retired cluster (`fleet.retire`): say once that it is being retired; once it has
        nothing left (no handle, launch or remains to kill), forget it. True while it has."""
        k = self.store.of(cluster)
        if self.store.has_state(cluster):
            if self.store.r.set(k.retiring, "1", nx=True):
                self.store.event(cluster, EventKind.RETIRING, workers=self.store.summary(cluster).counts.live)
            return True
        if self.store.leftovers(cluster):  # also keys a status read or a late task wrote since
            log.info("retired cluster %s has nothing left: its keys leave Redis", cluster)
            self.store.forget(cluster)
        return False

    # -- the passive step --------------------------------------------------------------------
    def observe(self, cluster: str, spec: ClusterSpec,
                view: SweepView) -> tuple[dict[str, Any], dict[str, HandleStatus]]:
        """Per pool: list, ask statuses, take in interruptions; then mark the interrupted, write
        the statuses that changed, clean up the dead, adopt what waited long enough. Returns the
        report and the index as just observed. A pool whose provider fails is skipped (with its
        event); when every pool fails, the first error is raised."""
        first = spec.pool_list[0].name
        known = view.index
        observed: dict[str, str] = {}
        unknown: dict[str, int] = {}
        listed_by: dict[str, str] = {}
        revisions: dict[str, str] = {}
        interrupted: dict[str, tuple[str, float | None]] = {}
        notices: dict[str, list[Interruption]] = {}
        failures: list[tuple[str, ProviderError]] = []
        declared = [p.name for p in spec.pool_list]
        pools = list(dict.fromkeys(declared + sorted(set(view.pools.values()))))
        for pool in pools:
            # a cluster that declares pools asks about its handles recorded without one (from
            # before it had pools) with pool "": those resources carry no pool tag
            if not spec.pools and not view.pools:
                mine = known  # the one pool "" holds every handle: no copy of the index
            elif spec.pools:
                mine = {h: s for h, s in known.items() if view.pools.get(h, "") == pool}
            else:
                mine = view.in_pool(pool, first)
            if pool not in declared and (not mine or self.pool.definition(cluster, pool) is None):
                if mine:
                    log.warning("%d handle(s) of %s are in pool %r, which the config no longer has and Redis does "
                                "not describe: not swept", len(mine), cluster, pool)
                continue
            ref, provider = self.pool.cluster(cluster, pool), self.pool.of(cluster, pool)
            try:
                seen = provider.observe(ref, list(mine))  # one call: the listing and every status
            except ProviderError as exc:
                failures.append((pool, exc))
                continue
            try:
                notices[pool] = provider.interruptions(ref)
            except ProviderError as exc:  # the optional signal failed: the statuses still count
                log.warning("cannot read the interruption notices of %s pool %r: %s", cluster, pool, exc)
                notices[pool] = []
            current = spec.revision(pool)  # a provider that cannot tell a revision: taken for this one
            for h, w in (seen.listed or {}).items():
                if h not in known and h not in unknown:
                    unknown[h], listed_by[h] = int(w), pool
                    revisions[h] = seen.revisions.get(h) or current
            raw: dict[str, Any] = seen.status
            for h in list(mine) + [h for h, p in listed_by.items() if p == pool]:
                st = _SEEN.get(raw.get(h))
                if st is None:
                    log.warning("provider %s gave no status for %s; skipped", provider.name, h)
                    continue
                observed[h] = st
            interrupted.update({h: (str(c), None) for h, c in seen.interrupted.items()})
            for n in notices[pool]:
                interrupted.setdefault(n.handle, (str(n.cause), n.deadline))
        if spec.pools:
            self._poolless(cluster, known, view, observed, failures)
        if failures and len(failures) >= len(declared):
            raise failures[0][1]
        for pool, error in failures:
            self._failed(cluster, error, pool)
        moved = self._interrupted(cluster, spec, {h: v for h, v in interrupted.items() if h in known})
        for pool, batch in notices.items():
            self._acknowledge(cluster, pool, batch)
        applied = self._apply(cluster, spec, known, observed)
        live_unknown = {h: w for h, w in unknown.items() if observed.get(h, "stopped") != "stopped"}
        now = self.store.now()
        first_seen = self.store.track_unknown(cluster, live_unknown, now, listed_by)
        lost_desired = view.desired is None
        # a launch in flight may be what made them: wait for it (or for launch_timeout) first
        timeout = self.config.fleet.launch_timeout
        in_flight = any(p.state is LaunchState.IN_FLIGHT and now - (p.claimed or now) < timeout
                        for p in view.pending.values())
        due = {h: (w, observed[h]) for h, w in live_unknown.items()
               if lost_desired or (not in_flight and now - first_seen[h] >= self.config.fleet.orphan_grace)}
        adopted = self.store.adopt(cluster, due, set_desired=lost_desired and bool(known or due),
                                   pools=listed_by, revs=revisions) if due else 0
        if lost_desired and not due and known:
            self.store.adopt(cluster, {}, set_desired=True)
        index = after_observe(known, observed)
        index.update({h: HandleStatus.DRAINING for h in moved if h in index})
        return {"cluster": cluster, "handles": len(known), "pruned": applied.pruned, "changed": applied.changed,
                "adopted": adopted, "unknown": len(live_unknown) - len(due), "interrupted": len(moved),
                **({"failed_pools": [p for p, _ in failures]} if failures else {})}, index

    def _poolless(self, cluster: str, known: dict[str, HandleStatus], view: SweepView, observed: dict[str, str],
                  failures: list[tuple[str, ProviderError]]) -> None:
        """The statuses of the handles of a cluster that declares pools but recorded them without
        one (launched before it had pools): asked of the first pool's provider without a pool, so
        that the pool filter does not hide them. They stay the first pool's for everything else."""
        poolless = [h for h in known if h not in view.pools]
        if not poolless:
            return
        try:
            raw = self.pool.of(cluster).worker_status(self.pool.cluster(cluster), poolless)
        except ProviderError as exc:
            failures.append(("", exc))
            return
        observed.update({h: s for h in poolless if (s := _SEEN.get(raw.get(h))) is not None})

    def _failed(self, cluster: str, exc: ProviderError, pool: str = "") -> dict[str, Any]:
        """A provider error of a sweep (or of one pool's part of it): its event, and the report."""
        where = {"pool": pool} if pool else {}
        if isinstance(exc, RateLimited):
            return {"cluster": cluster, "rate_limited": True}  # the hold is shared; try next sweep
        if isinstance(exc, ProviderTimeout):
            if not exc.held:  # the first call that hung says so; the held ones after it are quiet
                self.store.event(cluster, EventKind.TIMEOUT, op="sweep", message=str(exc)[:300], **where)
            return {"cluster": cluster, "timeout": True}
        self.store.event(cluster, EventKind.SWEEP_FAILED, error=type(exc).__name__, message=str(exc)[:300], **where)
        return {"cluster": cluster, "failed": type(exc).__name__}

    def _interrupted(self, cluster: str, spec: ClusterSpec, notices: dict[str, tuple[str, float | None]]) -> list[str]:
        """Mark the handles the cloud reclaims (live ones start draining until the cloud takes
        them) and ask for their replacements at once."""
        if not notices:
            return []
        moved = self.store.interrupt(cluster, notices, spec.drain_timeout or DEFAULT_NOTICE)
        if moved:
            if spec.queues:
                self.dispatcher.drain(cluster, moved, spec.pool_list[0].provider)
            self.request_reconcile(cluster)
        return moved

    def _acknowledge(self, cluster: str, pool: str, notices: list[Interruption]) -> None:
        """Forget notices once recorded; a failure only means they come again (and change nothing)."""
        if not notices:
            return
        try:
            self.pool.of(cluster, pool).acknowledge(self.pool.cluster(cluster, pool), notices)
        except ProviderError as exc:
            log.warning("cannot acknowledge %d interruption notice(s) of %s: %s", len(notices), cluster, exc)

    def _apply(self, cluster: str, spec: ClusterSpec, known: dict[str, HandleStatus],
               observed: dict[str, str], pool: str | None = None) -> StatusResult:
        """Write the observed statuses that differ from the index; clean up the dead."""
        changed = {h: s for h, s in observed.items() if h in known and differs(known[h], s)}
        grace = max(self.pool.of(cluster, p.name).grace for p in spec.pool_list) if pool is None \
            else self.pool.of(cluster, pool).grace
        applied = self.store.apply_status(cluster, changed, grace, self.config.fleet.kill_retry)
        if applied.died_booting:
            self._boot_failed(cluster, spec, applied.died_booting, "stopped before it ran")
        if applied.dead:
            # Dead is not necessarily gone (an exited container, a stopped VM): clean up, idempotently.
            kill_by_pool(self.dispatcher, spec, cluster, applied.dead)
        if applied.gone:
            self.holds.worker_went_away(cluster, [p.name for p in spec.pool_list])
        return applied

    def _boot_failed(self, cluster: str, spec: ClusterSpec, failed: dict[str, str], how: str) -> None:
        """New workers (of a current revision) that never ran stop a rollout under way: no
        further outdated worker is retired until an operator resumes it (`fleet rollout`)."""
        new = sorted(h for h, rev in failed.items() if rev and rev in spec.revisions)
        if not new or not self.store.summary(cluster).counts.outdated(spec.revisions):
            return
        reason = f"new worker {new[0]} {how}" + (f" (and {len(new) - 1} more)" if len(new) > 1 else "")
        if self.store.hold_rollout(cluster, "stopped", reason):
            self.store.event(cluster, EventKind.ROLLOUT_STOPPED, state="stopped", reason=reason)

    def check_initializing(self, cluster: str) -> int:
        """Part of the passive step, for a follow-up after a launch: ask the status of the
        initializing handles only and write what changed (no listing, no adoption, no lease:
        the status script re-checks every record, so a sweep at the same time is harmless).
        Returns how many are still initializing. A provider error is left to the next sweep."""
        spec = self.config.spec(cluster)
        view = self.store.sweep_view(cluster)
        first = spec.pool_list[0].name
        left = 0
        for pool in dict.fromkeys([p.name for p in spec.pool_list] + [""] + list(view.pools.values())):
            # with pools, handles recorded without one are asked with pool "" (see _poolless)
            mine = {h: s for h, s in view.index.items() if view.pools.get(h, "") == pool} if spec.pools \
                else view.in_pool(pool, first)
            known: dict[str, HandleStatus] = {h: s for h, s in mine.items() if s is HandleStatus.INITIALIZING}
            if not known or (pool and self.pool.definition(cluster, pool) is None):
                continue
            try:
                raw = self.pool.of(cluster, pool).worker_status(self.pool.cluster(cluster, pool), list(known))
            except ProviderError as exc:
                log.info("follow-up check of %s skipped: %s", cluster, exc)
                left += len(known)
                continue
            observed = {h: WorkerStatus(s).value for h, s in raw.items() if h in known}
            applied = self._apply(cluster, spec, known, observed, pool)
            if applied.gone:
                self.request_reconcile(cluster)  # one died at boot: its replacement need not wait
            left += sum(1 for s in observed.values() if s == WorkerStatus.INITIALIZING.value) + len(known) \
                - len(observed)
        return left

    def acted_on(self, cluster: str, spec: ClusterSpec, view: SweepView,
                 index: dict[str, HandleStatus]) -> ClusterState:
        """The state the active step works on: the records of the handles it may act on (every
        handle's for a cluster with queues, whose workers are asked what they hold)."""
        wanted = list(index) if spec.queues or spec.max_lifetime else [
            h for h, s in index.items() if s is not HandleStatus.RUNNING]
        records = self.store.records(cluster, wanted)
        for h, rec in records.items():
            if rec.status not in GOING and h in index:
                rec.status = index[h]  # as just observed (the write may have been skipped: grace)
        return ClusterState(view.desired, records, view.pending)

    # -- the active step ---------------------------------------------------------------------
    def act(self, cluster: str, spec: ClusterSpec, st: ClusterState, now: float) -> dict[str, Any]:
        """Boot timeouts, the Celery workers (drains, autoscaling), and lost work re-sent. `st`
        holds the records `acted_on` reads."""
        self._boot_timeouts(cluster, spec, st, now)
        if spec.max_lifetime:
            self._lifetimes(cluster, spec, st, now)
        if not spec.queues:
            self._drain_deadlines(cluster, spec, st, now)
        report = self.celery.watch(cluster, spec, st, now) if spec.queues else {}
        self._resend(cluster, spec, st, now)
        return report

    def _boot_timeouts(self, cluster: str, spec: ClusterSpec, st: ClusterState, now: float) -> None:
        late = [h for h, r in st.handles.items()
                if r.status is HandleStatus.INITIALIZING and now - r.since > spec.boot_timeout]
        moved = self.store.transition(cluster, late, [HandleStatus.INITIALIZING], HandleStatus.STOPPING,
                                      EventKind.BOOT_TIMEOUT) if late else []
        if moved:
            kill_by_pool(self.dispatcher, spec, cluster, {h: st.handles[h].pool for h in moved})
            self._boot_failed(cluster, spec, {h: st.handles[h].rev for h in moved},
                              f"did not run within boot_timeout ({spec.boot_timeout:g} s)")

    def _lifetimes(self, cluster: str, spec: ClusterSpec, st: ClusterState, now: float) -> None:
        """Workers older than max_lifetime become outdated: the rollout replaces them (new ones
        first, then they drain), as after a change of the spec."""
        assert spec.max_lifetime is not None
        old = expired(st.handles, spec.max_lifetime, now)
        if old and self.store.expire(cluster, old):
            self.request_reconcile(cluster)

    def _drain_deadlines(self, cluster: str, spec: ClusterSpec, st: ClusterState, now: float) -> None:
        """Without `queues` nobody asks a draining worker what it holds (an interrupted one, in
        a cluster that has none): it is killed at its deadline, if the cloud did not take it first."""
        late = [h for h, r in st.handles.items()
                if r.status is HandleStatus.DRAINING and now >= float(r.drain_until or 0)]
        moved = self.store.transition(cluster, late, [HandleStatus.DRAINING], HandleStatus.STOPPING,
                                      EventKind.DRAIN_TIMEOUT) if late else []
        if moved:
            kill_by_pool(self.dispatcher, spec, cluster, {h: st.handles[h].pool for h in moved})

    def _abandoned(self, cluster: str, st: ClusterState, now: float) -> set[str]:
        """Claimed launches whose run task is gone: claimed more than two lease lifetimes ago, with
        no lease held and no retry pending (Launcher.retrying). Its task died or failed (a Redis
        failover under it: the task's answer and its ack were lost), so it is sent again now, not
        after `launch_timeout`. A second run is safe: `run_workers` is idempotent by launch id and
        the launch's lease keeps two apart."""
        old = [launch_id for launch_id, p in st.pending.items()
               if p.state is not LaunchState.QUEUED and p.claimed and now - p.claimed > 2 * self.lease]
        if not old:
            return set()
        keys = self.store.of(cluster)
        pipe = self.store.r.pipeline(transaction=False)
        for launch_id in old:
            pipe.exists(keys.launch(launch_id), keys.launch_retry(launch_id))
        return {launch_id for launch_id, held in zip(old, pipe.execute(), strict=True) if not held}

    def _resend(self, cluster: str, spec: ClusterSpec, st: ClusterState, now: float) -> None:
        timeout = self.config.fleet.launch_timeout
        abandoned = self._abandoned(cluster, st, now)
        # after a failover or a loss of data, a queued launch's run message may be gone with it
        queued_after = min(RESEND_QUEUED_AFTER, timeout)
        if any(p.state is LaunchState.QUEUED and now - (p.at or now) > 2 * self.lease for p in st.pending.values()) \
                and self.holds.recovering():
            queued_after = 2 * self.lease
        for launch_id, p in st.pending.items():
            age = now - (p.claimed or p.at or now)
            if (p.state is LaunchState.QUEUED and age > queued_after) or (
                    p.state is not LaunchState.QUEUED and p.claimed and (age > timeout or launch_id in abandoned)):
                self.dispatcher.run(cluster, launch_id, spec.pool_or_first(p.pool).provider)
        retry = [h for h, r in st.handles.items()
                 if r.status is HandleStatus.STOPPING
                 and now - (r.kill_at if r.kill_at is not None else r.since) > kill_backoff(r.kills,
                                                                                            self.config.fleet.kill_retry)]
        if retry:
            kill_by_pool(self.dispatcher, spec, cluster, {h: st.handles[h].pool for h in retry})
        # dead handles whose cleanup kill failed (an exited container, a stopped VM left behind)
        cleanup = self.store.cleanup_due(cluster, self.config.fleet.kill_retry, CLEANUP_TRIES)
        if cleanup:
            kill_by_pool(self.dispatcher, spec, cluster, cleanup)
