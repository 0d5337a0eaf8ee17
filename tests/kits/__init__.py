"""Provider kits: a function-scoped fixture `<provider>_kit` per provider yielding a
`fleet.testing.Kit` (and the session-scoped fixtures that start its real backend: a moto server,
podman's Docker API, the fake GCE server). `tests/conftest.py` loads every module as a pytest
plugin."""

from fleet.testing.kits import Kit, cleanup, clusters, fleet_ids

__all__ = ["Kit", "cleanup", "clusters", "fleet_ids"]
