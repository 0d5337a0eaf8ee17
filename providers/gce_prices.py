"""GCE prices: a dated table of on-demand and spot prices (USD per VM-hour, Linux, no sustained or
committed use discounts) of the built-in catalogue's machine types per region.

On-demand prices are Google's public list prices as of `AS_OF`
(https://cloud.google.com/compute/vm-instance-pricing); spot prices move (up to once a month):
the table's are estimates from the same date, each family's on-demand price times its spot share
(`SPOT_SHARE`). Refresh both (and `AS_OF`) from that page or the Cloud Billing Catalog API
(`gcloud billing skus list`, service Compute Engine).
"""

from __future__ import annotations

from datetime import date

AS_OF = date(2025, 1, 1)
#: the region whose prices order the built-in catalogue (`providers.gce_options.DEFAULT_CATALOGUE`)
REFERENCE_REGION = "us-central1"

#: us-central1 on-demand USD per hour
_US_CENTRAL1 = {
    "e2-micro": 0.0084, "e2-small": 0.0168, "e2-medium": 0.0335,
    "e2-highcpu-2": 0.0495, "e2-standard-2": 0.0670, "e2-highmem-2": 0.0904,
    "e2-highcpu-4": 0.0990, "e2-standard-4": 0.1340, "e2-highmem-4": 0.1808,
    "e2-highcpu-8": 0.1980, "e2-standard-8": 0.2681, "e2-highmem-8": 0.3616,
    "e2-standard-16": 0.5362, "e2-standard-32": 1.0723,
    "n2-standard-2": 0.0971, "n2-standard-4": 0.1942, "n2-standard-8": 0.3885,
    "n2-standard-16": 0.7769, "n2-standard-32": 1.5539, "n2-standard-64": 3.1078, "n2-highmem-64": 4.1920,
    "a2-highgpu-1g": 3.6731,
}
#: regions priced as a multiple of us-central1 (E2 and N2 keep one ratio per region), and the
#: families each region offers
_REGIONS: dict[str, tuple[float, tuple[str, ...]]] = {
    "us-central1": (1.0, ("e2", "n2", "a2")),
    "us-east1": (1.0, ("e2", "n2", "a2")),
    "us-west1": (1.0, ("e2", "n2", "a2")),
    "europe-west1": (1.0987, ("e2", "n2")),
    "europe-west4": (1.0987, ("e2", "n2")),
}
#: spot price as a share of the on-demand price, per family (an estimate as of AS_OF)
SPOT_SHARE = {"e2": 0.30, "n2": 0.24, "a2": 0.30}

#: region -> machine type -> on-demand USD per hour, as of AS_OF
ON_DEMAND: dict[str, dict[str, float]] = {
    region: {name: round(price * ratio, 4) for name, price in _US_CENTRAL1.items() if name.split("-")[0] in families}
    for region, (ratio, families) in _REGIONS.items()
}
#: region -> machine type -> spot USD per hour (estimates), as of AS_OF
SPOT: dict[str, dict[str, float]] = {
    region: {name: round(price * SPOT_SHARE[name.split("-")[0]], 4) for name, price in prices.items()}
    for region, prices in ON_DEMAND.items()
}


def price(region: str, machine_type: str, spot: bool) -> float | None:
    """The table's price of `machine_type` in `region` (spot or on-demand); None when it has none."""
    return (SPOT if spot else ON_DEMAND).get(region, {}).get(machine_type)
