"""Fargate prices: a dated table of the per-vCPU-hour and per-GiB-hour prices (Linux/x86, USD) of
Fargate and Fargate Spot per region, and the price of one task of a size from them.

On-demand prices are AWS's public list prices as of `AS_OF` (https://aws.amazon.com/fargate/
pricing/); Fargate Spot prices move with spare capacity: the table's are estimates from the same
date. Refresh both (and `AS_OF`) from that page or the Price List API (`aws pricing get-products
--service-code AmazonECS`).
"""

from __future__ import annotations

from datetime import date

AS_OF = date(2025, 1, 1)

#: region -> (USD per vCPU-hour, USD per GiB-hour) on demand, as of AS_OF
ON_DEMAND: dict[str, tuple[float, float]] = {
    "us-east-1": (0.04048, 0.004445),
    "us-east-2": (0.04048, 0.004445),
    "us-west-2": (0.04048, 0.004445),
    "eu-west-1": (0.04048, 0.004445),
    "eu-central-1": (0.04656, 0.00511),
}
#: region -> (USD per vCPU-hour, USD per GiB-hour) on Fargate Spot (estimates), as of AS_OF
SPOT: dict[str, tuple[float, float]] = {
    "us-east-1": (0.01334053, 0.00146489),
    "us-east-2": (0.01334053, 0.00146489),
    "us-west-2": (0.01334053, 0.00146489),
    "eu-west-1": (0.01334053, 0.00146489),
    "eu-central-1": (0.01534384, 0.00168463),
}


def task_price(region: str, cpu_units: int, memory_mib: int, spot: bool) -> float | None:
    """USD per hour of one task of `cpu_units` (1024 = 1 vCPU) and `memory_mib` in `region`;
    None when the table has no price there."""
    rates = (SPOT if spot else ON_DEMAND).get(region)
    if rates is None:
        return None
    vcpu, gib = rates
    return round(cpu_units / 1024 * vcpu + memory_mib / 1024 * gib, 6)
