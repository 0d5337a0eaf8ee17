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
from redis.sentinel import SentinelManagedConnection

from fleet.errors import ConfigError
from fleet.sentinel import FleetSentinel, SentinelRefused, sentinel_nodes

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


class _Retiring(redis.Connection):
    """What every connection class of Fleet's adds to redis-py's: it retires this process's older
    connections to the same server once one of them timed out or broke. After a silent outage
    every pooled connection is dead, and each would otherwise cost a socket timeout of its own,
    one use after another. An older connection is closed and opened again before its next
    command (one reconnect, if it was fine after all)."""

    _opened_at = 0.0

    def _server(self) -> tuple[Any, ...]:
        return self.host, self.port, self.db

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


class Connection(_Retiring):
    """redis-py's TCP connection with Fleet's retiring of older connections (`_Retiring`), which
    connects in one attempt."""

    def connect(self) -> None:
        # one attempt: the command's own retry (client_options) connects again if it fails;
        # redis-py's would retry here as well, two socket timeouts more on a silent server
        self.connect_check_health(check_health=True, retry_socket_connect=False)


class SSLConnection(Connection, redis.SSLConnection):
    """redis-py's TLS connection (rediss://) with the same behaviour as `Connection`."""


class SentinelConnection(_Retiring, SentinelManagedConnection):
    """redis-py's connection to the primary the sentinels name, retiring older connections as
    `Connection` does (it connects in one attempt already, asking the sentinels first)."""


#: redis-py's connection class -> Fleet's (what kombu's transport would use -> what it uses)
CONNECTION_CLASSES: dict[type[Any], type[Any]] = {
    redis.Connection: Connection, redis.SSLConnection: SSLConnection, SentinelManagedConnection: SentinelConnection,
}


def client_options(socket_timeout: float = SOCKET_TIMEOUT) -> dict[str, Any]:
    """redis-py keyword arguments for a client (or connection pool) of Fleet's. One retry, soon: a
    pooled connection that died with a restarted server is replaced; a silent server costs two
    socket timeouts (with `Connection`, which does not retry inside the connect too), never the
    default four attempts with back-off up to 10 s."""
    return {**transport_options(socket_timeout), "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 1)}


def connect(url: str | RedisTarget, socket_timeout: float = SOCKET_TIMEOUT, retry: Retry | None = None) -> redis.Redis:
    """A redis-py client for `url` with Fleet's timeouts and keepalive (`client_options`; `retry`
    instead of its one retry, if given), and Fleet's connection classes (`Connection`,
    `SSLConnection` for rediss://, `SentinelConnection` for sentinel://). A URL some
    `RedisTarget` of this process was built for (`RedisTarget.register`) gets that target's ACL
    user, password, TLS files, Sentinel master name and Sentinel credentials too."""
    chosen = url if isinstance(url, RedisTarget) else target(url)
    options = {**client_options(socket_timeout), **chosen.redis_options()}
    if retry is not None:
        options["retry"] = retry
    if chosen.sentinel:
        return _sentinel_client(chosen, options)
    if chosen.url.startswith(("redis://", "rediss://")):  # unix:// keeps redis-py's connection class
        options["connection_class"] = SSLConnection if chosen.tls else Connection
    return redis.Redis.from_url(chosen.url, **options)


@dataclass(frozen=True)
class RedisTarget:
    """One description of Fleet's Redis, from which every client is built: redis-py's (`connect`),
    Celery's broker and result backend (`celery_settings`). The URL carries scheme, host, port and
    database (and may carry a user and password); the rest comes from `[fleet]` and the
    environment (`from_settings`). A `sentinel://` target may have credentials of its own for the
    sentinels (`sentinel_username`, `sentinel_password`: Sentinel's `requirepass` or ACL user),
    besides the data nodes'. No password is ever part of `url`, `repr` or `shown`."""

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    #: "required": the server's certificate must be valid for its host name; "none": not checked
    verify: str = "required"
    sentinel_master: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, url: str, settings: Any, env: Mapping[str, str] | None = None) -> RedisTarget:
        """The target for `url` with `settings` (a `FleetSettings`): the password from
        FLEET_REDIS_PASSWORD, else the file FLEET_REDIS_PASSWORD_FILE, else `redis_password_file`
        (one line; its trailing newline dropped), else the URL's own; the sentinels' password
        likewise from FLEET_REDIS_SENTINEL_PASSWORD, FLEET_REDIS_SENTINEL_PASSWORD_FILE or
        `redis_sentinel_password_file` (none: the sentinels get none). ConfigError, naming no
        secret, for a file that cannot be read, TLS files with a URL that is not rediss://, or
        Sentinel credentials in `[fleet]` with a URL that is not sentinel://."""
        env = os.environ if env is None else env
        password = _secret(env, "FLEET_REDIS_PASSWORD", getattr(settings, "redis_password_file", None), "Redis")
        sentinel_user = getattr(settings, "redis_sentinel_username", None)
        sentinel_file = getattr(settings, "redis_sentinel_password_file", None)
        sentinel_password = _secret(env, "FLEET_REDIS_SENTINEL_PASSWORD", sentinel_file, "Sentinel")
        if (sentinel_user or sentinel_file) and not url.startswith("sentinel://"):
            raise ConfigError("fleet.redis_sentinel_username and redis_sentinel_password_file need a sentinel:// "
                              "Redis URL")
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
                   sentinel_master=master, sentinel_username=sentinel_user, sentinel_password=sentinel_password)

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

    def sentinel_kwargs(self, socket_timeout: float = SOCKET_TIMEOUT) -> dict[str, Any]:
        """redis-py's (and kombu's and Celery's `sentinel_kwargs` transport option) keyword
        arguments for a client of a sentinel: Fleet's timeouts and keepalive, and the sentinels'
        ACL user and password if given."""
        options = {key: value for key, value in transport_options(socket_timeout).items() if key.startswith("socket_")}
        given = {"username": self.sentinel_username, "password": self.sentinel_password}
        return {**options, **{key: value for key, value in given.items() if value}}

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
            for key in ("broker_transport_options", "result_backend_transport_options"):
                settings[key].update(master_name=self.sentinel_master,
                                     sentinel_kwargs=self.sentinel_kwargs(socket_timeout))
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


def _secret(env: Mapping[str, str], variable: str, setting: Any, what: str) -> str | None:
    """A password from the environment `variable`, else the file `variable`_FILE, else the file
    `setting` names (one line; its trailing newline dropped); None if none is given."""
    if secret := env.get(variable):
        return secret
    path = env.get(f"{variable}_FILE") or setting
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n") or None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the {what} password file {path}: {type(exc).__name__}") from None


def _sentinel_client(chosen: RedisTarget, options: dict[str, Any]) -> redis.Redis:
    """A client of the primary the sentinels of `chosen` name for its master (redis-py's
    Sentinel: it asks them again after a connection to the primary fails), over Fleet's
    `SentinelConnection`s."""
    if not chosen.sentinel_master:
        raise ConfigError("a sentinel:// Redis URL needs fleet.redis_sentinel_master (the master's name)")
    nodes, db = sentinel_nodes(chosen.url)
    sentinel = FleetSentinel(nodes, sentinel_kwargs=chosen.sentinel_kwargs(options["socket_timeout"]), **options)
    return sentinel.master_for(chosen.sentinel_master, redis_class=redis.Redis, db=db,
                               connection_class=SentinelConnection)


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
    if isinstance(cause, SentinelRefused):
        return str(cause)[:400]
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
