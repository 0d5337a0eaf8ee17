"""Kits: what the provider contract suite needs to run against one provider."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from fleet.provider import Cluster, ContainerSpec, Hardware, Provider


@dataclass
class Kit:
    """One provider, ready to be tested: an instance, two clusters of the same name under two
    fleet ids (3 workers per container), a container its workers can run, provider options it
    must refuse and the field its refusal must name."""

    provider: Provider[Any]
    cluster: Cluster[Any]  # 3 workers per container
    other: Cluster[Any]  # the same cluster name under another fleet id
    container: ContainerSpec
    bad_options: dict[str, Any]  # provider_options the provider must refuse
    bad_field: str  # the field name its error must mention
    hardware: Hardware = field(default_factory=lambda: Hardware(cpu=0.25, memory_mb=512))


def fleet_ids() -> tuple[str, str]:
    """Two fresh fleet ids (lowercase: GCE labels allow nothing else)."""
    token = uuid.uuid4().hex[:8]
    return f"c{token}", f"o{token}"


def clusters(options: Any, name: str = "contract") -> tuple[Cluster[Any], Cluster[Any]]:
    """A kit's two clusters: `name` under two fresh fleet ids, 3 workers per container."""
    mine, other = fleet_ids()
    return Cluster(mine, name, 3, options), Cluster(other, name, 3, options)


def cleanup(kit: Kit) -> None:
    """Kill whatever the kit's clusters still have (call it when a test is done). It finds them
    with `list_workers`: the kit of a provider that cannot list kills its workers itself."""
    for c in (kit.cluster, kit.other):
        left = kit.provider.list_workers(c) or {}
        if left:
            kit.provider.kill_workers(c, list(left))
