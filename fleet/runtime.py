"""Where a process finds its config and its Redis."""

from __future__ import annotations

from fleet.config import FleetConfig
from fleet.embedded import running_url
from fleet.errors import NoRedis


def resolve_redis_url(config: FleetConfig) -> str:
    """FLEET_REDIS_URL, else `fleet.redis_url`, else the running embedded Redis of this fleet."""
    url = config.redis_url or running_url(config.state_dir)
    if not url:
        raise NoRedis(
            "no Redis configured: set FLEET_REDIS_URL or fleet.redis_url, "
            f"or start the embedded one with `fleet up` (state folder {config.state_dir})"
        )
    return url


def control_queue(fleet_id: str) -> str:
    """Queue of the internal control tasks (reconcile, sweep) of one fleet."""
    return f"fleet.{fleet_id}"


def provider_queue(fleet_id: str, provider: str) -> str:
    """Queue of the run/kill tasks of one provider of one fleet."""
    return f"fleet.{fleet_id}.provider.{provider}"
