"""Every Redis connection Fleet opens, configured in one place, and what a Redis error means.

A Redis that stops answering without closing anything (a lost route, a NAT or firewall that drops
an idle flow, a failover behind a proxy) leaves a client with no timeout waiting forever: a
control-plane worker, beat or a caller hung for good. So every client Fleet builds (state,
leases, limiter, metrics, CLI, console, probe, and Celery's broker and result backend) has a
socket timeout, a connect timeout, TCP keepalive and a health check, from `client_options` (for
redis-py), `transport_options` (kombu) and `celery_settings` (Celery's result backend).

`refuses_writes` and `unreachable` tell Redis's state (its memory full, its disk full, a
read-only replica, a lost connection) from a command's or a message's fault, by exception type
and the server's error code, not by message text: a pipeline's error reads "Command # 1 (...) of
pipeline caused error: OOM ..." but keeps its class and code.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from fleet.errors import ConfigError

#: Seconds a command may wait for its answer. A live Redis answers Fleet's commands in
#: milliseconds; BRPOP is sent with a 1 s server-side timeout, pub/sub waits use their own.
SOCKET_TIMEOUT = 5.0
#: Seconds to open a connection.
CONNECT_TIMEOUT = 3.0
#: Seconds between PINGs of a connection that sat idle in the pool (and of kombu's BRPOP and
#: pub/sub connections): a silent connection is found within about this long.
HEALTH_CHECK_INTERVAL = 5
#: TCP keepalive: probes after 5 s of silence, every 2 s, 3 lost probes close the socket.
KEEPALIVE_OPTIONS: dict[int, int] = {
    opt: value for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3))
    if (opt := getattr(socket, name, None)) is not None
}

#: Server error codes for "not now": memory full (noeviction), disk full (MISCONF), a read-only
#: replica, a master without replicas or link, a server loading its data, a busy script.
REFUSING_CODES = frozenset({"OOM", "MISCONF", "READONLY", "NOREPLICAS", "MASTERDOWN", "LOADING", "BUSY",
                            "TRYAGAIN", "CLUSTERDOWN"})


#: (host, port, db) -> monotonic time a connection of this process to that server last timed out
#: or broke.
_broken: dict[tuple[Any, ...], float] = {}


class Connection(redis.Connection):
    """redis-py's TCP connection, which also retires this process's older connections to the same
    server once one of them timed out or broke: after a silent outage every pooled connection is
    dead, and each would otherwise cost a socket timeout of its own, one use after another. An
    older connection is closed and opened again before its next command (one reconnect, if it
    was fine after all)."""

    _opened_at = 0.0

    def _server(self) -> tuple[Any, ...]:
        return self.host, self.port, self.db

    def connect(self) -> None:
        # one attempt: the command's own retry (client_options) connects again if it fails;
        # redis-py's would retry here as well, two socket timeouts more on a silent server
        self.connect_check_health(check_health=True, retry_socket_connect=False)

    def _connect(self) -> Any:
        sock = super()._connect()
        self._opened_at = time.monotonic()  # before the handshake, whose commands come through below
        return sock

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self._sock is not None and self._opened_at < _broken.get(self._server(), 0.0):
            self.disconnect()  # redis-py connects again below
        super().send_packed_command(command, check_health)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except (redis.TimeoutError, redis.ConnectionError):
            _broken[self._server()] = time.monotonic()
            raise


def client_options(socket_timeout: float = SOCKET_TIMEOUT) -> dict[str, Any]:
    """redis-py keyword arguments for a client (or connection pool) of Fleet's. One retry, soon: a
    pooled connection that died with a restarted server is replaced; a silent server costs two
    socket timeouts (with `Connection`, which does not retry inside the connect too), never the
    default four attempts with back-off up to 10 s."""
    return {**transport_options(socket_timeout), "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 1)}


def connect(url: str | RedisTarget, socket_timeout: float = SOCKET_TIMEOUT, retry: Retry | None = None) -> redis.Redis:
    """A redis-py client for `url` with Fleet's timeouts and keepalive (`client_options`; `retry`
    instead of its one retry, if given), and (`redis://`) Fleet's `Connection`. A URL some
    `RedisTarget` of this process was built for (`RedisTarget.register`) gets that target's ACL
    user, password, TLS files and Sentinel master name too."""
    chosen = url if isinstance(url, RedisTarget) else target(url)
    options = {**client_options(socket_timeout), **chosen.redis_options()}
    if retry is not None:
        options["retry"] = retry
    if chosen.sentinel:
        return _sentinel_client(chosen, options)
    if chosen.url.startswith("redis://"):  # rediss:// and unix:// keep their own connection class
        options["connection_class"] = Connection
    return redis.Redis.from_url(chosen.url, **options)


@dataclass(frozen=True)
class RedisTarget:
    """One description of Fleet's Redis, from which every client is built: redis-py's (`connect`),
    Celery's broker and result backend (`celery_settings`). The URL carries scheme, host, port and
    database (and may carry a user and password); the rest comes from `[fleet]` and the
    environment (`from_settings`). The password is never part of `url`, `repr` or `shown`."""

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    #: "required": the server's certificate must be valid for its host name; "none": not checked
    verify: str = "required"
    sentinel_master: str | None = None

    @classmethod
    def from_settings(cls, url: str, settings: Any, env: Mapping[str, str] | None = None) -> RedisTarget:
        """The target for `url` with `settings` (a `FleetSettings`): the password from
        FLEET_REDIS_PASSWORD, else the file FLEET_REDIS_PASSWORD_FILE, else `redis_password_file`
        (one line; its trailing newline dropped), else the URL's own. ConfigError, naming no
        secret, for a file that cannot be read or TLS files with a URL that is not rediss://."""
        env = os.environ if env is None else env
        password = env.get("FLEET_REDIS_PASSWORD") or None
        path = env.get("FLEET_REDIS_PASSWORD_FILE") or getattr(settings, "redis_password_file", None)
        if password is None and path:
            try:
                password = Path(path).read_text(encoding="utf-8").rstrip("\r\n") or None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"cannot read the Redis password file {path}: {type(exc).__name__}") from None
        tls = getattr(settings, "redis_tls", None)
        if tls is not None and not url.startswith("rediss://"):
            raise ConfigError("fleet.redis_tls needs a rediss:// Redis URL")
        master = getattr(settings, "redis_sentinel_master", None)
        if url.startswith("sentinel://"):
            sentinel_nodes(url)  # ConfigError if malformed
            if not master:
                raise ConfigError("a sentinel:// Redis URL needs fleet.redis_sentinel_master (the master's name)")

        def text(value: Any) -> str | None:
            return None if value is None else str(value)

        return cls(url, username=getattr(settings, "redis_username", None), password=password,
                   ca_file=text(getattr(tls, "ca_file", None)), cert_file=text(getattr(tls, "cert_file", None)),
                   key_file=text(getattr(tls, "key_file", None)), verify=getattr(tls, "verify", "required"),
                   sentinel_master=master)

    @property
    def tls(self) -> bool:
        return self.url.startswith("rediss://")

    @property
    def sentinel(self) -> bool:
        """`sentinel://` URL: the primary is found through Redis Sentinel (`sentinel_master`)."""
        return self.url.startswith("sentinel://")

    @property
    def shown(self) -> str:
        """The URL fit to print: a password it carries replaced by ***."""
        from kombu.utils.url import maybe_sanitize_url

        return str(maybe_sanitize_url(self.url, mask="***"))

    def register(self) -> RedisTarget:
        """Make `connect(self.url)` build clients from this target, in this process."""
        _targets[self.url] = self
        return self

    def credentials(self) -> dict[str, str]:
        """The ACL user and password given besides the URL (the URL's own win)."""
        given = {"username": self.username, "password": self.password}
        return {key: value for key, value in given.items() if value}

    def ssl_options(self) -> dict[str, Any] | None:
        """redis-py's (and kombu's `broker_use_ssl`, Celery's `redis_backend_use_ssl`) TLS options
        of a rediss:// target; None for any other."""
        if not self.tls:
            return None
        options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_NONE if self.verify == "none" else ssl.CERT_REQUIRED}
        for key, value in (("ssl_ca_certs", self.ca_file), ("ssl_certfile", self.cert_file),
                           ("ssl_keyfile", self.key_file)):
            if value:
                options[key] = value
        return options

    def redis_options(self) -> dict[str, Any]:
        """redis-py keyword arguments besides the URL: credentials and TLS files."""
        return {**self.credentials(), **(self.ssl_options() or {})}

    def celery_settings(self, socket_timeout: float = SOCKET_TIMEOUT, retries: int = 2) -> dict[str, Any]:
        """`celery_settings` for this target: broker and result backend URL, ACL user, password
        and TLS (`broker_use_ssl`, `redis_backend_use_ssl`)."""
        settings = celery_settings(socket_timeout, retries)
        settings.update(broker_url=self.url, result_backend=self.url, **self.broker_access())
        if self.username:
            settings["redis_username"] = self.username
        if self.password:
            settings["redis_password"] = self.password
        if (options := self.ssl_options()) is not None:
            settings["redis_backend_use_ssl"] = dict(options)
        if self.sentinel:  # kombu's and Celery's Sentinel transports find the primary by this name
            settings["broker_transport_options"]["master_name"] = self.sentinel_master
            settings["result_backend_transport_options"]["master_name"] = self.sentinel_master
        return settings

    def broker_access(self) -> dict[str, Any]:
        """The Celery settings of this target as a broker: ACL user, password, TLS (`broker_use_ssl`)."""
        settings: dict[str, Any] = {}
        if self.username:
            settings["broker_user"] = self.username
        if self.password:
            settings["broker_password"] = self.password
        if (options := self.ssl_options()) is not None:
            settings["broker_use_ssl"] = dict(options)
        return settings


