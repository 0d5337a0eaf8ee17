"""The `aws_ec2` provider's options (`EC2Options`) and its choice of instance types: the built-in
catalogue, and the types one launch may use (`launch_types`), cheapest fit first."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from fleet.catalogue import InstanceType, cheapest_fit, eligible
from fleet.errors import CapacityError
from fleet.provider import Hardware
from providers._aws import AwsOptions
from providers.ec2_prices import ON_DEMAND, REFERENCE_REGION

#: The built-in catalogue: (name, vCPUs, memory MiB, GPUs); each type's price is its on-demand
#: list price in the table's reference region (`providers.ec2_prices`), which orders the choice.
_TYPES = [
    ("t3.micro", 2, 1024, 0), ("t3.small", 2, 2048, 0), ("t3.medium", 2, 4096, 0),
    ("c6i.large", 2, 4096, 0), ("m6i.large", 2, 8192, 0), ("r6i.large", 2, 16384, 0),
    ("c6i.xlarge", 4, 8192, 0), ("m6i.xlarge", 4, 16384, 0), ("r6i.xlarge", 4, 32768, 0),
    ("c6i.2xlarge", 8, 16384, 0), ("m6i.2xlarge", 8, 32768, 0), ("r6i.2xlarge", 8, 65536, 0),
    ("c6i.4xlarge", 16, 32768, 0), ("m6i.4xlarge", 16, 65536, 0),
    ("c6i.8xlarge", 32, 65536, 0), ("m6i.8xlarge", 32, 131072, 0),
    ("g4dn.xlarge", 4, 16384, 1), ("g4dn.2xlarge", 8, 32768, 1), ("g4dn.12xlarge", 48, 196608, 4),
]
DEFAULT_CATALOGUE: tuple[InstanceType, ...] = tuple(
    InstanceType(name=n, cpu=c, memory_mb=m, gpus=g, price=ON_DEMAND[REFERENCE_REGION][n]) for n, c, m, g in _TYPES)

#: catalogue types one launch may use by default: spot wants diversity, on-demand the cheapest fit
DEFAULT_MAX_TYPES = {"spot": 6, "on-demand": 1}


class EC2Options(AwsOptions):
    ami: str = Field(min_length=1, description="AMI id the instances boot")
    instance_type: str | None = Field(default=None, min_length=1, description="explicit type; else from catalogue")
    instance_types: tuple[str, ...] | None = Field(default=None, min_length=1, max_length=50,
                                                   description="explicit types, preferred first, for one EC2 Fleet")
    catalogue: tuple[InstanceType, ...] = Field(default=DEFAULT_CATALOGUE, min_length=1,
                                                description="types to choose the cheapest fitting one from")
    max_types: int | None = Field(default=None, ge=1, le=50,
                                  description="catalogue types one launch may use; default 6 spot, 1 on-demand")
    market: Literal["on-demand", "spot"] = Field(default="on-demand", description="purchasing option")
    spot_max_price: str | None = Field(default=None, pattern=r"^[0-9]+(\.[0-9]+)?$",
                                       description="highest spot price per instance-hour (USD); default on-demand's")
    interruption_queue_url: str | None = Field(default=None, description="SQS queue of the cluster's spot notices")
    sqs_endpoint_url: str | None = Field(default=None, description="SQS endpoint override; default endpoint_url")
    subnet_id: str | None = Field(default=None, min_length=1, description="subnet to launch in")
    security_group_ids: tuple[str, ...] = Field(default=(), description="security groups of the instances")
    iam_instance_profile: str | None = Field(default=None, min_length=1, description="instance profile name or ARN")
    key_name: str | None = Field(default=None, min_length=1, description="SSH key pair name")
    batch_size: int = Field(default=100, ge=1, le=1000, description="instances per RunInstances/CreateFleet call")
    page_size: int = Field(default=1000, ge=5, le=1000, description="DescribeInstances page size")

    @field_validator("interruption_queue_url", "sqs_endpoint_url")
    @classmethod
    def _urls(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("instance_types")
    @classmethod
    def _distinct(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and (len(set(value)) != len(value) or not all(value)):
            raise ValueError("instance_types must be distinct, non-empty names")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> EC2Options:
        if self.instance_type and self.instance_types:
            raise ValueError("give instance_type or instance_types, not both")
        if self.spot_max_price is not None and self.market != "spot":
            raise ValueError("spot_max_price needs market = \"spot\"")
        return self


def instance_type(opts: EC2Options, hardware: Hardware, exclude: frozenset[str] = frozenset()) -> str:
    """The explicit type, else the cheapest catalogue type that fits `hardware` and is not
    excluded (Fleet excludes the types that just had no capacity)."""
    return opts.instance_type or cheapest_fit(opts.catalogue, hardware, exclude).name


def launch_types(opts: EC2Options, hardware: Hardware, exclude: frozenset[str] = frozenset()) -> list[str]:
    """The types a launch may use, preferred first; more than one means an EC2 Fleet.
    `instance_type`: that one. `instance_types`: those not excluded (a CapacityError naming
    none when all are). Else the `max_types` cheapest catalogue types that fit."""
    if opts.instance_type:
        return [opts.instance_type]
    if opts.instance_types:
        left = [t for t in opts.instance_types if t not in exclude]
        if not left:
            raise CapacityError(f"every type of instance_types is out of capacity: {', '.join(sorted(exclude))}")
        return left
    most = opts.max_types or DEFAULT_MAX_TYPES[opts.market]
    if most == 1:
        return [instance_type(opts, hardware, exclude)]
    return [t.name for t in eligible(opts.catalogue, hardware, exclude)[:most]] or [
        instance_type(opts, hardware, exclude)]  # raises: none fits, or all are excluded
