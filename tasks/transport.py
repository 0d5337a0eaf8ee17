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
* **A refusal by Redis is never the message's fault.** Redis full (`maxmemory` with
  `noeviction`) still serves BRPOP, but refuses the write that records the popped message as
  unacked (`OutOfMemoryError`); a full disk (MISCONF), a read-only replica or a lost connection
  can strike between the pop and that write too. Such an error (`fleet.connection`: by type and
  server error code) puts the entry back at the head of its list, unchanged, with a script
  allowed to run when Redis is out of memory (`allow-oom`), and waits before the next pop
  (doubling up to 2 s). While Redis refuses even that (MISCONF), the worker keeps the entry and
  tries again until it succeeds; it gives the entry up only when the worker is stopped and
  Redis still refuses 10 s later (logged). Restoring unacknowledged messages (a consumer that
  reconnects, a worker that stops) falls back to a script of the same kind when Redis is full:
  kombu's transaction is refused whole, and the messages would wait for the visibility timeout
  (an hour).
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
import time
from typing import Any

import redis
from kombu import Connection as Connection_
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Empty
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from fleet.connection import CONNECTION_CLASSES, redis_state_error, refusal_code
from fleet.deadletters import set_aside

log = logging.getLogger(__name__)

#: The name it goes by, which is also what the worker's banner and connection errors show.
NAME = "fleet-redis"
#: The same over Redis Sentinel (`sentinel://` broker URLs).
SENTINEL_NAME = "fleet-redis-sentinel"
#: The transport option naming the fleet whose dead-letter list takes poison messages.
FLEET_OPTION = "fleet_id"

#: Errors that mean the connection to Redis broke (not the message): these propagate, so kombu and
#: Celery reconnect as they always do.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.AuthenticationError,
    socket.error, OSError,
)

#: Puts a popped entry back at the head of its list (where BRPOP takes from) and forgets its
#: unacked record, if one was written. It runs when Redis is out of memory, to return what the
#: pop freed: Redis refuses a script's command that may grow memory only while the script has
#: written nothing (it cannot stop a script half-way), and ZREM, its first write, is one Redis
#: allows when full. (Redis 6.2 and 7; 7's `allow-oom` flag would say so, 6.2 has no flags.)
PUT_BACK = """
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
return redis.call('RPUSH', KEYS[1], ARGV[1])
"""
#: Moves an unacknowledged message back to its lists when Redis is full (as PUT_BACK): KEYS[1]
#: the unacked index, KEYS[2] the unacked hash, KEYS[3..] the lists; ARGV[1] the delivery tag,
#: ARGV[2] the message, ARGV[3] "1" to push it left. Nothing if another process restored it.
RESTORE = """
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then return 0 end
for i = 3, #KEYS do
  if ARGV[3] == '1' then redis.call('LPUSH', KEYS[i], ARGV[2]) else redis.call('RPUSH', KEYS[i], ARGV[2]) end
end
return 1
"""
#: Longest pause before the next pop while Redis refuses what delivering a message needs.
MAX_PAUSE = 2.0
#: Seconds a stopping worker still tries to put back an entry Redis refuses.
STOP_GRACE = 10.0


def _stopping() -> bool:
    from celery.worker import state

    return bool(state.should_stop is not None or state.should_terminate is not None)


class QoS(kombu_redis.QoS):
    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
        try:
            super().restore_by_tag(tag, client=client, leftmost=leftmost)
        except redis.ResponseError as exc:  # OOM, or EXECABORT for the transaction it spoiled
            if refusal_code(exc) != "OOM" and not isinstance(exc, redis.exceptions.ExecAbortError):
                raise
            self._restore_when_full(tag, leftmost)

    def _restore_when_full(self, tag: str, leftmost: bool) -> None:
        """kombu's restore, as one script Redis runs when full (RESTORE)."""
        channel = self.channel
        client = channel._create_client()
        raw = client.hget(self.unacked_key, tag)
        if not raw:
            return
        message, exchange, routing_key = loads(bytes_to_str(raw))
        try:
            message["headers"]["redelivered"] = True
            message["properties"]["delivery_info"]["redelivered"] = True
        except (KeyError, TypeError):
            pass
        priority = channel._get_message_priority(message, reverse=False)
        lists = [channel._q_for_pri(queue, priority) for queue in channel._lookup(exchange, routing_key)]
        client.eval(RESTORE, 2 + len(lists), self.unacked_index_key, self.unacked_key, *lists, tag, dumps(message),
                    "1" if leftmost else "")


