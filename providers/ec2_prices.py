"""EC2 prices: a dated table of on-demand list prices (Linux, USD per instance-hour) of the
built-in catalogue's types per region, and spot prices asked of `DescribeSpotPriceHistory`,
cached for `SPOT_TTL` seconds.

The table is AWS's public on-demand price list as of `AS_OF` (https://aws.amazon.com/ec2/pricing/
on-demand/), copied by hand: refresh it (and `AS_OF`) from that page or from the Price List API
(`aws pricing get-products --service-code AmazonEC2`). Spot prices move by the hour: the table
holds none; a spot pool whose spot price cannot be had is priced at the on-demand price, with a
note saying why (it never pays more: the default spot cap is the on-demand price).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any

AS_OF = date(2025, 1, 1)
#: the region whose prices order the built-in catalogue (`providers.ec2_options.DEFAULT_CATALOGUE`)
REFERENCE_REGION = "us-east-1"
#: seconds a DescribeSpotPriceHistory answer is used for
SPOT_TTL = 600.0

_SIZES = {"large": 1, "xlarge": 2, "2xlarge": 4, "4xlarge": 8, "8xlarge": 16}
#: per region: the `large` size of each family whose price grows with size, then the others
_TABLE: dict[str, tuple[dict[str, float], dict[str, float]]] = {
    "us-east-1": ({"c6i": 0.085, "m6i": 0.096, "r6i": 0.126},
                  {"t3.micro": 0.0104, "t3.small": 0.0208, "t3.medium": 0.0416,
                   "g4dn.xlarge": 0.526, "g4dn.2xlarge": 0.752, "g4dn.12xlarge": 3.912}),
    "us-west-2": ({"c6i": 0.085, "m6i": 0.096, "r6i": 0.126},
                  {"t3.micro": 0.0104, "t3.small": 0.0208, "t3.medium": 0.0416,
                   "g4dn.xlarge": 0.526, "g4dn.2xlarge": 0.752, "g4dn.12xlarge": 3.912}),
    "eu-west-1": ({"c6i": 0.096, "m6i": 0.107, "r6i": 0.141},
                  {"t3.micro": 0.0114, "t3.small": 0.0228, "t3.medium": 0.0456,
                   "g4dn.xlarge": 0.587, "g4dn.2xlarge": 0.838, "g4dn.12xlarge": 4.362}),
    "eu-central-1": ({"c6i": 0.097, "m6i": 0.115, "r6i": 0.152},
                     {"t3.micro": 0.012, "t3.small": 0.024, "t3.medium": 0.048,
                      "g4dn.xlarge": 0.658, "g4dn.2xlarge": 0.94, "g4dn.12xlarge": 4.893}),
}
#: region -> instance type -> on-demand USD per hour, as of AS_OF
ON_DEMAND: dict[str, dict[str, float]] = {
    region: {**{f"{family}.{size}": round(large * times, 4) for family, large in families.items()
                for size, times in _SIZES.items()}, **others}
    for region, (families, others) in _TABLE.items()
}


def on_demand(region: str, instance_type: str) -> float | None:
    """The table's on-demand price of `instance_type` in `region`; None when it has none."""
    return ON_DEMAND.get(region, {}).get(instance_type)


class SpotPrices:
    """Current spot prices from DescribeSpotPriceHistory, per (endpoint, region, type), each kept
    for `ttl` seconds. Thread-safe; a failed call is not cached (the next asks again)."""

    def __init__(self, ttl: float = SPOT_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str, str], tuple[float, float, date]] = {}

    def get(self, client: Any, key: str, types: Sequence[str]) -> dict[str, tuple[float, date]]:
        """type -> (USD per hour, the date of that price) for each of `types` EC2 has a spot price
        for: the highest of the newest per availability zone. `key` names the client's endpoint.
        Raises what the client raises (botocore errors)."""
        region = str(client.meta.region_name)
        now = self._clock()
        with self._lock:
            fresh = {t: self._cache[(key, region, t)] for t in types
                     if (key, region, t) in self._cache and self._cache[(key, region, t)][0] > now}
        missing = [t for t in types if t not in fresh]
        if missing:
            found = newest(client, missing)
            with self._lock:
                for t, (price, when) in found.items():
                    self._cache[(key, region, t)] = fresh[t] = (now + self.ttl, price, when)
        return {t: (price, when) for t, (_, price, when) in fresh.items()}


def newest(client: Any, types: Sequence[str]) -> dict[str, tuple[float, date]]:
    """One DescribeSpotPriceHistory (paginated) for Linux `types` from now: per type, the highest
    of each availability zone's newest price, with its date."""
    per_zone: dict[tuple[str, str], tuple[Any, float]] = {}
    pages = client.get_paginator("describe_spot_price_history").paginate(
        InstanceTypes=list(types), ProductDescriptions=["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
        StartTime=datetime.now(UTC), PaginationConfig={"PageSize": 1000})
    for page in pages:
        for item in page.get("SpotPriceHistory", []):
            where = (str(item.get("InstanceType")), str(item.get("AvailabilityZone")))
            try:
                price = float(item["SpotPrice"])
            except (KeyError, TypeError, ValueError):
                continue  # not a price: the other zones still answer
            stamp = item.get("Timestamp")
            if where not in per_zone or (stamp is not None and per_zone[where][0] is not None
                                         and stamp > per_zone[where][0]):
                per_zone[where] = (stamp, price)
    out: dict[str, tuple[float, date]] = {}
    for (itype, _), (stamp, price) in per_zone.items():
        when = stamp.date() if hasattr(stamp, "date") else date.today()
        if itype not in out or price > out[itype][0]:
            out[itype] = (price, when)
    return out
