"""Kit for the in-memory provider."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.provider import ContainerSpec, ProviderContext
from fleet.testing.kits import Kit, cleanup, clusters
from providers.memory import MemoryProvider


@pytest.fixture
def memory_kit(tmp_path: Path) -> Iterator[Kit]:
    cluster, other = clusters(MemoryProvider.validate_options({}))
    kit = Kit(MemoryProvider(ProviderContext(cluster.fleet_id, tmp_path)), cluster, other,
              ContainerSpec(command=("worker",)), {"boot_seconds": -1}, "boot_seconds")
    yield kit
    cleanup(kit)
