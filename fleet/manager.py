"""The managed layer: `set_worker_number` / `get_worker_numbers` of the seed, and the reconcile,
launch, kill and sweep steps behind them. Level-triggered: every step re-reads Redis and moves the
cluster towards its desired number, so a lost message or a dead worker costs one sweep, not state.

Celery is not imported here: the steps that send work elsewhere call a `Dispatcher`, which
`tasks/` implements with Celery messages (and tests may implement however they like).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence

import redis
from redis.exceptions import WatchError

from fleet import planner
from fleet.config import ClusterSpec, FleetConfig, shorten
from fleet.errors import InvalidRequest, ProviderError, ScaleRefused, TransientProviderError
from fleet.provider import Cluster, Provider, ProviderContext, WorkerStatus
from fleet.registry import provider_class
from fleet.state import ClusterState, State

log = logging.getLogger(__name__)

#: Workers per launch (and so per run task); larger launches are split so several control-plane
#: workers and provider batches can work in parallel. Rounded down to whole containers.
LAUNCH_CHUNK = 256
#: A queued launch whose run task has not claimed it after this long gets its task sent again.
RESEND_QUEUED_AFTER = 30.0
#: A claimed launch not recorded after this long (its worker died) is run again (idempotent).
RESEND_CLAIMED_AFTER = 300.0


class Dispatcher(Protocol):
    """How the managed layer asks for work to be done elsewhere (Celery in production)."""

    def run(self, cluster: str, launch_id: str, provider: str) -> None: ...
    def kill(self, cluster: str, handles: Sequence[str], provider: str) -> None: ...
    def reconcile(self, cluster: str) -> None: ...


class LockBusy(Exception):
    """Another control-plane worker holds this cluster's lock; try again shortly."""


