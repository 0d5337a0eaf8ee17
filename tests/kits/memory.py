"""Kit for the in-memory provider."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from fleet.provider import ContainerSpec, ProviderContext
from providers.memory import MemoryProvider
from tests.kits import Kit, cleanup, clusters


@pytest.fixture
def memory_kit(tmp_path: Path) -> Iterator[Kit]:
    cluster, other = clusters(MemoryProvider.validate_options({}))
    kit = Kit(MemoryProvider(ProviderContext(cluster.fleet_id, tmp_path)), cluster, other,
              ContainerSpec(command=("worker",)), {"boot_seconds": -1}, "boot_seconds")
    yield kit
    cleanup(kit)
