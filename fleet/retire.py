"""Retired clusters: a cluster removed from the config while it still has workers.

Every control-plane process stores, when it starts, what it needs to sweep and kill each of its
clusters' workers (`fleet:<id>:<cluster>:spec`: the pools with their providers and options, the
workers per container, the queues and drain timeout; never the container's env or a broker URL,
and provider options hold no secrets by the provider contract). A process whose config no longer
declares a cluster that Redis still tracks rebuilds it from that record as *retired*: the same
managed layer serves it with `max_workers` 0, so it launches nothing, its workers are drained and
killed, its cleanup kills are finished, and then its keys leave Redis. A cluster put back under
the same name before that ends is an ordinary cluster again: its live workers are still in Redis
and are kept.

`Retirement` is the store's section for it (`fleet.store.Store` includes it): the spec records,
the "declared" markers, and what is left of a cluster in Redis.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from fleet.config import ClusterSpec, FleetConfig
from fleet.model import EventKind, HandleStatus
from fleet.probe import Probe
from fleet.registry import provider_class
from fleet.state.base import StoreBase
from fleet.state.handles import Handles

log = logging.getLogger(__name__)


def declared_ttl(config: FleetConfig) -> float:
    """How long a process's word that its config declares a cluster holds (it says so again at
    every sweep of it): three sweeps, and never less than 5 s."""
    return max(3 * config.fleet.sweep_interval, 5.0)


def spec_record(spec: ClusterSpec) -> str:
    """What Redis keeps of a cluster to retire it one day (JSON, no secrets)."""
    return json.dumps({
        "pools": [{"name": p.name, "provider": p.provider, "provider_options": p.provider_options}
                  for p in spec.pool_list],
        "declared_pools": bool(spec.pools), "workers_per_container": spec.workers_per_container,
        # a broker of its own is not kept (its URL may hold a password): then no drain, a kill
        "queues": [] if spec.broker_url else list(spec.queues),
        "drain_timeout": 0.0 if spec.broker_url else spec.drain_timeout, "boot_timeout": spec.boot_timeout,
    }, sort_keys=True)


def retired_spec(raw: str | bytes) -> ClusterSpec:
    """The spec of a retired cluster, from its record: nothing to launch (max_workers 0)."""
    data = json.loads(raw)
    base: dict[str, Any] = {
        "min_workers": 0, "max_workers": 0, "container": {"command": ["retired"]},
        "workers_per_container": data.get("workers_per_container", 1), "queues": data.get("queues", []),
        "drain_timeout": data.get("drain_timeout", 0.0), "boot_timeout": data.get("boot_timeout", 600.0),
    }
    pools = data["pools"]
    if data.get("declared_pools"):
        base["pools"] = pools
    else:
        base["provider"], base["provider_options"] = pools[0]["provider"], pools[0]["provider_options"]
    return ClusterSpec.model_validate(base)


class Retirement(StoreBase):
    """The store's section for retiring clusters (`Store` includes it)."""

    def remember_pools(self, specs: Mapping[str, Any], records: Mapping[str, str]) -> None:
        """Store each declared pool's provider and provider_options (cluster -> ClusterSpec), so
        that the handles of a pool later removed from the config are still swept and killed by
        their own provider; and each cluster's spec record (`spec_record`), so that a cluster
        removed from the config can be retired. Provider options hold no secrets (the contract)."""
        pipe = self.r.pipeline(transaction=False)
        for cluster, spec in specs.items():
            if cluster in records:
                pipe.set(self.of(cluster).spec, records[cluster])
            if spec.pools:
                pipe.hset(self.of(cluster).pools, mapping={
                    p.name: json.dumps({"provider": p.provider, "provider_options": p.provider_options})
                    for p in spec.pools})
        pipe.execute()

    def spec_records(self, clusters: Iterable[str]) -> dict[str, bytes]:
        """The stored spec records of these clusters (those that have one)."""
        names = list(clusters)
        raw = cast("list[bytes | None]", self.r.mget([self.of(c).spec for c in names])) if names else []
        return {c: v for c, v in zip(names, raw, strict=True) if v}

    def declare(self, clusters: Iterable[str], ttl: float) -> None:
        """This process's config declares these clusters (for `ttl` seconds): a process still on an
        older config that retired one of them stands down meanwhile."""
        pipe = self.r.pipeline(transaction=False)
        for c in clusters:
            pipe.set(self.of(c).declared, "1", px=max(int(ttl * 1000), 1))
        pipe.execute()

    def declared(self, cluster: str) -> bool:
        return bool(self.r.exists(self.of(cluster).declared))

    def leftovers(self, cluster: str) -> bool:
        """Whether any key of the cluster is left (a retired cluster to forget again)."""
        k = self.of(cluster)
        return bool(self.r.exists(k.counts, k.index, k.events, k.series, k.rollout, k.spec, k.retiring, k.desired,
                                  k.autoscale, k.unknown, k.pools, k.notice))

    def has_state(self, cluster: str) -> bool:
        """Whether the cluster still has handles, pending launches or remains to kill."""
        k = self.of(cluster)
        return bool(self.r.exists(k.handles, k.pending, k.cleanup))

    def forget(self, cluster: str) -> int:
        """Delete every key of the cluster (a retired cluster with nothing left). Returns how many."""
        keys = list(self.r.scan_iter(match=self.of(cluster).prefix + "*", count=1000))
        return int(self.r.delete(*keys)) if keys else 0


