"""What the console needs to say honestly what is down, and to act without blocking its pages:

* `Health`: is Redis reachable (a PING with a short timeout, no retry), and has the control plane
  swept lately (every sweep sets its cluster's `declared` key for `declared_ttl`, three sweep
  intervals and at least 5 s: none left means no sweep in that long).
* `Actions`: the actions' own bounded pool. At most `slots` run at once, each on a thread of its
  own with a Celery client of its own (Celery's Redis result consumer is not thread-safe); past
  that, `Busy` at once. Whatever Celery does, an action's answer comes within its timeout and a
  second or two: a request thread never waits longer, so reads keep the server's other threads.
* `Noted`: one log line when a problem starts, at most one a minute while it lasts, one when it
  ends (no traceback per request).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError

from fleet.client import PublicTasks, masked
from fleet.config import FleetConfig
from fleet.connection import access_error, connect
from fleet.errors import FleetError
from fleet.keys import Keyspace
from fleet.retire import declared_ttl

log = logging.getLogger("fleet.console")

#: seconds a PING of Redis may take before Redis counts as unreachable
PING_TIMEOUT = 1.0
#: an action's answer comes at most this long after its own timeout
GRACE = 2.0


class Busy(FleetError):
    """Every action slot is taken: try again in a few seconds."""


def env_seconds(name: str, default: float, low: float = 0.5, high: float = 300.0) -> float:
    """A number of seconds from the environment variable `name`, or `default` if it is unset;
    FleetError if it is not a number from `low` to `high`."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise FleetError(f"{name} must be a number of seconds from {low:g} to {high:g}, not {raw[:20]!r}")
    return value


class Health:
    def __init__(self, config: FleetConfig, url: str) -> None:
        self.where = masked(url)
        # no retry: a PING that failed once is the answer
        # ACL user, password, TLS, Sentinel (a sentinel:// URL: the primary its sentinels name)
        self.probe = connect(url, PING_TIMEOUT, retry=Retry(NoBackoff(), 0))
        keys = Keyspace(config.fleet.id)
        self.beats = [keys.cluster(c).declared for c in config.clusters if c not in config.retired]
        self.ttl = declared_ttl(config)

    def redis_down(self, exc: BaseException) -> str:
        """What to say of Redis after `exc` (no password: the URL is masked). Redis, or a
        sentinel, refusing the credentials is said as that, not as unreachable."""
        refused = access_error(exc)
        if refused:
            return f"Redis at {self.where} refused the console: {refused}"
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, MasterNotFoundError):  # its text goes on with each sentinel's client repr
            reason = str(exc).split(" : ", 1)[0] + " by any sentinel (are the sentinels up?)"
        return f"Redis at {self.where} unreachable: {reason}"

    def redis_problem(self) -> str | None:
        """None if Redis answers a PING within PING_TIMEOUT, else what is wrong."""
        try:
            self.probe.ping()
        except redis.RedisError as exc:
            return self.redis_down(exc)
        return None

    def control_plane_problem(self) -> str | None:
        """None if a sweep ran lately (or no cluster is declared), else what is wrong. Raises
        redis.RedisError if Redis cannot be read."""
        if not self.beats or self.probe.exists(*self.beats):
            return None
        return (f"no control plane answered: no cluster was swept in the last {self.ttl:g} s "
                "(is `fleet up` running?); what is shown is what Redis holds, and may be out of date")

    def problem(self) -> str | None:
        """What is down, Redis first; None if nothing is."""
        try:
            return self.redis_problem() or self.control_plane_problem()
        except redis.RedisError as exc:
            return self.redis_down(exc)


class Actions:
    def __init__(self, config: FleetConfig, url: str, timeout: float, slots: int) -> None:
        self.timeout = timeout
        self.slots = slots
        self._idle: queue.SimpleQueue[PublicTasks] = queue.SimpleQueue()
        for _ in range(slots):
            self._idle.put(PublicTasks.of(config, url, timeout))

    def call(self, task: str, *args: Any) -> Any:
        """The task's reply; Busy at once if every slot is taken; FleetError (the client's, or
        "no answer") within `timeout` + GRACE seconds."""
        try:
            client = self._idle.get_nowait()
        except queue.Empty:
            raise Busy(f"busy: {self.slots} actions are already waiting for an answer; "
                       "try again in a few seconds") from None
        done: Future[Any] = Future()

        def run() -> None:
            try:
                done.set_result(client.call(task, *args))
            except BaseException as exc:  # noqa: BLE001 - handed to the request thread
                done.set_exception(exc)
            finally:
                self._idle.put(client)  # the slot is free only once the call really ended

        threading.Thread(target=run, name="console-action", daemon=True).start()
        try:
            return done.result(timeout=self.timeout + GRACE)
        except FutureTimeout:
            raise FleetError(f"no answer within {self.timeout + GRACE:g} s") from None


class Noted:
    """Log a problem once when it starts, at most once per `every` seconds while it lasts, and
    once when it ends."""

    def __init__(self, every: float = 60.0) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def problem(self, kind: str, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -self.every) < self.every:
                return
            self._last[kind] = now
        log.warning("console: %s", message)

    def over(self, kind: str) -> None:
        with self._lock:
            if self._last.pop(kind, None) is None:
                return
        log.warning("console: %s: answering again", kind)