class Channel(kombu_redis.Channel):
    QoS = QoS
    _sync_client: Any = None
    _params: dict[bool, dict[str, Any]]
    _pause: float = 0.0  # seconds to wait after the next refusal (0: none lately)

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
        if not asynchronous and (fleets := CONNECTION_CLASSES.get(params.get("connection_class"))) is not None:
            params["connection_class"] = fleets  # retires connections older than a silent one (TLS too)
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
            key, item = dest__item
            dest = bytes_to_str(key).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            self._deliver_guarded(item, dest, bytes_to_str(key))
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
            if redis_state_error(exc):  # Redis's: a broadcast cannot be put back, and is no poison
                log.warning("a broadcast on %r could not be handled, Redis refused: %s", exchange[:200], exc)
                return True
            self.set_aside(message, f"fanout:{exchange}", exc)
            return True

    def _deliver_guarded(self, item: bytes, queue: str, key: str | None = None) -> None:
        """Decode one popped entry (from list `key`, of `queue`) and hand it to the consumer; set it
        aside if either fails for the message's fault; put it back if Redis refused (its state)."""
        try:
            payload = loads(bytes_to_str(item))
        except Exception as exc:  # noqa: BLE001 - not JSON, not UTF-8: nothing to deliver
            self.set_aside(item, queue, exc, reason="undecodable")
            return
        try:
            self.connection._deliver(payload, queue)
        except Exception as exc:  # kombu or Celery could not make sense of it, or Redis refused
            if redis_state_error(exc):
                self._put_back(item, key or queue, self._tag(payload), exc)
                if isinstance(exc, CONNECTION_ERRORS):
                    raise  # kombu and Celery reconnect as they always do
                return
            self._forget(payload)
            self.set_aside(item, queue, exc)
            return
        self._pause = 0.0

    @staticmethod
    def _tag(payload: Any) -> str | None:
        try:
            tag = payload["properties"]["delivery_tag"]
        except (TypeError, KeyError, IndexError):
            return None
        return tag if isinstance(tag, str) else None

    def _put_back_once(self, item: bytes, key: str, tag: str) -> None:
        client = self._create_client()
        try:
            client.eval(PUT_BACK, 3, key, self.unacked_index_key, self.unacked_key, item, tag)
        except redis.ResponseError as exc:
            if redis_state_error(exc):
                raise
            # Redis 6 wraps an error inside a script ("ERR Error running script ... -MISCONF ..."),
            # and an ACL may forbid scripts: the same as plain commands, whose refusal keeps its code
            with client.pipeline(transaction=True) as pipe:
                pipe.zrem(self.unacked_index_key, tag)
                pipe.hdel(self.unacked_key, tag)
                pipe.rpush(key, item)
                pipe.execute()

    def _put_back(self, item: bytes, key: str, tag: str | None, exc: BaseException) -> None:
        """Return a popped entry, unchanged, to the head of list `key` and drop its unacked record,
        then pause before the next pop. While Redis refuses this too, keep trying with back-off;
        give the entry up (logged) only STOP_GRACE seconds after the worker was told to stop."""
        log.warning("Redis refused to record a message popped from %r (%s: %s): it goes back on its queue",
                    key[:200], type(exc).__name__, str(exc)[:300])
        if tag is not None:
            self.qos._delivered.pop(tag, None)
        delay, stop_at = 0.1, None
        while True:
            try:
                self._put_back_once(item, key, tag or "")
                break
            except Exception as again:  # noqa: BLE001 - only a refusal is retried (below)
                if not redis_state_error(again):
                    log.error("cannot put back a message popped from %r (%s): it is lost", key[:200], again)
                    return
                now = time.monotonic()
                if stop_at is None and _stopping():
                    stop_at = now + STOP_GRACE
                if stop_at is not None and now > stop_at:
                    log.error("the worker stops and Redis still refuses (%s): a message popped from %r is lost",
                              again, key[:200])
                    return
                log.warning("cannot put back a message popped from %r yet (%s); trying again in %.1f s",
                            key[:200], str(again)[:300], delay)
                time.sleep(delay)
                delay = min(2 * delay, MAX_PAUSE)
        self._pause = min(max(2 * self._pause, 0.1), MAX_PAUSE)
        time.sleep(self._pause)  # Redis is full: popping the same entry again at once only spins

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


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """Fleet's channel (poison set aside, refusals put back, one client per pool) over kombu's
    Sentinel channel, which asks the sentinels for the primary each time it builds a pool: after a
    failover, the reconnect that follows a connection error reaches the promoted replica."""

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:  # the transport closed before this channel
            raise redis.ConnectionError("the broker connection is closed")
        return super()._sentinel_managed_pool(asynchronous)


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


class BrokerConnection(Connection_):
    """kombu's connection, whose URL (the worker's banner, its connection errors) shows `**` for
    a password only where there is one: kombu's shows `redis://:**@host` even without."""

    def as_uri(self, include_password: bool = False, mask: str = "**", *args: Any, **kwargs: Any) -> str:
        return str(super().as_uri(include_password or not self.password, mask, *args, **kwargs))


TRANSPORT_ALIASES.setdefault(NAME, f"{__name__}:Transport")
TRANSPORT_ALIASES.setdefault(SENTINEL_NAME, f"{__name__}:SentinelTransport")


def broker_transport(url: str) -> str | None:
    """The transport for a broker URL: this one for `redis://` and `rediss://` (TLS: kombu's
    `broker_use_ssl`, fleet.connection.RedisTarget), its Sentinel form for `sentinel://` (the
    master's name in `broker_transport_options`); kombu's own otherwise."""
    if url.startswith(("redis://", "rediss://")):
        return NAME
    return SENTINEL_NAME if url.startswith("sentinel://") else None
