"""Prices of what a fleet runs, with where each came from and how old it is: the cloud-neutral
model providers answer in (`Provider.prices`) and budgets build on.

A `Price` is US dollars per hour for one worker container (or VM) of a pool, on one market, with
its `source` and the date it was true (`as_of`):

* "table": a list price shipped with Fleet (a provider's dated table, `AS_OF` in its module);
* "config": the operator's (`price_per_hour` of a cluster or pool, `[providers.<name>] prices`,
  or the `price` of a type of a `provider_options.catalogue` no table knows);
* "DescribeSpotPriceHistory": EC2's current spot price, asked of the cloud;
* "free": the container costs nothing Fleet can see (`local`, `docker`).

`note` says more when the price is a stand-in (the on-demand price of a spot pool whose spot price
could not be had, and why; another region's price). This module imports nothing of Fleet's:
`fleet.pool_prices` applies the config's overrides over what providers answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

Market = Literal["on-demand", "spot"]
#: the sources Fleet's own providers give (a third-party provider may name another)
SOURCES = ("table", "config", "DescribeSpotPriceHistory", "free")


@dataclass(frozen=True)
class Price:
    """USD per hour of one container/VM on `market`, as of `as_of`, from `source` (see the module)."""

    per_hour: float
    source: str
    as_of: date
    market: Market = "on-demand"
    #: why this price stands in for another, if it does ("" when it is the price itself)
    note: str = ""

    def __post_init__(self) -> None:
        if not (isinstance(self.per_hour, int | float) and math.isfinite(self.per_hour) and self.per_hour >= 0):
            raise ValueError(f"a price per hour must be a finite number >= 0, got {self.per_hour!r}")
        if not self.source:
            raise ValueError("a price needs a source")
        if self.market not in ("on-demand", "spot"):
            raise ValueError(f"market must be on-demand or spot, got {self.market!r}")

    @property
    def described(self) -> str:
        """The source, with the note if there is one: what a person reads."""
        return f"{self.source} ({self.note})" if self.note else self.source

    def as_json(self) -> dict[str, Any]:
        return {"per_hour": self.per_hour, "market": self.market, "source": self.source,
                "as_of": self.as_of.isoformat(), "note": self.note}


@dataclass(frozen=True)
class Quote:
    """The price of one container/VM of one kind a pool may launch: `type` is the instance or
    machine type ("m6i.large"), a Fargate size ("FARGATE 1024/2048"), or "" when the provider has
    no types; `region` is where the price holds ("" when it holds anywhere)."""

    type: str
    region: str
    price: Price

    def priced(self, price: Price) -> Quote:
        """The same kind of container at another price (an override)."""
        return Quote(self.type, self.region, price)


def free(market: Market = "on-demand") -> Price:
    """What a container costs when the provider runs it on machines Fleet does not pay for."""
    return Price(0.0, "free", date.today(), market)


def configured(per_hour: float, market: Market = "on-demand", note: str = "") -> Price:
    """The operator's price, in force today."""
    return Price(float(per_hour), "config", date.today(), market, note)


def highest(quotes: Iterable[Quote]) -> Quote | None:
    """The dearest of `quotes` (what one container of a pool costs at most, whichever type it is
    launched as); None when there is none."""
    return max(quotes, key=lambda q: q.price.per_hour, default=None)
