"""The public tasks, sent as a plain Celery client, exactly what any other service would send:
what the CLI and the console use. A failure is a FleetError with a short message: the control
plane's own typed error (its class name and message), no answer in time, or no broker.

Every request names its fleet and expires with its caller's timeout (`fleet.requests`): when no
answer comes in time the caller gives up on it, and says "not applied" (`NotApplied`) only when no
control plane took it, which guarantees none ever will; else `NoAnswer` (it may have been applied).
Another service does the same with `request_headers` and `give_up`.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from typing import Any

import redis

from fleet.config import FleetConfig
from fleet.connection import SOCKET_TIMEOUT, access_error, connect, redis_cause, refusal_code, target, unreachable
from fleet.errors import FleetError, NoAnswer, NotApplied, RedisRefusesWrites, RedisUnreachable
from fleet.requests import DEADLINE, DEFAULT_TIMEOUT, NOT_APPLIED, abandon, stamp

#: What each refusal usually means, for a person.
_WHY = {"MISCONF": "is the disk of its data folder full? it serves again once there is room",
        "OOM": "its maxmemory is reached; it serves again once there is room",
        "READONLY": "a read-only replica: point Fleet at the primary"}


def refused(exc: BaseException) -> str:
    """What to tell a person when Redis refused a command (its disk full, its memory full, ...),
    told apart by the server's error code (a pipeline's message starts "Command # 1 ...")."""
    cause = redis_cause(exc) or exc
    # for a person: the server's words, not redis-py's "Command # 1 (<the command>) of pipeline ..."
    text = str(cause).rpartition(" of pipeline caused error: ")[2][:300]
    code = refusal_code(exc)
    if code is not None:
        why = _WHY.get(code, "it serves again once it accepts writes")
        return f"Redis refuses writes: {code} {text.removeprefix(code).strip()} ({why})"
    return f"Redis refused the request: {text}"


def redis_failure(exc: BaseException, url: str) -> FleetError | None:
    """The typed error for a call that failed because of Redis's state: `RedisRefusesWrites` (OOM,
    MISCONF, READONLY, ...) or `RedisUnreachable` (refused, broken or silent connection); None
    if the failure was not Redis's."""
    if refusal_code(exc) is not None:
        return RedisRefusesWrites(refused(exc))
    if (why := access_error(exc)) is not None:  # a wrong password, a rejected certificate, NOPERM
        return FleetError(why)
    if unreachable(exc):
        return RedisUnreachable(f"cannot reach the broker at {masked(url)}: {str(redis_cause(exc) or exc)[:300]}")
    return None


def masked(url: str) -> str:
    """A Redis URL fit to print: its password, if any, replaced by ***."""
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url, mask="***"))


