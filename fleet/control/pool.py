"""Every provider a process uses, built once and wrapped, and every cluster's provider options
validated once."""

from __future__ import annotations

import functools
import json
import threading
from typing import Any

import redis

from fleet.config import FleetConfig, PoolSpec
from fleet.counters import record_unreadable
from fleet.errors import FleetError
from fleet.holds import Holds
from fleet.keys import Keyspace
from fleet.limits import Limits
from fleet.provider import Cluster, Provider, ProviderContext
from fleet.registry import provider_class
from fleet.wrappers import (
    Deadlined,
    Held,
    Instrumented,
    LaunchSlots,
    Normalized,
    ProviderWrapper,
    Throttled,
    call_timeout,
)


def compose(raw: Provider[Any], name: str, config: FleetConfig, client: redis.Redis, holds: Holds, limits: Limits,
            lease: float) -> ProviderWrapper:
    """The one place the wrappers are put together, outermost first: shared holds (fail fast),
    operation tokens, launch slots, instrumentation, the deadline, and the contract's error rule
    around the provider itself."""
    settings = config.limits(name)
    wrapped: ProviderWrapper = Normalized(raw, name)
    wrapped = Deadlined(wrapped, name, call_timeout(raw, settings), holds, settings.unresponsive_hold)
    wrapped = Instrumented(wrapped, name, client, Keyspace(config.fleet.id))
    wrapped = LaunchSlots(wrapped, name, limits, settings.concurrent_launches, lease)
    wrapped = Throttled(wrapped, name, limits, settings.ops_per_second)
    return Held(wrapped, name, holds)


class ProviderPool:
    def __init__(self, config: FleetConfig, client: redis.Redis, holds: Holds, limits: Limits, lease: float) -> None:
        self.config = config
        self.client = client
        self.holds = holds
        self.limits = limits
        self.lease = lease
        self._wrapped: dict[str, ProviderWrapper] = {}
        self._options: dict[tuple[str, str], Any] = {}
        self._removed: dict[tuple[str, str], PoolSpec | None] = {}  # pools no longer in the config
        self._lock = threading.Lock()

    def get(self, name: str) -> ProviderWrapper:
        """Provider `name`, wrapped (built on first use)."""
        with self._lock:
            if name not in self._wrapped:
                report = functools.partial(record_unreadable, self.client, Keyspace(self.config.fleet.id))
                raw = provider_class(name)(ProviderContext(self.config.fleet.id, self.config.state_dir, report))
                self._wrapped[name] = compose(raw, name, self.config, self.client, self.holds, self.limits, self.lease)
            return self._wrapped[name]

    def raw(self, name: str) -> Provider[Any]:
        """Provider `name` itself, under its wrappers."""
        return self.get(name).raw

    def definition(self, cluster: str, pool: str) -> PoolSpec | None:
        """Pool `pool` of a declared cluster: from the config, or, for a pool the config no longer
        has, as the control plane last stored it (`Store.remember_pools`; None if it never did).
        Pool "" is the first pool (handles recorded without one)."""
        spec = self.config.spec(cluster)
        if not pool:
            return spec.pool_list[0]
        try:
            return spec.pool(pool)
        except KeyError:
            pass
        with self._lock:
            if (cluster, pool) in self._removed:
                return self._removed[(cluster, pool)]
        raw = self.client.hget(Keyspace(self.config.fleet.id).cluster(cluster).pools, pool)
        found = None
        if raw:
            try:
                found = PoolSpec.model_validate({**json.loads(raw), "name": pool})
                provider_class(found.provider)
            except (ValueError, FleetError):
                found = None  # written by hand, or a provider this version lacks: left alone
        with self._lock:
            self._removed[(cluster, pool)] = found
        return found

    def of(self, cluster: str, pool: str = "") -> ProviderWrapper:
        """The wrapped provider of a declared cluster's pool (see `definition`; the first pool's
        for a pool nobody knows)."""
        ps = self.definition(cluster, pool) or self.config.spec(cluster).pool_list[0]
        return self.get(ps.provider)

    def cluster(self, name: str, pool: str = "", excluded_types: frozenset[str] = frozenset(),
                first_attempt: bool = False, revision: str = "") -> Cluster[Any]:
        """The provider's view of cluster `name`'s pool `pool`, with its options validated (once
        per process)."""
        spec = self.config.spec(name)
        ps = self.definition(name, pool) or spec.pool_list[0]
        with self._lock:
            if (name, pool) not in self._options:
                self._options[(name, pool)] = provider_class(ps.provider).validate_options(ps.provider_options)
            options = self._options[(name, pool)]
        return Cluster(self.config.fleet.id, name, spec.workers_per_container, options, excluded_types,
                       first_attempt, pool, revision)

    def launch_batch(self, name: str, pool: str = "") -> int:
        """Containers one cloud call of a pool's provider launches at most (0: no limit)."""
        return self.of(name, pool).launch_batch(self.cluster(name, pool))
