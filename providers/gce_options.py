"""The `gce` provider's options (`GCEOptions`) and its built-in catalogue of machine types."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleet.catalogue import InstanceType
from providers.gce_prices import ON_DEMAND, REFERENCE_REGION

#: The built-in catalogue: (name, vCPUs, memory MiB, GPUs); each type's price is its on-demand
#: list price in the table's reference region (`providers.gce_prices`), which orders the choice.
_TYPES = [
    ("e2-micro", 0.25, 1024, 0), ("e2-small", 0.5, 2048, 0), ("e2-medium", 1, 4096, 0),
    ("e2-highcpu-2", 2, 2048, 0), ("e2-standard-2", 2, 8192, 0), ("e2-highmem-2", 2, 16384, 0),
    ("e2-highcpu-4", 4, 4096, 0), ("e2-standard-4", 4, 16384, 0), ("e2-highmem-4", 4, 32768, 0),
    ("e2-highcpu-8", 8, 8192, 0), ("e2-standard-8", 8, 32768, 0), ("e2-highmem-8", 8, 65536, 0),
    ("e2-standard-16", 16, 65536, 0), ("e2-standard-32", 32, 131072, 0),
    ("n2-standard-2", 2, 8192, 0), ("n2-standard-4", 4, 16384, 0), ("n2-standard-8", 8, 32768, 0),
    ("n2-standard-16", 16, 65536, 0), ("n2-standard-32", 32, 131072, 0),
    ("n2-standard-64", 64, 262144, 0), ("n2-highmem-64", 64, 524288, 0),
    ("a2-highgpu-1g", 12, 87040, 1),
]
DEFAULT_CATALOGUE: tuple[InstanceType, ...] = tuple(
    InstanceType(name=n, cpu=c, memory_mb=m, gpus=g, price=ON_DEMAND[REFERENCE_REGION][n]) for n, c, m, g in _TYPES)


class GCEOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str = Field(min_length=1, description="Google Cloud project id")
    zone: str = Field(min_length=1, description="zone of the instances, e.g. europe-west1-b")
    source_image: str = Field(min_length=1,
                              description="boot image, e.g. projects/debian-cloud/global/images/family/debian-12")
    machine_type: str | None = Field(default=None, min_length=1,
                                     description="explicit machine type; else chosen from catalogue")
    catalogue: tuple[InstanceType, ...] = Field(default=DEFAULT_CATALOGUE, min_length=1,
                                                description="machine types to choose the cheapest fitting one from")
    network: str = Field(default="global/networks/default", min_length=1, description="VPC network")
    subnetwork: str | None = Field(default=None, description="subnetwork (regions/R/subnetworks/S)")
    external_ip: bool = Field(default=True, description="give each VM an ephemeral external IP")
    service_account_email: str | None = Field(default=None, description="service account the VMs run as")
    scopes: tuple[str, ...] = Field(default=("https://www.googleapis.com/auth/cloud-platform",),
                                    description="OAuth scopes of the service account")
    disk_size_gb: int = Field(default=20, ge=10, le=65536, description="boot disk size")
    market: Literal["standard", "spot", "preemptible"] = Field(
        default="standard", description="standard, spot (Spot VMs, deleted when preempted) or preemptible VMs")
    preemptible: bool = Field(default=False, description="preemptible VMs (market = preemptible)")
    spot: bool = Field(default=False, description="Spot VMs (market = spot)")
    api_endpoint: str | None = Field(default=None, pattern=r"^https?://",
                                     description="Compute API endpoint, scheme included")
    anonymous: bool = Field(default=False, description="anonymous credentials: only for a local fake server")
    page_size: int = Field(default=500, ge=1, le=500, description="instances per list page")
    operation_timeout: float = Field(default=60.0, ge=0, le=3600, description="bounded wait for operations, seconds")
    retry_deadline: float = Field(default=30.0, ge=0, le=600,
                                  description="api_core retry deadline for transient errors, seconds")

    @model_validator(mode="after")
    def _one_provisioning_model(self) -> GCEOptions:
        """`spot` / `preemptible` are the older spelling of `market`: the result's `market` says
        which provisioning model to use, and a contradiction is an error."""
        if self.preemptible and self.spot:
            raise ValueError("spot and preemptible: choose one")
        flagged = "spot" if self.spot else "preemptible" if self.preemptible else None
        if flagged is None or self.market == flagged:
            return self
        if "market" in self.model_fields_set:
            raise ValueError(f"{flagged} = true contradicts market = {self.market!r}: set market alone")
        return self.model_copy(update={"market": flagged})

