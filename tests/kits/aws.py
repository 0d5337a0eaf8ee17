"""Kits for the aws_ec2 and aws_ecs providers, against one moto server (EC2 + ECS) per session
(`fleet.testing.backends.aws`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.provider import ContainerSpec, ProviderContext
from fleet.testing.backends.aws import FAKE_ENV, REGION, AwsWorld, moto_world
from fleet.testing.kits import Kit, cleanup, clusters

__all__ = ["FAKE_ENV", "REGION", "AwsWorld", "moto_world"]


@pytest.fixture(scope="session")
def aws_world() -> Iterator[AwsWorld]:
    with moto_world() as world:
        yield world


@pytest.fixture
def aws_ec2_kit(aws_world: AwsWorld, tmp_path: Path) -> Iterator[Kit]:
    from providers.aws_ec2 import EC2Provider

    cluster, other = clusters(EC2Provider.validate_options(aws_world.ec2_options()))
    kit = Kit(EC2Provider(ProviderContext(cluster.fleet_id, tmp_path)), cluster, other,
              ContainerSpec(command=("celery", "-A", "tasks", "worker"), image="fleet-worker:test"),
              {"ami": "ami-1", "batch_size": 0}, "batch_size")
    yield kit
    cleanup(kit)


@pytest.fixture
def aws_ecs_kit(aws_world: AwsWorld, tmp_path: Path) -> Iterator[Kit]:
    from providers.aws_ecs import ECSProvider

    cluster, other = clusters(ECSProvider.validate_options(aws_world.ecs_options()))
    kit = Kit(ECSProvider(ProviderContext(cluster.fleet_id, tmp_path)), cluster, other,
              ContainerSpec(command=("celery", "-A", "tasks", "worker")),
              {"cluster": "c", "task_definition": "t", "subnets": []}, "subnets")
    yield kit
    cleanup(kit)
