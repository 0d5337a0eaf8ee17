"""Fleet's broker transport: kombu's Redis transport, hardened for a control plane that must not die.

Three changes to `kombu.transport.redis`, each for a failure seen with a real worker:

* **Poison messages are set aside, never fatal.** kombu decodes a popped entry and hands it to
  Celery inside its event loop; an entry that is not JSON, not a message envelope, whose body is
  not what its encoding says or whose headers are broken raised out of the loop, and the worker
  exited ("Unrecoverable error"). Worse, one that had reached the unacked hash went back on the
  queue at shutdown and killed the next worker too. Here every entry is decoded and dispatched
  under a guard: what fails is logged without its payload, counted, pushed onto the fleet's
  dead-letter list (`fleet.deadletters`) and acknowledged. Redis connection errors still
  propagate, so a broken connection is recovered as before. (`KeyError` is in kombu's
  connection errors, for a stale poller fd; raised from dispatch it means a broken message.)
* **A channel closed after its transport can still restore its unacked messages.** When the
  consumer closes a connection after a Redis restart, kombu closes the transport first, then the
  channel, whose close restores unacked messages through a new connection pool built from the
  transport's (now gone) connection info: `AttributeError: 'NoneType' object has no attribute
  'hostname'`, an unrecoverable error. The channel keeps the parameters it was built with.
* **One client per channel** for synchronous commands. kombu builds a new `redis.Redis` for every
  publish and ack, and redis-py's constructor rebuilds its table of ~165 response callbacks each
  time (redis-py issue #3624): a fifth of a control-plane worker's CPU. A `redis.Redis` over a
  connection pool is thread-safe, so one per pool serves every call; a new pool (after a
  reconnect) gets a new client.

Writing these by hand is deliberate: kombu offers no hook between popping an entry and handing it
to the consumer, so `_brpop_read` is kombu's own, with the guard added (keep it in step with
kombu's when upgrading; `tests/test_transport.py` drives it with real poison).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import redis
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Empty
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from fleet.deadletters import set_aside

log = logging.getLogger(__name__)

#: The name it goes by, which is also what the worker's banner and connection errors show.
NAME = "fleet-redis"
#: The transport option naming the fleet whose dead-letter list takes poison messages.
FLEET_OPTION = "fleet_id"

#: Errors that mean the connection to Redis broke (not the message): these propagate, so kombu and
#: Celery reconnect as they always do.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.AuthenticationError,
    socket.error, OSError,
)


class Channel(kombu_redis.Channel):
    _sync_client: Any = None
    _params: dict[bool, dict[str, Any]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._params = {}
        super().__init__(*args, **kwargs)
        self.fleet_id: str | None = (self.connection.client.transport_options or {}).get(FLEET_OPTION)

    # -- one client per pool ---------------------------------------------------------------
    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()
        return client

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:  # the transport closed before this channel
            if asynchronous not in self._params:
                raise redis.ConnectionError("the broker connection is closed")
            return dict(self._params[asynchronous])
        params = super()._connparams(asynchronous=asynchronous)
        self._params[asynchronous] = dict(params)
        return params

    # -- poison messages -------------------------------------------------------------------
    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                # if there's a ConnectionError, disconnect so the next iteration reconnects
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            self._deliver_guarded(item, dest)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as kombu's own _brpop_read resets it
            flush = getattr(self, "_flush_brpop_reauth", None)  # kombu >= 5.6
            if flush is not None:
                flush()

    def _deliver_fanout_message(self, message: Any, exchange: str) -> bool:
        try:
            return bool(super()._deliver_fanout_message(message, exchange))
        except CONNECTION_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - any other failure is the message's
            self.set_aside(message, f"fanout:{exchange}", exc)
            return True

    def _deliver_guarded(self, item: bytes, queue: str) -> None:
        """Decode one popped entry and hand it to the consumer; set it aside if either fails."""
        try:
            payload = loads(bytes_to_str(item))
        except Exception as exc:  # noqa: BLE001 - not JSON, not UTF-8: nothing to deliver
            self.set_aside(item, queue, exc, reason="undecodable")
            return
        try:
            self.connection._deliver(payload, queue)
        except CONNECTION_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - kombu or Celery could not make sense of it
            self._forget(payload)
            self.set_aside(item, queue, exc)

    def _forget(self, payload: Any) -> None:
        """Acknowledge a message that reached the unacked hash, so it never comes back."""
        try:
            tag = payload["properties"]["delivery_tag"]
        except (TypeError, KeyError, IndexError):
            return
        if isinstance(tag, str) and tag in self.qos._delivered:
            self.qos.ack(tag)

    def set_aside(self, payload: Any, queue: str, exc: BaseException | None = None, *,
                  reason: str = "malformed") -> None:
        """Log (without the payload), count and keep a poison message; it is not delivered."""
        why = reason if exc is None else f"{reason}: {type(exc).__name__}"
        if self.fleet_id is None:
            log.error("dropped a message from queue %r that cannot be processed: %s", queue[:200], why)
            return
        set_aside(self._create_client(), self.fleet_id, queue, why, payload)


class Transport(kombu_redis.Transport):
    Channel = Channel


TRANSPORT_ALIASES.setdefault(NAME, f"{__name__}:Transport")


def broker_transport(url: str) -> str | None:
    """The transport for a broker URL: this one for plain `redis://`; kombu's own otherwise, which
    keeps its defaults for `rediss://` (TLS) and its Sentinel transport for `sentinel://`."""
    return NAME if url.startswith("redis://") else None
