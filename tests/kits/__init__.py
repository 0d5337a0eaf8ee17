"""Provider kits: what the provider contract suite needs to run against one provider.

Each provider has a module here defining a function-scoped fixture `<provider>_kit` that yields a
`Kit` (and whatever session-scoped fixtures start its real backend: a moto server, podman's
Docker API, the fake GCE server). `tests/conftest.py` loads every module as a pytest plugin.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from fleet.provider import Cluster, ContainerSpec, Hardware, Provider


@dataclass
class Kit:
    provider: Provider
    cluster: Cluster  # 3 workers per container
    other: Cluster  # the same cluster name under another fleet id
    container: ContainerSpec
    bad_options: dict[str, Any]  # provider_options the provider must refuse
    bad_field: str  # the field name its error must mention
    hardware: Hardware = field(default_factory=lambda: Hardware(cpu=0.25, memory_mb=512))


def fleet_ids() -> tuple[str, str]:
    """Two fresh fleet ids (lowercase: GCE labels allow nothing else)."""
    token = uuid.uuid4().hex[:8]
    return f"c{token}", f"o{token}"


def clusters(options: Any) -> tuple[Cluster, Cluster]:
    mine, other = fleet_ids()
    return Cluster(mine, "contract", 3, options), Cluster(other, "contract", 3, options)


def cleanup(kit: Kit) -> None:
    for c in (kit.cluster, kit.other):
        left = kit.provider.list_workers(c) or {}
        if left:
            kit.provider.kill_workers(c, list(left))
