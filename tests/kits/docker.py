"""Kit for the docker provider, against podman's Docker Engine API service
(`fleet.testing.backends.podman`), started once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.provider import ContainerSpec, ProviderContext
from fleet.testing.backends.podman import IMAGE, Podman, ensure_podman, podman_missing, podman_service
from fleet.testing.kits import Kit, cleanup, clusters
from providers.docker import DockerProvider

__all__ = ["IMAGE", "Podman", "podman_missing", "podman_service"]


@pytest.fixture(scope="session")
def podman() -> Iterator[Podman]:
    """podman's Docker API on a private socket, with the test image imported; torn down after."""
    try:
        ensure_podman()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    with podman_service("fleet-test.session") as backend:
        yield backend


def docker_options(backend: Podman, **extra: Any) -> Any:
    """Validated provider options pointing at the session's podman, with the session label."""
    return DockerProvider.validate_options({"base_url": backend.base_url, "labels": backend.labels,
                                            "timeout": 30, **extra})


@pytest.fixture
def docker_kit(podman: Podman, tmp_path: Path) -> Iterator[Kit]:
    cluster, other = clusters(docker_options(podman))
    kit = Kit(DockerProvider(ProviderContext(cluster.fleet_id, tmp_path)), cluster, other,
              ContainerSpec(image=podman.image, command=("sleep", "3600")), {"timeout": -1}, "timeout")
    yield kit
    cleanup(kit)