@dataclass
class ReconcileResult:
    cluster: str
    launched: list[tuple[str, int]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    desired: int | None = None
    observed: int = 0


def validate_workers(value: Any) -> int:
    """A worker number from the outside world: a non-negative int, nothing else."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"workers must be an integer, got {shorten(value)} ({type(value).__name__})")
    if value < 0:
        raise ScaleRefused(f"workers must be >= 0, got {value}")
    return value


class Manager:
    """One fleet's managed layer: config + Redis state + providers + a dispatcher."""

    def __init__(self, config: FleetConfig, client: redis.Redis, dispatcher: Dispatcher) -> None:
        self.config = config
        self.redis = client
        self.state = State(client, config.fleet.id)
        self.dispatcher = dispatcher
        self._providers: dict[str, Provider] = {}
        self._providers_lock = threading.Lock()

    # -- helpers ---------------------------------------------------------------------------
    def provider(self, name: str) -> Provider:
        with self._providers_lock:
            if name not in self._providers:
                context = ProviderContext(self.config.fleet.id, self.config.state_dir)
                self._providers[name] = provider_class(name)(context)
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
        if self.redis.set(self.state.key(cluster, "queued"), "1", nx=True, ex=60):
            self.dispatcher.reconcile(cluster)
            return True
        return False

    # -- the seed's public pair ------------------------------------------------------------
    def set_worker_number(self, cluster: Any, workers: Any) -> dict[str, Any]:
        """Validate and store the desired number, then ask for a reconcile. Bad input raises a
        typed `InvalidRequest` and changes nothing."""
        spec = self.config.spec(cluster)
        n = validate_workers(workers)
        if not spec.min_workers <= n <= spec.max_workers:
            raise ScaleRefused(
                f"cluster {cluster!r} takes between {spec.min_workers} and {spec.max_workers} workers, got {n}"
            )
        version = self.state.set_desired(cluster, n)
        self.request_reconcile(cluster)
        return {"cluster": cluster, "desired": n, "version": version}

    def get_worker_numbers(self, cluster: Any) -> dict[str, Any]:
        """Desired, initializing, running, stopping and pending workers of a cluster (from Redis)."""
        spec = self.config.spec(cluster)
        summary = self.state.read(cluster).summary(cluster)
        summary.update(provider=spec.provider, min_workers=spec.min_workers, max_workers=spec.max_workers)
        return summary

    # -- reconcile -------------------------------------------------------------------------
    def reconcile(self, cluster: str) -> ReconcileResult:
        """Plan and commit one step towards the desired number; then dispatch run/kill tasks.

        Serialised per cluster by a Redis lock; the commit is a WATCH/MULTI transaction over the
        cluster's keys, so a concurrent launch record or sweep makes it re-plan, not double-act.
        """
        spec = self.config.spec(cluster)
        self.redis.delete(self.state.key(cluster, "queued"))
        lock = self.redis.lock(self.state.key(cluster, "lock"), timeout=60, blocking_timeout=10)
        if not lock.acquire():
            raise LockBusy(cluster)
        try:
            result = self._commit_plan(cluster, spec)
        finally:
            try:
                lock.release()
            except redis.exceptions.LockError:
                log.warning("reconcile lock of %s expired before release", cluster)
        for launch_id, _ in result.launched:
            self.dispatcher.run(cluster, launch_id, spec.provider)
        if result.killed:
            self.dispatcher.kill(cluster, result.killed, spec.provider)
        return result

    def _commit_plan(self, cluster: str, spec: ClusterSpec) -> ReconcileResult:
        result = ReconcileResult(cluster)
        keys = self.state.keys_of(cluster)
        while True:
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(*keys)
                    st = self.state.read(cluster, client=pipe)
                    target = self.target(spec, st)
                    plan = planner.plan(target, spec.max_workers, st.handle_views(), st.pending_views())
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
                    for handle in plan.kill:
                        rec = st.handles[handle]
                        pipe.hset(handles_key, handle, _json({**rec, "s": "stopping", "since": now, "kill_at": now}))
                        self.state._event(pipe, cluster, "kill", handle=handle, workers=rec["w"], was=rec["s"])
                    launches = self._split(plan.launch, spec.workers_per_container)
                    for launch_id, count in launches:
                        pipe.hset(pending_key, launch_id, _json({"count": count, "state": "queued", "at": now}))
                        self.state._event(pipe, cluster, "launch", launch=launch_id, workers=count)
                    if plan.capped_by_max:
                        self.state._event(pipe, cluster, "at_max", max_workers=spec.max_workers)
                    pipe.execute()
                    result.launched, result.cancelled, result.killed = launches, plan.cancel, plan.kill
                    return result
                except WatchError:
                    continue

    @staticmethod
    def _split(count: int, per_container: int) -> list[tuple[str, int]]:
        chunk = max(LAUNCH_CHUNK // per_container, 1) * per_container
        return [(uuid.uuid4().hex, min(chunk, count - i)) for i in range(0, count, chunk)]

    # -- provider steps --------------------------------------------------------------------
    def run_launch(self, cluster: str, launch_id: str) -> dict[str, Any]:
        """Carry out one pending launch, idempotently: a second delivery launches nothing new."""
        spec, ref, provider = self._parts(cluster)
        claim, count = self.state.claim_launch(cluster, launch_id)
        if claim != "claimed":
            return {"launch_id": launch_id, "state": claim, "handles": 0}
        try:
            with as_provider_errors(spec.provider, "run"):
                handles = provider.run_workers(ref, spec.container, spec.hardware, count, launch_id=launch_id)
        except TransientProviderError:
            raise  # the task retries with back-off; the pending entry stays claimed
        except ProviderError as exc:
            self.abandon_launch(cluster, launch_id, exc)
            raise
        if not isinstance(handles, list) or not all(isinstance(h, str) and h for h in handles):
            bad = ProviderError(f"provider {spec.provider!r} returned {type(handles).__name__}, not a list of handles")
            self.abandon_launch(cluster, launch_id, bad)
            raise bad
        previous = self.state.record_launch(cluster, launch_id, handles)
        unique = list(dict.fromkeys(handles))
        if previous == "cancelled" and unique:
            self.dispatcher.kill(cluster, unique, spec.provider)
        if len(handles) < count:
            self.state.event(cluster, "short_launch", launch=launch_id, asked=count, got=len(handles))
        self.request_reconcile(cluster)
        return {"launch_id": launch_id, "state": previous, "handles": len(unique), "workers": len(handles)}

    def abandon_launch(self, cluster: str, launch_id: str, exc: BaseException) -> None:
        """Give up a launch after a non-retryable error; the next sweep's reconcile tries again."""
        self.redis.hdel(self.state.key(cluster, "pending"), launch_id)
        self.state.event(cluster, "error", op="run", launch=launch_id, error=type(exc).__name__, message=str(exc)[:500])

    def kill_handles(self, cluster: str, handles: Sequence[str]) -> dict[str, Any]:
        """Kill handles; the killed ones leave Redis, failed ones stay stopping for a retry."""
        spec, ref, provider = self._parts(cluster)
        unique = list(dict.fromkeys(handles))
        try:
            with as_provider_errors(spec.provider, "kill"):
                raw = provider.kill_workers(ref, unique)
        except ProviderError as exc:
            self.state.record_kills(cluster, {h: False for h in unique})
            self.state.event(cluster, "error", op="kill", error=type(exc).__name__, message=str(exc)[:500])
            raise
        results = {h: bool(raw.get(h, False)) for h in unique}
        gone = self.state.record_kills(cluster, results)
        self.request_reconcile(cluster)
        return {"killed": gone, "failed": sum(1 for ok in results.values() if not ok)}

    # -- sweep -----------------------------------------------------------------------------
    def sweep_cluster(self, cluster: str) -> dict[str, Any]:
        """Observe every handle once (one provider call), write all statuses in one script call,
        prune the dead, kill boot timeouts, re-send lost launches and kills, ask for a reconcile."""
        spec, ref, provider = self._parts(cluster)
        # Expires on its own, so a sweep whose worker died holds up the next ones for a minute at most.
        lock = self.redis.lock(self.state.key(cluster, "sweeping"), timeout=60, blocking=False)
        if not lock.acquire():
            return {"cluster": cluster, "skipped": True}
        try:
            st = self.state.read(cluster)
            observed: dict[str, str] = {}
            if st.handles:
                with as_provider_errors(spec.provider, "status"):
                    raw = provider.worker_status(ref, list(st.handles))
                for h in st.handles:
                    s = raw.get(h)
                    if s is None:
                        log.warning("provider %s gave no status for %s; skipped", spec.provider, h)
                        continue
                    observed[h] = WorkerStatus(s).value
            grace = float(getattr(provider, "listing_grace", 0.0))
            pruned, changed = self.state.apply_status(cluster, observed, grace)
            now = time.time()
            self._boot_timeouts(cluster, spec, now)
            self._resend(cluster, spec, st, now)
        finally:
            try:
                lock.release()
            except redis.exceptions.LockError:
                pass
        self.request_reconcile(cluster)
        return {"cluster": cluster, "handles": len(observed), "pruned": pruned, "changed": changed}

    def _boot_timeouts(self, cluster: str, spec: ClusterSpec, now: float) -> None:
        key = self.state.key(cluster, "handles")
        late: list[str] = []
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    records = {k.decode(): _load(v) for k, v in pipe.hgetall(key).items()}
                    late = [h for h, r in records.items() if r["s"] == "initializing" and now - r["since"] > spec.boot_timeout]
                    if not late:
                        return
                    pipe.multi()
                    for h in late:
                        pipe.hset(key, h, _json({**records[h], "s": "stopping", "since": now, "kill_at": now}))
                        self.state._event(pipe, cluster, "boot_timeout", handle=h, workers=records[h]["w"])
                    pipe.execute()
                    break
                except WatchError:
                    continue
        self.dispatcher.kill(cluster, late, spec.provider)

    def _resend(self, cluster: str, spec: ClusterSpec, st: ClusterState, now: float) -> None:
        for launch_id, p in st.pending.items():
            age = now - float(p.get("claimed") or p.get("at") or now)
            if (p["state"] == "queued" and age > RESEND_QUEUED_AFTER) or (
                p["state"] in ("running", "cancelled") and p.get("claimed") and age > RESEND_CLAIMED_AFTER
            ):
                self.dispatcher.run(cluster, launch_id, spec.provider)
        retry = [
            h
            for h, r in st.handles.items()
            if r["s"] == "stopping" and now - float(r.get("kill_at", r["since"])) > kill_backoff(int(r.get("kills", 0)))
        ]
        if retry:
            self.dispatcher.kill(cluster, retry, spec.provider)


@contextmanager
def as_provider_errors(provider: str, op: str) -> Iterator[None]:
    """Anything a provider raises that is not a ProviderError counts as transient (the contract)."""
    try:
        yield
    except ProviderError:
        raise
    except Exception as exc:
        raise TransientProviderError(f"provider {provider!r} failed in {op}", f"{type(exc).__name__}: {exc}") from exc


def kill_backoff(attempts: int) -> float:
    """Seconds before a kill is sent again: 10 s doubling to at most 5 minutes."""
    return min(10.0 * math.pow(2, attempts), 300.0)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _load(raw: bytes) -> dict[str, Any]:
    return dict(json.loads(raw))
