"""How the managed layer asks for work to be done elsewhere. `tasks.app.CeleryDispatcher` sends
Celery messages; tests may record the calls instead."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from fleet.config import ClusterSpec


class Dispatcher(Protocol):
    def run(self, cluster: str, launch_id: str, provider: str) -> None:
        """Carry out (or settle) one pending launch: `fleet.run` on the provider's queue."""

    def kill(self, cluster: str, handles: Sequence[str], provider: str, pool: str = "") -> None:
        """Kill handles of one pool: `fleet.kill` on the provider's queue."""

    def reconcile(self, cluster: str) -> None:
        """Take one step towards the desired number: `fleet.reconcile` on the control queue."""

    def drain(self, cluster: str, handles: Sequence[str], provider: str) -> None:
        """Tell draining handles' workers to stop consuming: `fleet.drain` on the provider's queue."""

    def check(self, cluster: str, delay: float, provider: str) -> None:
        """`delay` seconds from now, ask the status of the cluster's initializing handles:
        `fleet.check` on the provider's queue (see `fleet.control.followup`)."""


def kill_by_pool(dispatcher: Dispatcher, spec: ClusterSpec, cluster: str, handles: Mapping[str, str]) -> None:
    """Kill handles (handle -> pool), one `fleet.kill` per pool, on its provider's queue (the
    first pool's for a pool the config no longer has: any provider worker can kill them, and
    only the queues of the configured providers are consumed)."""
    by: dict[str, list[str]] = {}
    for h, pool in handles.items():
        by.setdefault(pool, []).append(h)
    for pool, hs in by.items():
        dispatcher.kill(cluster, hs, spec.pool_or_first(pool).provider, pool)
