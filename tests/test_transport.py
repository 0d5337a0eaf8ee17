"""Fleet's broker transport: kombu's Redis transport reusing one client per connection pool."""

from __future__ import annotations

from typing import Any

from kombu import Connection

from tasks.transport import Transport, broker_transport
from tests.conftest import REDIS_URL


def test_redis_and_rediss_urls_use_it_and_other_schemes_keep_kombus_own() -> None:
    assert broker_transport("redis://127.0.0.1:6379/0") == "fleet-redis"
    # TLS too (its files in broker_use_ssl): poison is set aside there as well (tests/test_redis_tls.py)
    assert broker_transport("rediss://:pw@redis.example:6380/0") == "fleet-redis"
    # Sentinel too (tests/test_redis_sentinel.py): poison is set aside and failover is followed
    assert broker_transport("sentinel://127.0.0.1:26379") == "fleet-redis-sentinel"
    assert broker_transport("memory://") is None  # kombu's own


def test_the_control_plane_app_uses_it(celery_app: Any) -> None:
    with celery_app.connection_for_write() as conn:
        assert isinstance(conn.transport, Transport)


def test_a_channel_reuses_one_client_and_takes_a_new_one_with_a_new_pool() -> None:
    with Connection(REDIS_URL, transport=Transport) as conn:
        queue = conn.SimpleQueue("fleet-transport-test")
        channel = queue.channel
        first = channel._create_client()
        assert channel._create_client() is first

        queue.put({"n": 1})
        message = queue.get(timeout=5)
        assert message.payload == {"n": 1}
        message.ack()

        channel._disconnect_pools()  # what kombu does on a connection error
        second = channel._create_client()
        assert second is not first and second.connection_pool is channel.pool
        queue.put({"n": 2})  # and it still publishes, consumes and acks
        message = queue.get(timeout=5)
        assert message.payload == {"n": 2}
        message.ack()
        assert channel.client.llen("fleet-transport-test") == 0
        queue.close()