def come_back(store: Handles, config: FleetConfig, url: str,
              probe: Callable[[str], Probe] = Probe) -> dict[str, list[str]]:
    """Clusters declared again while they were being retired: their drains are called off (the
    workers drained by the retirement run and consume again), so what is still alive is kept.
    Every process does it when it starts (a transition moves a handle once); it reads the records
    of draining handles only. Returns the handles taken back, by cluster."""
    back: dict[str, list[str]] = {}
    for cluster, spec in config.clusters.items():
        if cluster in config.retired:
            continue
        store.r.delete(store.of(cluster).retiring)
        draining = [h for h, st in store.index(cluster).items() if st is HandleStatus.DRAINING]
        records = store.records(cluster, draining) if draining else {}
        drained = [h for h, r in records.items()
                   if r.status is HandleStatus.DRAINING and r.extra.get("retire") and not r.interrupted]
        if not drained:
            continue
        moved = store.transition(cluster, drained, [HandleStatus.DRAINING], HandleStatus.RUNNING,
                                 EventKind.ADOPTED, event_fields={"by": "put back in the config"})
        if moved and spec.queues:
            try:
                p = probe(spec.broker_url or url)
                names = p.activity(moved).hostnames
                p.start_consuming(spec.queues, [n for h in moved for n in names.get(h, [])])
            except Exception as exc:  # noqa: BLE001 - the workers' broker may be down: they stay idle, not lost
                log.warning("cannot tell the workers of %s to consume again: %s", cluster, exc)
        back[cluster] = moved
    return back


def with_retired(config: FleetConfig, records: Mapping[str, str | bytes]) -> FleetConfig:
    """`config` with the clusters of `records` (name -> spec record) it does not declare, retired.
    A record that no longer validates (a provider this version lacks) is left out."""
    retired: dict[str, ClusterSpec] = {}
    for name, raw in records.items():
        if name in config.clusters:
            continue
        try:
            spec = retired_spec(raw)
            for pool in spec.pool_list:  # a provider this version lacks, options it refuses
                provider_class(pool.provider).validate_options(pool.provider_options)
        except Exception:  # noqa: BLE001 - a record written by hand or by another version: left alone
            log.warning("cluster %r left the config, but what Redis keeps of it cannot be read: not retired", name)
            continue
        retired[name] = spec
    if not retired:
        return config
    return config.model_copy(update={"clusters": {**config.clusters, **retired},
                                     "retired": frozenset(retired) | config.retired})
