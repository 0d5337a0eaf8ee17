"""Where a process finds its config and its Redis."""

from __future__ import annotations

import os

from fleet.config import FleetConfig
from fleet.connection import RedisTarget
from fleet.embedded import running_url
from fleet.errors import ConfigError, NoRedis

#: What a control-plane worker process serves (FLEET_ROLE): `control`, the public and control
#: queues (cheap tasks: a solo pool, no thread contention); `provider`, the provider queues (slow
#: cloud calls: a threads pool); `all`, every queue (one process that does everything).
ROLES = ("all", "control", "provider")


def resolve_redis_url(config: FleetConfig) -> str:
    """FLEET_REDIS_URL, else `fleet.redis_url`, else the running embedded Redis of this fleet.
    `connect(url)` then uses the fleet's ACL user, password and TLS files (`resolve_redis_target`)."""
    return resolve_redis_target(config).url


def resolve_redis_target(config: FleetConfig) -> RedisTarget:
    """The fleet's Redis (`resolve_redis_url`) with `[fleet]`'s and the environment's ACL user,
    password and TLS files, registered for `connect` in this process."""
    url = config.redis_url or running_url(config.state_dir)
    if not url:
        raise NoRedis(
            "no Redis configured: set FLEET_REDIS_URL or fleet.redis_url, "
            f"or start the embedded one with `fleet up` (state folder {config.state_dir})"
        )
    return RedisTarget.from_settings(url, config.fleet).register()


def control_queue(fleet_id: str) -> str:
    """Queue of the internal control tasks (reconcile, sweep) of one fleet."""
    return f"fleet.{fleet_id}"


def provider_queue(fleet_id: str, provider: str) -> str:
    """Queue of the tasks that call one provider of one fleet (run, kill, sweep, check, drain)."""
    return f"fleet.{fleet_id}.provider.{provider}"


def worker_role() -> str:
    """This process's FLEET_ROLE (default `all`)."""
    role = os.environ.get("FLEET_ROLE", "all") or "all"
    if role not in ROLES:
        raise ConfigError(f"FLEET_ROLE={role!r}: expected one of {', '.join(ROLES)}")
    return role


def public_queue(config: FleetConfig) -> str:
    """The queue of the fleet's public tasks (`fleet.public_queue`, default "celery")."""
    return config.fleet.public_queue


def consumed_queue(config: FleetConfig, provider: str) -> str:
    """The provider queue for `provider`'s work: its own if the config's clusters use it (only
    those are consumed), else the first one that is (a retired cluster's provider may be one no
    declared cluster uses; any provider worker can run it), else the control queue."""
    used = sorted({p for c, s in config.clusters.items() if c not in config.retired for p in s.providers})
    if provider in used or not used:
        return provider_queue(config.fleet.id, provider) if used else control_queue(config.fleet.id)
    return provider_queue(config.fleet.id, used[0])


def queues_for(role: str, config: FleetConfig) -> list[str]:
    """The queues a worker of `role` consumes."""
    fid = config.fleet.id
    providers = [provider_queue(fid, p) for p in sorted({p for c, s in config.clusters.items()
                                                          if c not in config.retired for p in s.providers})]
    control = [config.fleet.public_queue, control_queue(fid)]
    return {"control": control, "provider": providers, "all": control + providers}[role]
