"""Kit for the local provider: real processes on this machine."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.provider import ContainerSpec, ProviderContext
from fleet.testing.kits import Kit, cleanup, clusters
from providers.local import LocalProvider


@pytest.fixture
def local_kit(tmp_path: Path) -> Iterator[Kit]:
    cluster, other = clusters(LocalProvider.validate_options({"kill_grace": 2}))
    kit = Kit(LocalProvider(ProviderContext(cluster.fleet_id, tmp_path)), cluster, other,
              ContainerSpec(command=(sys.executable, "-c", "import time; time.sleep(3600)")),
              {"kill_grace": "soon"}, "kill_grace")
    yield kit
    cleanup(kit)
