"""Redis Sentinel for Fleet: the sentinels of a `sentinel://` URL, and redis-py's Sentinel telling
sentinels that refuse Fleet's credentials (a wrong or missing Sentinel password) from sentinels
that cannot be reached: both end in "no master found" otherwise."""

from __future__ import annotations

from typing import Any

import redis
from redis.sentinel import MasterNotFoundError, Sentinel

from fleet.errors import ConfigError

#: where the sentinels' credentials come from, for an error message
SOURCES = "FLEET_REDIS_SENTINEL_PASSWORD(_FILE), fleet.redis_sentinel_password_file, fleet.redis_sentinel_username"


class SentinelRefused(redis.AuthenticationError):
    """No sentinel named the master, and at least one refused the credentials given for the
    sentinels (a wrong or missing Sentinel password or ACL user): not an unreachable Redis."""


class _SentinelNode(redis.Redis):
    """A client of one sentinel, which remembers whether the sentinel refused its credentials
    the last time it was asked for the masters."""

    refused: redis.AuthenticationError | None = None

    def sentinel_masters(self) -> Any:
        try:
            masters = super().sentinel_masters()
        except redis.AuthenticationError as exc:  # NOAUTH (no password sent), WRONGPASS
            self.refused = exc
            raise
        self.refused = None
        return masters


class FleetSentinel(Sentinel):
    """redis-py's Sentinel, which raises `SentinelRefused` instead of MasterNotFoundError when
    a sentinel refused the credentials and none named the master."""

    def __init__(self, nodes: list[tuple[str, int]], **kwargs: Any) -> None:
        super().__init__(nodes, **kwargs)
        self._nodes = [_SentinelNode(host, port, **self.sentinel_kwargs) for host, port in nodes]
        self.sentinels = [*self._nodes]  # (which redis-py reorders: the one that answered first)

    def discover_master(self, service_name: str) -> Any:
        try:
            return super().discover_master(service_name)
        except MasterNotFoundError as exc:
            refused = [node.refused for node in self._nodes if node.refused is not None]
            if not refused:
                raise
            if not self.sentinel_kwargs.get("password"):
                raise SentinelRefused(f"the Redis sentinels need a password and none was given for them ({SOURCES})") \
                    from exc
            raise SentinelRefused(f"the Redis sentinels refused the credentials given for them ({len(refused)} of "
                                  f"{len(self.sentinels)}; {SOURCES}): {str(refused[0])[:200]}") from exc


def sentinel_nodes(url: str) -> tuple[list[tuple[str, int]], int]:
    """The (host, port) of each sentinel of `sentinel://h1:p1[/db];sentinel://h2:p2...`, and the
    database (of the first that names one; 0 if none does). ConfigError for a malformed URL."""
    from urllib.parse import urlsplit

    nodes: list[tuple[str, int]] = []
    db = None
    for part in url.split(";"):
        try:
            parsed = urlsplit(part.strip())
            port = parsed.port or 26379
        except ValueError:
            parsed, port = None, 0
        if parsed is None or parsed.scheme != "sentinel" or not parsed.hostname:
            raise ConfigError("a sentinel URL is sentinel://HOST:PORT[/DB], several joined with ';'")
        nodes.append((parsed.hostname, port))
        path = parsed.path.strip("/")
        if path and db is None:
            if not path.isdigit():
                raise ConfigError("the database of a sentinel:// URL is a number")
            db = int(path)
    return nodes, db or 0