def request_headers(redis_url: str | redis.Redis, fleet_id: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """The headers with which another service sends a public task to fleet `fleet_id` (on the
    fleet's Redis, `redis_url`) so that it is never applied after `timeout` seconds (Redis time)::

        headers = request_headers(URL, "prod", timeout=30)
        result = app.send_task("fleet.scale", args=["web", 4], queue="celery", headers=headers)
        try:
            result.get(timeout=30)
        except celery.exceptions.TimeoutError:
            if give_up(URL, "prod", result.id, headers): ...  # not applied, and never will be
    """
    client = connect(redis_url) if isinstance(redis_url, str) else redis_url
    return stamp(client, fleet_id, timeout)


def give_up(redis_url: str | redis.Redis, fleet_id: str, task_id: str, headers: dict[str, Any]) -> bool:
    """Give up on a request sent with `request_headers`: True if no control plane took it (then
    none ever will: it is not applied), False if one did (it may have been applied)."""
    client = connect(redis_url) if isinstance(redis_url, str) else redis_url
    return abandon(client, fleet_id, task_id, headers[DEADLINE]) in NOT_APPLIED


class PublicTasks:
    """One Celery client for `url`, built on first use, sending to fleet `fleet_id`'s public
    `queue`. `call` is safe from several threads: the calls take turns, because Celery's Redis
    result consumer is not thread-safe."""

    def __init__(self, url: str, fleet_id: str, timeout: float = DEFAULT_TIMEOUT, queue: str = "celery") -> None:
        self.url = url
        self.fleet_id = fleet_id
        self.timeout = timeout
        self.queue = queue
        self._app: Any = None
        self._redis: redis.Redis | None = None
        self._lock = threading.Lock()

    @classmethod
    def of(cls, config: FleetConfig, url: str, timeout: float = DEFAULT_TIMEOUT) -> PublicTasks:
        """A client for the fleet of `config`, on its Redis `url`."""
        return cls(url, config.fleet.id, timeout, config.fleet.public_queue)

    @property
    def socket_timeout(self) -> float:
        # the caller's timeout bounds the publish too: a silent connection costs a socket
        # timeout per attempt (a quarter of it), and a publish is tried twice, not four times
        return min(max(self.timeout / 4, 0.25), SOCKET_TIMEOUT)

    @property
    def redis(self) -> redis.Redis:
        """A client of the same Redis, for its TIME and a request's fate."""
        if self._redis is None:
            self._redis = connect(self.url, self.socket_timeout)
        return self._redis

    @property
    def app(self) -> Any:
        if self._app is None:
            from celery import Celery

            self._app = Celery("fleet-client", broker=self.url, backend=self.url, set_as_current=False)
            self._app.conf.update(target(self.url).celery_settings(self.socket_timeout, retries=1))
            self._app.conf.task_publish_retry_policy = {"max_retries": 1, "interval_start": 0,
                                                        "interval_step": 0.1, "interval_max": 0.1}
        return self._app

    def call(self, task: str, *args: Any) -> Any:
        """Send `task` with `args` and wait for its reply; `NotApplied` or `NoAnswer` if none
        comes in time (see the module's docstring)."""
        from kombu.exceptions import OperationalError

        with self._lock:
            try:
                return self._send_and_wait(task, args)
            except (NotApplied, NoAnswer):
                raise
            except OperationalError as exc:
                raise (redis_failure(exc, self.url)
                       or RedisUnreachable(f"cannot reach the broker at {masked(self.url)}: {exc}")) from None
            except Exception as exc:  # noqa: BLE001 - the control plane's typed error, rebuilt by Celery
                raise (redis_failure(exc, self.url) or FleetError(f"{type(exc).__name__}: {exc}")) from None

    def _send_and_wait(self, task: str, args: tuple[Any, ...]) -> Any:
        from celery.exceptions import TimeoutError as CeleryTimeout

        headers = stamp(self.redis, self.fleet_id, self.timeout)
        result = self.app.send_task(task, args=list(args), task_id=str(uuid.uuid4()), queue=self.queue,
                                    headers=headers)
        try:
            return result.get(timeout=self.timeout)
        except CeleryTimeout:
            pass
        waited = f"no control plane answered within {self.timeout:g} s"
        try:
            fate = abandon(self.redis, self.fleet_id, result.id, headers[DEADLINE])
            answered = fate not in NOT_APPLIED and result.ready()
        except redis.RedisError as exc:
            raise NoAnswer(f"{waited}, and Redis could not be asked whether one took the request "
                           f"({str(redis_cause(exc) or exc)[:200]}): it may still be applied") from None
        if not answered:  # stop listening for its answer now, not whenever the result is collected
            with contextlib.suppress(Exception):
                self.app.backend.remove_pending_result(result)
        if fate in NOT_APPLIED:
            raise NotApplied(f"{waited}: the request was not applied, and never will be (is `fleet up` running?)")
        if answered:  # the answer came as we gave up
            return result.get(timeout=self.timeout)
        raise NoAnswer(f"a control plane took the request but did not answer within {self.timeout:g} s: "
                       "it may have been applied (see `fleet status`)")
