"""Fleet's connection behaviour over TLS, with a real TLS-only redis-server (tests/kits/tls_redis.py)
behind a proxy that can go silent (tests/kits/blackhole.py): after a silent outage, the TLS
connections a client or a broker channel pooled before it are retired and opened again before
their next command, as over plain TCP (fleet.connection.Connection), instead of each costing a
socket timeout of its own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection

from fleet.connection import RedisTarget, connect
from tasks.transport import Transport
from tests.kits.blackhole import BlackHole
from tests.kits.tls_redis import PASSWORD, USER, TLSRedis, tls_redis

#: a short socket timeout: a dead connection costs this much per use
TIMEOUT = 1.0
#: connections pooled before the outage
POOLED = 4


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TLSRedis]:
    with tls_redis(tmp_path / "tls") as srv:
        yield srv


def through(proxy: BlackHole, server: TLSRedis) -> RedisTarget:
    """The TLS server's target, reached through `proxy` (TLS passes through it untouched)."""
    port = proxy.listener.getsockname()[1]
    return RedisTarget(f"rediss://127.0.0.1:{port}/0", username=USER, password=PASSWORD, ca_file=str(server.ca),
                       cert_file=str(server.client_cert), key_file=str(server.client_key))


def outage_then_pooled_commands(pool: Any, command: Any, proxy: BlackHole) -> float:
    """Pool POOLED connections, silence the proxy until a command times out, heal it; then the
    seconds it takes POOLED connections taken from the pool at once to answer a PING each."""
    held = [pool.get_connection() for _ in range(POOLED)]  # each opened (TLS handshake) through the proxy
    for connection in held:
        pool.release(connection)
    proxy.go_silent()
    with pytest.raises((redis.TimeoutError, redis.ConnectionError)):
        command()
    proxy.heal()
    started = time.monotonic()
    again = [pool.get_connection() for _ in range(POOLED)]
    try:
        for connection in again:
            connection.send_command("PING")
            assert connection.read_response() in (b"PONG", "PONG")
    finally:
        for connection in again:
            pool.release(connection)
    return time.monotonic() - started


def test_a_tls_client_retires_its_pooled_connections_after_a_silent_outage(server: TLSRedis) -> None:
    with BlackHole(server.port) as proxy:
        client = connect(through(proxy, server), socket_timeout=TIMEOUT)
        assert client.ping()
        took = outage_then_pooled_commands(client.connection_pool, client.ping, proxy)
        print(f"\nTLS client: {POOLED} connections pooled before the outage answered within {took:.2f} s")
        assert took < TIMEOUT, took  # not one socket timeout per dead connection
        assert client.set("fleet:tls-after", "1")


def test_a_tls_broker_channel_retires_its_pooled_connections_after_a_silent_outage(server: TLSRedis) -> None:
    with BlackHole(server.port) as proxy:
        chosen = through(proxy, server)
        options = {"socket_timeout": TIMEOUT, "socket_connect_timeout": TIMEOUT}
        with Connection(chosen.url.replace("rediss://", "redis://"), transport=Transport, userid=USER,
                        password=PASSWORD, ssl=chosen.ssl_options(), transport_options=options) as conn:
            channel: Any = conn.default_channel
            client = channel._create_client()  # the channel's client for publish and ack (not BRPOP)
            assert client.ping()
            took = outage_then_pooled_commands(client.connection_pool, client.ping, proxy)
        print(f"\nTLS broker channel: {POOLED} connections pooled before the outage answered within {took:.2f} s")
        assert took < TIMEOUT, took
