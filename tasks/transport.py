"""kombu's Redis transport, with one reusable client per channel for synchronous commands.

kombu builds a new `redis.Redis` object for every publish and ack (`Channel._create_client`), and
redis-py's constructor rebuilds its table of ~165 response callbacks each time (redis-py issue
#3624). In a control-plane worker that was a fifth of the CPU spent per task. A `redis.Redis`
over a connection pool is thread-safe, so one per pool serves every call; a new pool (after a
reconnect) gets a new client.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis

#: The name it goes by, which is also what the worker's banner and connection errors show.
NAME = "fleet-redis"


class Channel(kombu_redis.Channel):
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel


TRANSPORT_ALIASES.setdefault(NAME, f"{__name__}:Transport")


def broker_transport(url: str) -> str | None:
    """The transport for a broker URL: this one for plain `redis://`; kombu's own otherwise, which
    keeps its defaults for `rediss://` (TLS) and its Sentinel transport for `sentinel://`."""
    return NAME if url.startswith("redis://") else None