def _sentinel_client(chosen: RedisTarget, options: dict[str, Any]) -> redis.Redis:
    """A client of the primary the sentinels of `chosen` name for its master (redis-py's
    Sentinel: it asks them again after a connection to the primary fails)."""
    from redis.sentinel import Sentinel

    if not chosen.sentinel_master:
        raise ConfigError("a sentinel:// Redis URL needs fleet.redis_sentinel_master (the master's name)")
    nodes, db = sentinel_nodes(chosen.url)
    timeouts = {key: options[key] for key in ("socket_timeout", "socket_connect_timeout", "socket_keepalive",
                                                "socket_keepalive_options")}
    sentinel = Sentinel(nodes, sentinel_kwargs=dict(timeouts), **options)
    return sentinel.master_for(chosen.sentinel_master, redis_class=redis.Redis, db=db)


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


#: url -> the target `connect(url)` builds clients from (RedisTarget.register)
_targets: dict[str, RedisTarget] = {}


def target(url: str) -> RedisTarget:
    """The target registered for `url` in this process, else one of the URL alone."""
    return _targets.get(url) or RedisTarget(url)


def transport_options(socket_timeout: float = SOCKET_TIMEOUT) -> dict[str, Any]:
    """kombu Redis transport options (Celery's `broker_transport_options`) with the same timeouts
    and keepalive. kombu drops a BRPOP connection whose answer is overdue by more than
    `health_check_interval`, and its synchronous commands (publish, ack) time out."""
    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": min(CONNECT_TIMEOUT, socket_timeout),
        "socket_keepalive": True,
        "socket_keepalive_options": dict(KEEPALIVE_OPTIONS),
        "health_check_interval": HEALTH_CHECK_INTERVAL,
    }


