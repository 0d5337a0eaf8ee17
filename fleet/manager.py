"""The managed layer: `set_worker_number` / `get_worker_numbers` of the seed, and the reconcile,
launch, kill and sweep steps behind them. Level-triggered: every step re-reads Redis and moves the
cluster towards its desired number, so a lost message or a dead worker costs one sweep, not state.

The steps that send work elsewhere call a `Dispatcher`, which `tasks/` implements with Celery
messages (and tests may implement however they like); the control plane's own Celery app is not
known here. Only the autoscaling and drain steps talk Celery, to the *cluster's* broker, through
`fleet.probe`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Protocol, Sequence

import redis
from redis.exceptions import WatchError

from fleet import autoscale, planner
from fleet.config import ClusterSpec, FleetConfig, shorten
from fleet.errors import (
    CapacityError,
    InvalidRequest,
    PermanentProviderError,
    ProviderError,
    ProviderTimeout,
    QuotaExceeded,
    RateLimited,
    ScaleRefused,
    TransientProviderError,
)
from fleet.guard import Guard
from fleet.lease import Lease, lease_ttl
from fleet.probe import Probe
from fleet.provider import Cluster, Provider, ProviderContext, WorkerStatus
from fleet.registry import provider_class
from fleet.state import ClusterState, State
from fleet.wrappers import GuardedProvider

log = logging.getLogger(__name__)

#: Workers per launch (and so per run task); larger launches are split so several control-plane
#: workers and provider batches can work in parallel. Rounded down to whole containers.
LAUNCH_CHUNK = 256
#: A queued launch whose run task has not claimed it after this long gets its task sent again.
RESEND_QUEUED_AFTER = 30.0
#: A dead handle's cleanup kill is re-sent this many times (back-off from `kill_retry`, doubling,
#: at most 5 minutes apart: about 1.5 hours in all) before Fleet gives it up with an event.
CLEANUP_TRIES = 20


class Dispatcher(Protocol):
    """How the managed layer asks for work to be done elsewhere (Celery in production)."""

    def run(self, cluster: str, launch_id: str, provider: str) -> None: ...
    def kill(self, cluster: str, handles: Sequence[str], provider: str) -> None: ...
    def reconcile(self, cluster: str) -> None: ...
    def drain(self, cluster: str, handles: Sequence[str]) -> None: ...


class LockBusy(Exception):
    """Another control-plane worker holds this cluster's lock; try again shortly."""


