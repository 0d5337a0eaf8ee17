"""Kit for the gce provider: google-cloud-compute's REST client against the fake Compute server
of fleet.testing.backends.gce (anonymous credentials, `api_endpoint` on loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.provider import ContainerSpec, ProviderContext
from fleet.testing.backends.gce import FakeGCE
from fleet.testing.kits import Kit, cleanup, clusters
from providers.gce import GCEProvider

PROJECT, ZONE = "fleet-test", "test-zone-a"


@pytest.fixture(scope="session")
def gce_server() -> Iterator[tuple[FakeGCE, str]]:
    """One fake Compute server for the whole session: (its state, its endpoint URL)."""
    fake = FakeGCE()
    url = fake.start()
    yield fake, url
    fake.stop()


def gce_options(url: str, **extra: Any) -> dict[str, Any]:
    return {"project": PROJECT, "zone": ZONE, "api_endpoint": url, "anonymous": True,
            "source_image": "projects/debian-cloud/global/images/family/debian-12",
            "operation_timeout": 10, "retry_deadline": 2, **extra}


@pytest.fixture
def gce_kit(gce_server: tuple[FakeGCE, str], tmp_path: Path) -> Iterator[Kit]:
    fake, url = gce_server
    fake.clear_faults()
    # RUNNING from the first read: the contract suite compares statuses across several calls
    fake.ready_after_reads = 0
    cluster, other = clusters(GCEProvider.validate_options(gce_options(url)))
    kit = Kit(GCEProvider(ProviderContext(cluster.fleet_id, tmp_path)), cluster, other,
              ContainerSpec(command=("celery", "-A", "tasks", "worker", "--concurrency", "${FLEET_WORKERS}")),
              {"project": "p", "zone": "z", "source_image": "i", "page_size": 0}, "page_size")
    yield kit
    fake.clear_faults()
    cleanup(kit)