def celery_settings(socket_timeout: float = SOCKET_TIMEOUT, retries: int = 2) -> dict[str, Any]:
    """Celery settings for a Redis broker and result backend with Fleet's timeouts and keepalive:
    `broker_transport_options` (merge your own into it) and the `redis_*` backend settings. A
    result store or read is retried `retries` times (Celery's default: 20, seconds apart)."""
    return {
        "broker_transport_options": transport_options(socket_timeout),
        "broker_connection_timeout": min(CONNECT_TIMEOUT, socket_timeout),
        "redis_socket_timeout": socket_timeout,
        "redis_socket_connect_timeout": min(CONNECT_TIMEOUT, socket_timeout),
        "redis_socket_keepalive": True,
        "redis_retry_on_timeout": False,
        "redis_backend_health_check_interval": HEALTH_CHECK_INTERVAL,
        "result_backend_transport_options": {
            "retry_policy": {"max_retries": retries, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
        },
    }


def redis_cause(exc: BaseException) -> BaseException | None:
    """The Redis (or socket) error behind `exc`: itself, or the first one up its chain of causes
    (kombu and Celery wrap a redis-py error in their own: `OperationalError(...) from exc`)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (redis.RedisError, OSError)):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def refusal_code(exc: BaseException) -> str | None:
    """The server's error code if `exc` (or its cause) is Redis refusing writes for its own state
    (OOM, MISCONF, READONLY, ...), else None."""
    cause = redis_cause(exc)
    if isinstance(cause, redis.exceptions.OutOfMemoryError):
        return "OOM"
    if isinstance(cause, redis.exceptions.ReadOnlyError):
        return "READONLY"
    if isinstance(cause, redis.ResponseError):
        code = getattr(cause, "status_code", None)
        return code if code in REFUSING_CODES else None
    return None


def access_error(exc: BaseException) -> str | None:
    """A one-line reason if `exc` (or its cause) is Redis refusing who asks, not its state: a
    wrong password or ACL user, a TLS handshake one side rejects (a client certificate the server
    refuses, a server certificate that does not verify), or a command the ACL user may not run
    (with the permission it lacks). None for anything else. Retrying never mends these."""
    cause = redis_cause(exc)
    if isinstance(cause, redis.exceptions.NoPermissionError):
        return f"Redis refused a command for lack of permission (NOPERM): {str(cause)[:300]}"
    if isinstance(cause, redis.AuthenticationError):
        return f"Redis refused the credentials: {str(cause)[:300]}"
    if isinstance(cause, redis.ResponseError) and str(cause).startswith(("WRONGPASS", "NOAUTH", "NOPERM")):
        return f"Redis refused the credentials: {str(cause)[:300]}"
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError) or (isinstance(current, redis.ConnectionError) and "SSL" in str(current)):
            return f"the TLS handshake with Redis failed: {str(current)[:300]}"
        current = current.__cause__ or current.__context__
    return None


def unreachable(exc: BaseException) -> bool:
    """`exc` (or its cause) is a broken, refused, silent or still-loading connection to Redis."""
    cause = redis_cause(exc)
    return isinstance(cause, (redis.ConnectionError, redis.TimeoutError, OSError))


def redis_state_error(exc: BaseException) -> bool:
    """The error is Redis's state (it refuses writes, or cannot be reached), not the fault of what
    was asked: the same request can succeed later, unchanged."""
    return refusal_code(exc) is not None or unreachable(exc)
