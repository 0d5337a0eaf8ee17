"""The hourly caps a config sets (docs/budgets.md: Caps): `max_hourly_cost` on a cluster, on a
group (`[groups.<name>]`) and on the fleet, each in USD per hour of run rate, and their checks
when the config is loaded. (`fleet.config` imports this module, so it takes the config as it
comes, untyped; what the caps do at run time: `fleet.budget`.)

A cap covers clusters: a cluster's its own, a group's every cluster naming the group, the fleet's
every cluster. Every pool of a cluster a cap covers must have a price, as `fleet.pool_prices`
finds it (a `price_per_hour`, or a quote of its provider): a cap over a pool without one is a
configuration error naming the cap's field. Free providers (local, docker) price at 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from fleet.errors import ConfigError, FleetError
from fleet.provider import Cluster, ProviderContext
from fleet.registry import provider_class

#: a cap on a run rate, USD per hour (`max_hourly_cost`)
HourlyCap = Annotated[float, Field(gt=0, le=1_000_000_000, allow_inf_nan=False)]


class GroupSpec(BaseModel):
    """`[groups.<name>]`: what the clusters naming the group share."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: USD/h the run rate of the group's clusters together may not pass
    max_hourly_cost: HourlyCap | None = None


@dataclass(frozen=True)
class Cap:
    """One cap: `name` ("cluster a", "group g", "fleet"), `field` (its config field), `usd` (USD/h)
    and the clusters it covers."""

    name: str
    field: str
    usd: float
    clusters: tuple[str, ...]


def all_caps(config: Any) -> list[Cap]:
    """Every cap the config sets."""
    out: list[Cap] = []
    for name, spec in config.clusters.items():
        if spec.max_hourly_cost is not None:
            out.append(Cap(f"cluster {name}", f"clusters.{name}.max_hourly_cost", spec.max_hourly_cost, (name,)))
    for group, g in config.groups.items():
        if g.max_hourly_cost is not None:
            members = tuple(c for c, s in config.clusters.items() if s.group == group)
            out.append(Cap(f"group {group}", f"groups.{group}.max_hourly_cost", g.max_hourly_cost, members))
    if config.fleet.max_hourly_cost is not None:
        out.append(Cap("fleet", "fleet.max_hourly_cost", config.fleet.max_hourly_cost, tuple(config.clusters)))
    return out


def caps_over(config: Any, cluster: str) -> list[Cap]:
    """The caps that cover `cluster`, its own first, the fleet's last."""
    return [c for c in all_caps(config) if cluster in c.clusters]


def unpriced(config: Any, cluster: str) -> tuple[str, str] | None:
    """(pool, why) of the first pool of `cluster` (a `FleetConfig`'s) without a price, or None
    when every pool has one (as `fleet.pool_prices.pool_prices`: a price_per_hour wins; else
    the provider's quotes, which `[providers.<name>] prices` only reprice)."""
    spec = config.spec(cluster)
    for pool in spec.pool_list:
        if spec.price_per_hour is not None or (spec.pools and pool.price_per_hour is not None):
            continue
        provider = provider_class(pool.provider)(ProviderContext(config.fleet.id, config.state_dir))
        target = Cluster(config.fleet.id, cluster, spec.workers_per_container,
                         provider.validate_options(pool.provider_options), pool=pool.name)
        try:
            if not provider.prices(target, spec.hardware):
                return pool.name, "no price known: set price_per_hour"
        except FleetError as exc:
            return pool.name, str(exc)
    return None


def check_caps(config: Any) -> None:
    """A ConfigError naming the cap's field when a cap of `config` (a `FleetConfig`) covers a
    pool without a price."""
    seen: dict[str, tuple[str, str] | None] = {}
    for cap in all_caps(config):
        for cluster in cap.clusters:
            if cluster not in seen:
                seen[cluster] = unpriced(config, cluster)
            if (bad := seen[cluster]) is not None:
                pool = f" pool {bad[0]!r}" if bad[0] else ""
                raise ConfigError(f"{config.source}: {cap.field}: cluster {cluster!r}{pool} has no price "
                                  f"({bad[1]}): a cap needs a price for every pool it covers")