@dataclass
class ReconcileResult:
    cluster: str
    launched: list[tuple[str, int]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    drained: list[str] = field(default_factory=list)
    desired: int | None = None
    observed: int = 0


def validate_workers(value: Any) -> int:
    """A worker number from the outside world: a non-negative int, nothing else."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"workers must be an integer, got {shorten(value)} ({type(value).__name__})")
    if value < 0:
        raise ScaleRefused(f"workers must be >= 0, got {shorten(value)}")
    return value


class Manager:
    """One fleet's managed layer: config + Redis state + providers + a dispatcher."""

    def __init__(self, config: FleetConfig, client: redis.Redis, dispatcher: Dispatcher, url: str = "") -> None:
        self.config = config
        self.redis = client
        self.state = State(client, config.fleet.id)
        self.guard = Guard(client, url or _url_of(client), config.fleet.id)
        self.dispatcher = dispatcher
        self._providers: dict[str, Provider] = {}
        self._providers_lock = threading.Lock()
        self._epoch: bytes | None = None
        self._epoch_lock = threading.Lock()
        self._probes: dict[str, Probe] = {}
        self.url = url or _url_of(client)
        #: lifetime of the reconcile, sweep and launch leases and of the "reconcile queued" marker:
        #: a worker that dies holding one stalls its cluster for at most this long
        self.lease = lease_ttl(config.fleet.sweep_interval)

    def check_epoch(self) -> None:
        """Notice when Redis lost its data under a running control plane (a restart without
        persistence): launches that were in flight then are invisible until their run tasks
        record them or the sweep adopts them, so every worker holds launches off for
        `launch_timeout`. A control plane that starts on an empty Redis holds nothing."""
        key = f"fleet:{self.config.fleet.id}:epoch"
        current = self.redis.get(key)
        if current is None:
            # whoever's SET NX wins writes the epoch; everybody then reads the same value
            self.redis.set(key, uuid.uuid4().hex, nx=True)
            current = self.redis.get(key)
        with self._epoch_lock:
            # Only a change from an epoch this process already saw means lost data: a thread that
            # merely found the key missing at the first start raced another thread writing it.
            if self._epoch is not None and current is not None and current != self._epoch:
                self.guard.start_recovery(self.config.fleet.launch_timeout)
            self._epoch = current

    # -- helpers ---------------------------------------------------------------------------
    def provider(self, name: str) -> Provider:
        """The named provider, wrapped so that limits and holds are shared through Redis."""
        with self._providers_lock:
            if name not in self._providers:
                context = ProviderContext(self.config.fleet.id, self.config.state_dir)
                inner = provider_class(name)(context)
                self._providers[name] = GuardedProvider(inner, name, self.guard, self.config.limits(name), self.lease)
            return self._providers[name]

    def _parts(self, cluster: str) -> tuple[ClusterSpec, Cluster, Provider]:
        spec = self.config.spec(cluster)
        return spec, self.config.cluster(cluster), self.provider(spec.provider)

    def target(self, spec: ClusterSpec, st: ClusterState) -> int:
        """The desired number, within the cluster's limits as the config says *now*."""
        n = st.desired.n if st.desired else spec.min_workers
        return min(max(n, spec.min_workers), spec.max_workers)

    def request_reconcile(self, cluster: str) -> bool:
        """Ask for a reconcile unless one is already queued: bursts coalesce into few tasks."""
        if self.redis.set(self.state.key(cluster, "queued"), "1", nx=True, ex=int(math.ceil(self.lease))):
            self.dispatcher.reconcile(cluster)
            return True
        return False

    def blocked(self, cluster: str, spec: ClusterSpec) -> str | None:
        """Why the cluster may not launch now (at quota, a permanent error), or None."""
        error = self.guard.error(cluster)
        if error and error.get("fingerprint") != fingerprint(spec):
            self.guard.clear(cluster)  # the config changed since: try again
            error = None
        if error:
            return f"error: {error['message']}"
        if self.guard.at_quota(cluster):
            return "at quota"
        if self.guard.no_capacity(cluster):
            return "no capacity"
        if self.guard.recovering():
            return "recovering from a loss of Redis data"
        return None

    # -- the seed's public pair ------------------------------------------------------------
    def set_worker_number(self, cluster: Any, workers: Any) -> dict[str, Any]:
        """Validate and store the desired number, then ask for a reconcile. Bad input raises a
        typed `InvalidRequest` and changes nothing."""
        spec = self.config.spec(cluster)
        n = validate_workers(workers)
        if not spec.min_workers <= n <= spec.max_workers:
            raise ScaleRefused(
                f"cluster {cluster!r} takes between {spec.min_workers} and {spec.max_workers} workers, got {shorten(n)}"
            )
        # With autoscaling on, a manual number is also a floor the autoscaler keeps (0 clears it).
        # desired number and "reconcile queued" marker in one round trip (as request_reconcile)
        version, flagged = self.state.set_desired_and_flag(cluster, n, self.state.key(cluster, "queued"),
                                                           floor=n if spec.autoscale else None,
                                                           flag_ttl=int(math.ceil(self.lease)))
        if flagged:
            self.dispatcher.reconcile(cluster)
        return {"cluster": cluster, "desired": n, "version": version}

    def get_worker_numbers(self, cluster: Any) -> dict[str, Any]:
        """Desired, initializing, running, stopping and pending workers of a cluster (from Redis),
        and why it cannot launch if it cannot (at quota, rate-limited, a permanent error)."""
        spec = self.config.spec(cluster)
        summary = self.state.read(cluster).summary(cluster)
        error = self.guard.error(cluster)
        summary.update(
            provider=spec.provider, min_workers=spec.min_workers, max_workers=spec.max_workers,
            at_quota=round(self.guard.at_quota(cluster), 1),
            no_capacity=round(self.guard.no_capacity(cluster), 1),
            recovering=round(self.guard.recovering(), 1),
            rate_limited=round(self.guard.provider_hold(spec.provider), 1),
            unresponsive=round(self.guard.unresponsive(cluster), 1),
            error=error["message"] if error else None,
            unknown=self.state.unknown_workers(cluster),
            cleanup=self.state.cleanup_count(cluster),
        )
        return summary

    def forgotten_clusters(self) -> dict[str, int]:
        """Clusters with handles in Redis (live, or dead with remains to kill) that the config no
        longer declares -> handle count.
        Nothing sweeps or kills them (their provider options left with the config): an operator
        scales a cluster to 0 before removing it, or puts it back to do so."""
        return {c: n for c, n in self.state.tracked_clusters().items() if c not in self.config.clusters}

    def clear(self, cluster: Any) -> dict[str, Any]:
        """An operator's reset of a cluster's permanent error and quota hold."""
        self.config.spec(cluster)
        cleared = self.guard.clear(cluster)
        if cleared:
            self.state.event(cluster, "cleared")
        self.request_reconcile(cluster)
        return {"cluster": cluster, "cleared": cleared}

    # -- reconcile -------------------------------------------------------------------------
    def reconcile(self, cluster: str) -> ReconcileResult:
        """Plan and commit one step towards the desired number; then dispatch run/kill tasks.

        Serialised per cluster by a Redis lock; the commit is a WATCH/MULTI transaction over the
        cluster's keys, so a concurrent launch record or sweep makes it re-plan, not double-act.

        Nobody waits for the lock: a reconcile that finds it taken sets the cluster's `again`
        marker and returns, and the holder, after releasing the lock, reconciles once more if the
        marker is set (so a change made while it planned is never missed). Waiting instead held a
        control-plane thread per queued reconcile, which capped scale-request throughput.
        """
        spec = self.config.spec(cluster)
        self.check_epoch()
        self.redis.delete(self.state.key(cluster, "queued"))
        again = self.state.key(cluster, "again")
        lock = Lease(self.redis, self.state.key(cluster, "lock"), self.lease)
        if not lock.acquire():
            self.redis.set(again, "1", ex=int(math.ceil(self.lease)))
            # the holder reads `again` only after its release: if it let go meanwhile, that is us
            if not lock.acquire():
                return ReconcileResult(cluster)
        first: ReconcileResult | None = None
        while True:
            try:
                self.redis.delete(again)  # this pass reads the state after any change it stands for
                result = self._commit_plan(cluster, spec, blocked=self.blocked(cluster, spec) is not None)
            finally:
                lock.release()
            for launch_id, _ in result.launched:
                self.dispatcher.run(cluster, launch_id, spec.provider)
            if result.killed:
                self.dispatcher.kill(cluster, result.killed, spec.provider)
            if result.drained:
                self.dispatcher.drain(cluster, result.drained)
            first = first or result
            # another reconcile came while we held the lock: go again (unless someone else now does)
            if not self.redis.delete(again) or not lock.acquire():
                return first

    def _commit_plan(self, cluster: str, spec: ClusterSpec, blocked: bool) -> ReconcileResult:
        result = ReconcileResult(cluster)
        keys = self.state.keys_of(cluster)
        unknown = self.state.unknown_workers(cluster)
        while True:
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(*keys)
                    st = self.state.read(cluster, client=pipe)
                    target = self.target(spec, st)
                    plan = planner.plan(target, spec.max_workers, st.handle_views(), st.pending_views(),
                                        unknown=unknown, may_launch=not blocked)
                    result.desired, result.observed = target, plan.observed
                    if plan.empty:
                        return result
                    now = time.time()
                    pipe.multi()
                    pending_key, handles_key = keys[2], keys[1]
                    for launch_id in plan.cancel:
                        entry = st.pending[launch_id]
                        if entry["state"] == planner.QUEUED:
                            pipe.hdel(pending_key, launch_id)
                        else:
                            pipe.hset(pending_key, launch_id, _json({**entry, "state": "cancelled"}))
                        self.state._event(pipe, cluster, "cancelled", launch=launch_id, workers=entry["count"])
                    drained: list[str] = []
                    # one HSET for every record and one counter update per event kind, however many
                    records: dict[str, str] = {}
                    events: dict[str, list[dict[str, Any]]] = {"drain": [], "kill": []}
                    for handle in plan.kill:
                        rec = st.handles[handle]
                        if spec.drain_timeout and rec["s"] == planner.RUNNING:
                            # finish its work first: stop consuming, then killed by the sweep
                            drained.append(handle)
                            records[handle] = _json({**rec, "s": "draining", "since": now,
                                                     "drain_until": now + spec.drain_timeout})
                            events["drain"].append({"handle": handle, "workers": rec["w"], "was": rec["s"]})
                            continue
                        records[handle] = _json({**rec, "s": "stopping", "since": now, "kill_at": now})
                        events["kill"].append({"handle": handle, "workers": rec["w"], "was": rec["s"]})
                    if records:
                        pipe.hset(handles_key, mapping=records)
                    for kind, items in events.items():
                        self.state._events(pipe, cluster, kind, items)
                    launches = self._split(plan.launch, spec.workers_per_container)
                    for launch_id, count in launches:
                        pipe.hset(pending_key, launch_id, _json({"count": count, "state": "queued", "at": now}))
                        self.state._event(pipe, cluster, "launch", launch=launch_id, workers=count)
                    if plan.capped_by_max:
                        self.state._event(pipe, cluster, "at_max", max_workers=spec.max_workers)
                    pipe.execute()
                    result.launched, result.cancelled = launches, plan.cancel
                    draining = set(drained)
                    result.killed = [h for h in plan.kill if h not in draining]
                    result.drained = drained
                    return result
                except WatchError:
                    continue

    @staticmethod
    def _split(count: int, per_container: int) -> list[tuple[str, int]]:
        chunk = max(LAUNCH_CHUNK // per_container, 1) * per_container
        return [(uuid.uuid4().hex, min(chunk, count - i)) for i in range(0, count, chunk)]

    # -- provider steps --------------------------------------------------------------------
    def run_launch(self, cluster: str, launch_id: str) -> dict[str, Any]:
        """Carry out one pending launch, idempotently: a second delivery launches nothing new,
        and a per-launch lock keeps a re-sent task from racing one still at work."""
        spec = self.config.spec(cluster)
        provider = self.provider(spec.provider)
        claim, count = self.state.claim_launch(cluster, launch_id)
        if claim not in ("claimed", "settle"):
            return {"launch_id": launch_id, "state": claim, "handles": 0}
        lock = Lease(self.redis, self.state.key(cluster, f"launch:{launch_id}"), self.lease)
        if not lock.acquire():
            return {"launch_id": launch_id, "state": "busy", "handles": 0}
        if claim == "settle":
            return self._settle_cancelled(cluster, spec, provider, launch_id, count, lock)
        try:
            ref = self.config.cluster(cluster, excluded_types=self.guard.held_types(spec.provider))
            try:
                with as_provider_errors(spec.provider, "run"):
                    handles = provider.run_workers(ref, spec.container, spec.hardware, count, launch_id=launch_id)
                if not isinstance(handles, list) or not all(isinstance(h, str) and h for h in handles):
                    raise PermanentProviderError(
                        f"provider {spec.provider!r} returned {type(handles).__name__}, not a list of handles")
            except ProviderTimeout as exc:
                if not exc.held:
                    self.state.event(cluster, "timeout", op="run", launch=launch_id, message=str(exc)[:300])
                raise  # the task retries; the pending entry stays claimed, so the launch stays counted
            except TransientProviderError:
                raise  # the task retries with back-off; the pending entry stays claimed
            except ProviderError as exc:
                self._launch_failed(cluster, spec, launch_id, exc, ref.excluded_types)
                return {"launch_id": launch_id, "state": "failed", "error": type(exc).__name__}
            previous = self.state.record_launch(cluster, launch_id, handles)
            if previous == "missing":  # Redis lost the launch while we ran it
                self.guard.start_recovery(self.config.fleet.launch_timeout)
        finally:
            lock.release()
        unique = list(dict.fromkeys(handles))
        if previous == "cancelled" and unique:
            self.dispatcher.kill(cluster, unique, spec.provider)
        if len(handles) != count:
            self.state.event(cluster, "short_launch", launch=launch_id, asked=count, got=len(handles))
        self.request_reconcile(cluster)
        return {"launch_id": launch_id, "state": previous, "handles": len(unique), "workers": len(handles)}

    def _settle_cancelled(self, cluster: str, spec: ClusterSpec, provider: Provider, launch_id: str, count: int,
                          lock: Lease) -> dict[str, Any]:
        """A launch cancelled after a run task had taken it: that task may have made workers whose
        answer never came back. Ask the provider by launch id (without launching); a provider that
        cannot tell is asked `run_workers` with the same launch id, which returns what the launch
        made (or makes it). Whatever exists is recorded as stopping and killed; only then does the
        pending entry go, so until the provider has answered the launch counts against max."""
        try:
            ref = self.config.cluster(cluster, excluded_types=self.guard.held_types(spec.provider))
            try:
                with as_provider_errors(spec.provider, "find"):
                    handles = provider.find_launch(ref, launch_id)
                    if handles is None:
                        handles = provider.run_workers(ref, spec.container, spec.hardware, count, launch_id=launch_id)
                if not isinstance(handles, list) or not all(isinstance(h, str) and h for h in handles):
                    raise PermanentProviderError(
                        f"provider {spec.provider!r} returned {type(handles).__name__}, not a list of handles")
            except ProviderTimeout as exc:
                if not exc.held:
                    self.state.event(cluster, "timeout", op="find", launch=launch_id, message=str(exc)[:300])
                raise
            except TransientProviderError:
                raise  # the task retries; the cancelled entry still counts against max_workers
            except ProviderError as exc:
                # the provider cannot answer for good: drop the entry; whatever the launch made, the
                # sweep's listing counts it (unknown) and adopts it, and the planner kills it
                self.redis.hdel(self.state.key(cluster, "pending"), launch_id)
                self.state.event(cluster, "error", op="find", launch=launch_id, error=type(exc).__name__,
                                 message=str(exc)[:500])
                return {"launch_id": launch_id, "state": "failed", "error": type(exc).__name__}
            self.state.record_launch(cluster, launch_id, handles)  # as stopping: it was cancelled
        finally:
            lock.release()
        unique = list(dict.fromkeys(handles))
        if unique:
            self.dispatcher.kill(cluster, unique, spec.provider)
        self.request_reconcile(cluster)
        return {"launch_id": launch_id, "state": "settled", "handles": len(unique), "workers": len(handles)}

    def _launch_failed(self, cluster: str, spec: ClusterSpec, launch_id: str, exc: ProviderError,
                       excluded: frozenset[str] = frozenset()) -> None:
        """Give up a launch after an error retrying will not fix soon, and remember why, so that
        every control-plane worker holds off (no hot loop).

        A `CapacityError` naming a type this launch was told to avoid (`excluded`) means the
        provider cannot change type (an explicit `instance_type`, a Fargate size): the cluster is
        then held as if no type were left, instead of failing the same way launch after launch."""
        self.redis.hdel(self.state.key(cluster, "pending"), launch_id)
        fields: dict[str, Any] = {"op": "run", "launch": launch_id, "error": type(exc).__name__,
                                  "message": str(exc)[:500]}
        if isinstance(exc, QuotaExceeded):
            self.guard.set_at_quota(cluster, self.config.fleet.quota_hold)
            self.state.event(cluster, "at_quota", **fields)
        elif isinstance(exc, CapacityError):
            if exc.instance_type and exc.instance_type not in excluded:
                # hold that type; the next eligible one is tried at once
                self.guard.hold_type(spec.provider, exc.instance_type, self.config.fleet.capacity_hold)
                self.request_reconcile(cluster)
            else:  # nothing else to try: hold the cluster's launches (no hot loop)
                self.guard.set_no_capacity(cluster, self.config.fleet.capacity_hold)
            self.state.event(cluster, "no_capacity", instance_type=exc.instance_type or "", **fields)
        else:
            self.guard.set_error(cluster, str(exc), fingerprint(spec))
            self.state.event(cluster, "error", **fields)

    def kill_handles(self, cluster: str, handles: Sequence[str]) -> dict[str, Any]:
        """Kill handles. They stay tracked as stopping until the provider reports them stopped;
        failed kills are retried by the sweep with back-off."""
        spec, ref, provider = self._parts(cluster)
        unique = validate_handles(handles)
        try:
            with as_provider_errors(spec.provider, "kill"):
                raw = provider.kill_workers(ref, unique)
        except ProviderError as exc:
            self.state.record_kills(cluster, {h: False for h in unique}, self.config.fleet.kill_retry)
            if isinstance(exc, ProviderTimeout):
                if not exc.held:
                    self.state.event(cluster, "timeout", op="kill", message=str(exc)[:300])
            else:
                self.state.event(cluster, "error", op="kill", error=type(exc).__name__, message=str(exc)[:500])
            raise
        results = {h: bool(raw.get(h, False)) for h in unique}
        self.state.record_kills(cluster, results, self.config.fleet.kill_retry)
        gone = 0
        killed = [h for h, ok in results.items() if ok]
        if killed:
            try:
                with as_provider_errors(spec.provider, "status"):
                    status = provider.worker_status(ref, killed)
                gone = self.state.apply_status(
                    cluster, {h: WorkerStatus(status[h]).value for h in killed if h in status},
                    float(provider.listing_grace), self.config.fleet.kill_retry).gone
            except ProviderError:
                pass  # the next sweep confirms
        if gone:
            self.guard.worker_went_away(cluster)
        self.request_reconcile(cluster)
        return {"killed": gone, "failed": len(unique) - len(killed)}

    # -- sweep -----------------------------------------------------------------------------
    def sweep_cluster(self, cluster: str) -> dict[str, Any]:
        """Observe the cluster once: list what the provider holds (adopting what Redis does not
        know after the orphan grace, or at once when the desired number was lost), write every
        handle's status in one script call, kill boot timeouts, re-send lost launches and kills,
        and ask for a reconcile."""
        spec, ref, provider = self._parts(cluster)
        self.check_epoch()
        # A lease: a sweep whose worker died holds up the next ones for `self.lease` at most.
        lock = Lease(self.redis, self.state.key(cluster, "sweeping"), self.lease)
        if not lock.acquire():
            # another sweep of this cluster is at work; the reconcile this sweep would ask for is
            # asked for all the same, so a sweep stuck in a provider call never delays one
            self.request_reconcile(cluster)
            return {"cluster": cluster, "skipped": True}
        try:
            seen: tuple[ClusterState, dict[str, str]] | None = None
            try:
                report, seen = self._observe(cluster, spec, ref, provider)
            except RateLimited:
                report = {"cluster": cluster, "rate_limited": True}  # the hold is shared; try next sweep
            except ProviderTimeout as exc:
                if not exc.held:  # the first call that hung says so; the held ones after it are quiet
                    self.state.event(cluster, "timeout", op="sweep", message=str(exc)[:300])
                report = {"cluster": cluster, "timeout": True}
            except ProviderError as exc:
                self.state.event(cluster, "sweep_failed", error=type(exc).__name__, message=str(exc)[:300])
                report = {"cluster": cluster, "failed": type(exc).__name__}
            now = time.time()
            # One snapshot serves the rest of the sweep: the one read before observing, minus the
            # handles just seen stopped (which left Redis or will), with the statuses just seen.
            # Stale fields are safe: transitions re-check every status atomically.
            st = self._after_observe(*seen) if seen else self.state.read(cluster)
            self._boot_timeouts(cluster, spec, now, st)
            if spec.queues:
                report.update(self._watch_celery(cluster, spec, now))
            self._resend(cluster, spec, st, now)
        finally:
            lock.release()
        self.request_reconcile(cluster)
        return report

    @staticmethod
    def _after_observe(st: ClusterState, observed: dict[str, str]) -> ClusterState:
        handles: dict[str, dict[str, Any]] = {}
        for h, r in st.handles.items():
            s = observed.get(h)
            if s == "stopped":
                continue
            if s is not None and s != r["s"] and r["s"] not in ("stopping", "draining"):
                r = {**r, "s": s}
            handles[h] = r
        return ClusterState(st.desired, handles, st.pending)

    def _observe(self, cluster: str, spec: ClusterSpec, ref: Cluster,
                 provider: Provider) -> tuple[dict[str, Any], tuple[ClusterState, dict[str, str]]]:
        st = self.state.read(cluster)
        with as_provider_errors(spec.provider, "list"):
            listed = provider.list_workers(ref)
        unknown = {h: int(w) for h, w in (listed or {}).items() if h not in st.handles}
        asked = list(st.handles) + list(unknown)
        raw: dict[str, Any] = {}
        if asked:
            with as_provider_errors(spec.provider, "status"):
                raw = dict(provider.worker_status(ref, asked))
        observed: dict[str, str] = {}
        for h in asked:
            s = raw.get(h)
            if s is None:
                log.warning("provider %s gave no status for %s; skipped", spec.provider, h)
                continue
            observed[h] = WorkerStatus(s).value
        applied = self.state.apply_status(
            cluster, {h: observed[h] for h in st.handles if h in observed}, float(provider.listing_grace),
            self.config.fleet.kill_retry)
        if applied.dead:
            # Dead is not necessarily gone (an exited container, a stopped VM): clean up, idempotently.
            self.dispatcher.kill(cluster, applied.dead, spec.provider)
        live_unknown = {h: w for h, w in unknown.items() if observed.get(h, "stopped") != "stopped"}
        now = time.time()
        first_seen = self.state.track_unknown(cluster, live_unknown, now)
        lost_desired = st.desired is None
        # a launch in flight may be what made them: wait for it (or for launch_timeout) first
        in_flight = any(p["state"] == "running" and now - float(p.get("claimed") or now) < self.config.fleet.launch_timeout
                        for p in st.pending.values())
        due = {h: (w, observed[h]) for h, w in live_unknown.items()
               if lost_desired or (not in_flight and now - first_seen[h] >= self.config.fleet.orphan_grace)}
        adopted = self.state.adopt(cluster, due, set_desired=lost_desired and bool(st.handles or due)) if due else 0
        if lost_desired and not due and st.handles:
            self.state.adopt(cluster, {}, set_desired=True)
        if applied.gone:
            self.guard.worker_went_away(cluster)
        return {"cluster": cluster, "handles": len(st.handles), "pruned": applied.pruned, "changed": applied.changed,
                "adopted": adopted, "unknown": len(live_unknown) - len(due)}, (st, observed)

    # -- Celery-aware steps: autoscaling and draining --------------------------------------
    def probe(self, spec: ClusterSpec) -> Probe:
        url = spec.broker_url or self.url
        with self._providers_lock:
            if url not in self._probes:
                self._probes[url] = Probe(url)
            return self._probes[url]

    def _watch_celery(self, cluster: str, spec: ClusterSpec, now: float) -> dict[str, Any]:
        """Ask the cluster's workers what they hold; finish drains; autoscale from the load."""
        probe = self.probe(spec)
        st = self.state.read(cluster)
        try:
            activity = probe.activity([h for h, r in st.handles.items() if r["s"] != "stopping"])
            waiting = probe.waiting(spec.queues) if spec.autoscale else 0
        except Exception as exc:  # the workers' broker may be down: skip, never crash the sweep
            log.warning("cannot probe the workers of %s: %s", cluster, exc)
            return {"probe_failed": type(exc).__name__}
        self.state.patch(cluster, {h: {"busy": activity.of(h)} for h in st.handles})
        idle = [h for h, r in st.handles.items() if r["s"] == "draining" and activity.of(h) == 0]
        late = [h for h, r in st.handles.items()
                if r["s"] == "draining" and activity.of(h) and now >= float(r.get("drain_until", 0))]
        done = self.state.transition(cluster, idle, ["draining"], "stopping", "drained")
        done += self.state.transition(cluster, late, ["draining"], "stopping", "drain_timeout")
        if done:
            self.dispatcher.kill(cluster, done, spec.provider)
        # what draining workers still hold needs no capacity: they finish it and go
        busy = sum(activity.of(h) for h, r in st.handles.items() if r["s"] in ("initializing", "running"))
        report: dict[str, Any] = {"busy": busy, "drained": len(done)}
        if spec.autoscale:
            report.update(self._autoscale(cluster, spec, st, waiting + busy, now))
        return report

    def _autoscale(self, cluster: str, spec: ClusterSpec, st: ClusterState, load: int, now: float) -> dict[str, Any]:
        assert spec.autoscale is not None
        key = self.state.key(cluster, "autoscale")
        raw = self.redis.get(key)
        memory = autoscale.Memory(**json.loads(raw)) if raw else autoscale.Memory()
        current = self.target(spec, st)
        decision = autoscale.decide(
            load=load, current=current, floor=st.desired.floor if st.desired else 0,
            min_workers=spec.min_workers, max_workers=spec.max_workers,
            tasks_per_worker=spec.autoscale.tasks_per_worker, scale_down_delay=spec.autoscale.scale_down_delay,
            agreeing_sweeps=spec.autoscale.agreeing_sweeps, memory=memory, now=now)
        self.redis.set(key, json.dumps(asdict(decision.memory)), ex=86400)
        if decision.desired is not None and decision.desired != current:
            floor = st.desired.floor if st.desired else 0
            self.state.set_desired(cluster, decision.desired, floor=floor, source=f"autoscale load={load}")
        return {"load": load, "wanted": decision.wanted}

    def start_drain(self, cluster: str, handles: Sequence[str]) -> dict[str, Any]:
        """Tell the workers of draining handles to stop consuming (the sweep kills them once idle)."""
        spec = self.config.spec(cluster)
        unique = validate_handles(handles)
        probe = self.probe(spec)
        activity = probe.activity(unique)
        hostnames = [name for h in unique for name in activity.hostnames.get(h, [])]
        probe.stop_consuming(spec.queues, hostnames)
        return {"handles": len(unique), "workers": len(hostnames)}

    # -- operator controls per handle (as Arvados's management API) ------------------------
    def hold(self, cluster: Any, handle: Any, hold: Any = True) -> dict[str, Any]:
        """Never kill this handle automatically (hold=False releases it). `hold` must be a real
        boolean: "false" is a string, and Python would take it for True."""
        self.config.spec(cluster)
        if not isinstance(hold, bool):
            raise InvalidRequest(f"hold must be true or false, got {shorten(hold)} ({type(hold).__name__})")
        (h,) = validate_handles([handle])
        if not self.state.patch(cluster, {h: {"hold": bool(hold)}}) and h not in self.state.read(cluster).handles:
            raise InvalidRequest(f"cluster {cluster!r} has no handle {shorten(h)}")
        self.state.event(cluster, "held" if hold else "released", handle=h)
        return {"cluster": cluster, "handle": h, "hold": bool(hold)}

    def drain_handle(self, cluster: Any, handle: Any) -> dict[str, Any]:
        """Drain one handle now (its replacement is launched as for any worker that goes away)."""
        spec = self.config.spec(cluster)
        (h,) = validate_handles([handle])
        if not spec.queues:
            raise InvalidRequest(f"cluster {cluster!r} has no `queues`: nothing to drain; kill the handle instead")
        moved = self.state.transition(cluster, [h], ["running", "initializing"], "draining", "drain",
                                      drain_until=time.time() + (spec.drain_timeout or 300.0),
                                      event_fields={"by": "operator"})
        if not moved:
            raise InvalidRequest(f"cluster {cluster!r} has no running handle {shorten(h)}")
        self.dispatcher.drain(cluster, moved)
        self.request_reconcile(cluster)
        return {"cluster": cluster, "handle": h, "draining": True}

    def kill_handle(self, cluster: Any, handle: Any) -> dict[str, Any]:
        """Kill one handle now, held or not (its replacement is launched as for any worker that dies)."""
        spec = self.config.spec(cluster)
        (h,) = validate_handles([handle])
        moved = self.state.transition(cluster, [h], ["running", "initializing", "draining"], "stopping", "kill",
                                      event_fields={"by": "operator"})
        if not moved:
            raise InvalidRequest(f"cluster {cluster!r} has no live handle {shorten(h)}")
        self.dispatcher.kill(cluster, moved, spec.provider)
        self.request_reconcile(cluster)
        return {"cluster": cluster, "handle": h, "killed": True}

    def _boot_timeouts(self, cluster: str, spec: ClusterSpec, now: float, st: ClusterState) -> None:
        late = [h for h, r in st.handles.items() if r["s"] == "initializing" and now - r["since"] > spec.boot_timeout]
        moved = self.state.transition(cluster, late, ["initializing"], "stopping", "boot_timeout") if late else []
        if moved:
            self.dispatcher.kill(cluster, moved, spec.provider)

    def _resend(self, cluster: str, spec: ClusterSpec, st: ClusterState, now: float) -> None:
        timeout = self.config.fleet.launch_timeout
        for launch_id, p in st.pending.items():
            age = now - float(p.get("claimed") or p.get("at") or now)
            if (p["state"] == "queued" and age > min(RESEND_QUEUED_AFTER, timeout)) or (
                p["state"] in ("running", "cancelled") and p.get("claimed") and age > timeout
            ):
                self.dispatcher.run(cluster, launch_id, spec.provider)
        retry = [
            h
            for h, r in st.handles.items()
            if r["s"] == "stopping"
            and now - float(r.get("kill_at", r["since"])) > kill_backoff(int(r.get("kills", 0)), self.config.fleet.kill_retry)
        ]
        if retry:
            self.dispatcher.kill(cluster, retry, spec.provider)
        # dead handles whose cleanup kill failed (an exited container, a stopped VM left behind)
        cleanup = self.state.cleanup_due(cluster, self.config.fleet.kill_retry, CLEANUP_TRIES)
        if cleanup:
            self.dispatcher.kill(cluster, cleanup, spec.provider)


def fingerprint(spec: ClusterSpec) -> str:
    """Identifies a cluster's configuration: a permanent error holds until it changes."""
    return hashlib.sha1(spec.model_dump_json().encode()).hexdigest()[:16]


def validate_handles(handles: Any, limit: int = 100_000) -> list[str]:
    """Handles from a task message: a list of non-empty strings, unique, not absurdly many."""
    if not isinstance(handles, (list, tuple)) or not all(isinstance(h, str) and 0 < len(h) <= 1024 for h in handles):
        raise InvalidRequest(f"handles must be a list of strings, got {shorten(handles)}")
    if len(handles) > limit:
        raise InvalidRequest(f"at most {limit} handles per call, got {len(handles)}")
    return list(dict.fromkeys(handles))


def _url_of(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


@contextmanager
def as_provider_errors(provider: str, op: str) -> Iterator[None]:
    """Anything a provider raises that is not a ProviderError counts as transient (the contract)."""
    try:
        yield
    except ProviderError:
        raise
    except Exception as exc:
        raise TransientProviderError(f"provider {provider!r} failed in {op}", f"{type(exc).__name__}: {exc}") from exc


def kill_backoff(attempts: int, base: float = 10.0) -> float:
    """Seconds before a kill is sent again: `base` doubling per attempt, at most 5 minutes."""
    return min(base * math.pow(2, max(attempts - 1, 0)), 300.0)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))

