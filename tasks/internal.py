"""Internal tasks: thin wrappers over the managed layer (`fleet.control`). Provider tasks are
idempotent by launch id, acknowledged late and rejected (so redelivered) when their worker dies."""

from __future__ import annotations

from typing import Any

from celery import Task

from fleet.errors import RateLimited, TransientProviderError
from fleet.runtime import consumed_queue
from tasks.app import app, manager

PROVIDER_TASK: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
    "max_retries": 8,
}


def _countdown(task: Task, exc: Exception) -> float:
    backoff = min(2 ** task.request.retries, 60)
    # a rate limit or a hung provider says when it may be called again
    return max(float(getattr(exc, "retry_after", 0.0)), backoff if not isinstance(exc, RateLimited) else 0.0)


def _retry_provider(task: Task, exc: Exception) -> Any:
    raise task.retry(exc=exc, countdown=_countdown(task, exc))


@app.task(name="fleet.reconcile", ignore_result=True)
def reconcile(cluster: str) -> dict[str, Any]:
    result = manager().reconciler.reconcile(cluster)
    return {"launched": len(result.launched), "killed": len(result.killed), "cancelled": len(result.cancelled)}


@app.task(name="fleet.run", **PROVIDER_TASK)
def run(self: Task, cluster: str, launch_id: str) -> dict[str, Any]:
    try:
        return manager().launcher.run_launch(cluster, launch_id)
    except TransientProviderError as exc:
        countdown = _countdown(self, exc)
        last = self.request.retries >= (self.max_retries or 0)  # then the sweep sends it after launch_timeout
        manager().launcher.retrying(cluster, launch_id, manager().config.fleet.launch_timeout if last else countdown)
        raise self.retry(exc=exc, countdown=countdown) from None


@app.task(name="fleet.kill", **PROVIDER_TASK)
def kill(self: Task, cluster: str, handles: list[str], pool: str = "") -> dict[str, Any]:
    try:
        return manager().launcher.kill_handles(cluster, handles, pool)
    except TransientProviderError as exc:
        return _retry_provider(self, exc)


@app.task(name="fleet.drain", ignore_result=True, acks_late=True)
def drain(cluster: str, handles: list[str]) -> dict[str, Any]:
    """Tell the workers of draining handles to stop consuming."""
    return manager().celery.start_drain(cluster, handles)


@app.task(name="fleet.sweep", ignore_result=True)
def sweep() -> int:
    """Beat's entry point: one sweep task per cluster, each stamped with the Redis time it was
    sent at. A backlog of beat's messages (the control plane was down) sends one round: a sweep
    runs at most once per half interval (the `sweep_tick` key, a Redis-side duration). No Celery
    `expires`: the receiver would check it on its own clock (fleet.clock)."""
    m = manager()
    cfg = m.config  # the retired clusters too (fleet.retire)
    interval = cfg.fleet.sweep_interval
    if not m.redis.set(m.store.keys.sweep_tick, 1, nx=True, px=max(int(interval * 500), 1)):
        return 0
    sent = m.store.now()
    for cluster, spec in cfg.clusters.items():
        # on the provider's queue: a sweep calls the provider, and may wait for it
        sweep_cluster.apply_async((cluster, sent), queue=consumed_queue(cfg, spec.pool_list[0].provider))
    return len(cfg.clusters)


@app.task(name="fleet.sweep_cluster", ignore_result=True, acks_late=True)
def sweep_cluster(cluster: str, sent: float | None = None) -> dict[str, Any]:
    """One cluster's sweep; dropped if it was sent (Redis time) more than a sweep interval ago:
    a newer one is on its way."""
    m = manager()
    if sent is not None and m.store.now() - float(sent) > m.config.fleet.sweep_interval:
        return {"cluster": cluster, "stale": True}
    return m.sweeper.sweep_cluster(cluster)


@app.task(name="fleet.check", ignore_result=True)
def check(cluster: str, delay: float) -> int:
    """A follow-up after a launch: the new handles' status (fleet.control.followup)."""
    return manager().followups.check(cluster, float(delay))


@app.task(name="fleet.noop")
def noop() -> None:
    """Does nothing: `fleet bench` times round trips of it as the baseline of Celery's own cost."""
    return None
