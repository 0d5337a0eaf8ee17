"""The price of each pool of each cluster: what its provider answers (`Provider.prices`), with the
operator's overrides applied, in this order (the first that is set wins):

1. `price_per_hour` of the pool;
2. `price_per_hour` of the cluster (for every pool without its own);
3. `[providers.<name>] prices`, by instance type;
4. the provider's own price (its dated table, the cloud's current spot price, or free).

A pool none of these prices has no price (`PoolPrice.quote` is None, `problem` says why).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fleet.config import FleetConfig
from fleet.errors import FleetError
from fleet.pricing import Price, Quote, configured, highest
from fleet.provider import Cluster, Provider, ProviderContext
from fleet.registry import provider_class

#: provider name -> the provider instance that answers for it
ProviderFor = Callable[[str], Provider[Any]]


@dataclass(frozen=True)
class PoolPrice:
    """One price a pool of a cluster launches at (one per type it may use)."""

    cluster: str
    pool: str
    provider: str
    quote: Quote | None
    #: why there is no quote ("" when there is one)
    problem: str = ""

    def as_json(self) -> dict[str, Any]:
        q = self.quote
        return {"cluster": self.cluster, "pool": self.pool, "provider": self.provider,
                "type": q.type if q else None, "region": q.region if q else None,
                "price": q.price.as_json() if q else None, "problem": self.problem}


def providers_of(config: FleetConfig) -> ProviderFor:
    """Provider instances by name, each built once, for this fleet (no wrappers: a price call
    is not one of the calls Fleet limits; providers cache what they ask the cloud)."""
    made: dict[str, Provider[Any]] = {}

    def get(name: str) -> Provider[Any]:
        if name not in made:
            made[name] = provider_class(name)(ProviderContext(config.fleet.id, config.state_dir))
        return made[name]

    return get


def overridden(quotes: list[Quote], per_hour: float | None, where: str, by_type: Mapping[str, float],
               provider: str) -> list[Quote]:
    """`quotes` with the operator's prices over them (see the module): `per_hour` (set at
    `where`) over all, else `by_type` over the types it names."""
    if per_hour is not None:
        if not quotes:
            return [Quote("", "", configured(per_hour, note=where))]
        return [q.priced(configured(per_hour, q.price.market, where)) for q in quotes]
    return [q.priced(configured(by_type[q.type], q.price.market, f"providers.{provider}.prices"))
            if q.type in by_type else q for q in quotes]


def pool_prices(config: FleetConfig, cluster: str, provider_for: ProviderFor | None = None) -> list[PoolPrice]:
    """Every price cluster `cluster`'s pools launch at, pools in order of preference, each
    pool's types preferred first. A provider's refusal (no type fits the hardware, no region)
    is that pool's `problem`, not an exception."""
    spec = config.spec(cluster)
    provider_for = provider_for or providers_of(config)
    out: list[PoolPrice] = []
    for pool in spec.pool_list:
        provider = provider_for(pool.provider)
        target = Cluster(config.fleet.id, cluster, spec.workers_per_container,
                         provider.validate_options(pool.provider_options), pool=pool.name)
        problem = ""
        try:
            quotes = list(provider.prices(target, spec.hardware))
        except FleetError as exc:
            quotes, problem = [], str(exc)
        per_hour: float | None = spec.price_per_hour
        where = f"clusters.{cluster}.price_per_hour"
        if pool.price_per_hour is not None and spec.pools:
            per_hour, where = pool.price_per_hour, f"clusters.{cluster}.pools.{spec.pools.index(pool)}.price_per_hour"
        quotes = overridden(quotes, per_hour, where, config.limits(pool.provider).prices, pool.provider)
        out += [PoolPrice(cluster, pool.name, pool.provider, q) for q in quotes] or [
            PoolPrice(cluster, pool.name, pool.provider, None, problem or "no price known: set price_per_hour")]
    return out


def price_of(config: FleetConfig, cluster: str, pool: str, provider_for: ProviderFor | None = None) -> Price | None:
    """What one container of pool `pool` of `cluster` costs per hour at most (the dearest type
    it may launch); None when no price is known."""
    quotes = [p.quote for p in pool_prices(config, cluster, provider_for) if p.pool == pool and p.quote]
    best = highest(quotes)
    return best.price if best else None
