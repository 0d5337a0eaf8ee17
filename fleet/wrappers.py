"""Cross-cutting concerns as wrappers around a provider (Arvados style), not code in each one."""

from __future__ import annotations

import time
from typing import Any, Sequence

from fleet.config import ProviderLimits
from fleet.deadline import Deadline
from fleet.errors import ProviderTimeout, RateLimited
from fleet.guard import Guard
from fleet.metrics import record_op
from fleet.provider import Cluster, ContainerSpec, Hardware, Provider, WorkerStatus


class GuardedProvider(Provider):
    """Shares a provider's rate limit, throttling holds and launch concurrency across every
    control-plane worker: before each call it honours a hold (raising RateLimited with the time
    left) and takes an operation token; a RateLimited from the cloud holds every worker off.
    Every call has a deadline (`call_timeout`): one that does not return in time raises
    ProviderTimeout and holds the cluster's calls off for `unresponsive_hold` seconds, during
    which they fail at once (ProviderTimeout with `held`), so a hung endpoint holds a
    control-plane thread once, for `call_timeout`, not on every sweep.
    Every call's latency and error class go to the metrics (fleet_provider_operation_seconds)."""

    def __init__(self, inner: Provider, name: str, guard: Guard, limits: ProviderLimits, lease: float) -> None:
        super().__init__(inner.context)
        self.inner = inner
        self.name = name
        self.guard = guard
        self.limits = limits
        self.lease = lease
        self.options_model = inner.options_model
        self.listing_grace = inner.listing_grace  # type: ignore[misc]
        self.call_timeout = limits.call_timeout or inner.call_timeout  # type: ignore[misc]
        self.deadline = Deadline(name, self.call_timeout)

    def _call(self, op: str, fn: Any, cluster: Cluster, *args: Any, **kwargs: Any) -> Any:
        wait = self.guard.provider_hold(self.name)
        if wait > 0:
            raise RateLimited(f"provider {self.name!r} is rate-limited", retry_after=wait)
        held = self.guard.unresponsive(cluster.name)
        if held > 0:
            raise ProviderTimeout(f"provider {self.name!r} did not answer for cluster {cluster.name!r} lately: its "
                                  f"calls are held for {held:.0f} s", retry_after=held, held=True)
        self.guard.take_op(self.name, self.limits.ops_per_second)
        started, error = time.monotonic(), None
        try:
            return self.deadline.call(cluster.name, op, fn, cluster, *args, **kwargs)
        except RateLimited as exc:
            error = type(exc).__name__
            self.guard.hold_provider(self.name, exc.retry_after)
            raise
        except ProviderTimeout as exc:
            error = type(exc).__name__
            if not exc.held:
                self.guard.hold_unresponsive(cluster.name, self.limits.unresponsive_hold)
            raise
        except Exception as exc:
            error = type(exc).__name__
            raise
        finally:
            record_op(self.guard.r, self.guard.fleet_id, self.name, op, time.monotonic() - started, error)

    def run_workers(self, cluster: Cluster, container: ContainerSpec, hardware: Hardware, count: int,
                    *, launch_id: str) -> list[str]:
        with self.guard.launch_slot(self.name, self.limits.concurrent_launches, self.lease):
            return list(self._call("run", self.inner.run_workers, cluster, container, hardware, count, launch_id=launch_id))

    def worker_status(self, cluster: Cluster, handles: Sequence[str]) -> dict[str, WorkerStatus]:
        return dict(self._call("status", self.inner.worker_status, cluster, handles))

    def kill_workers(self, cluster: Cluster, handles: Sequence[str]) -> dict[str, bool]:
        return dict(self._call("kill", self.inner.kill_workers, cluster, handles))

    def list_workers(self, cluster: Cluster) -> dict[str, int] | None:
        listed = self._call("list", self.inner.list_workers, cluster)
        return None if listed is None else dict(listed)

    def find_launch(self, cluster: Cluster, launch_id: str) -> list[str] | None:
        found = self._call("find", self.inner.find_launch, cluster, launch_id)
        return None if found is None else list(found)
