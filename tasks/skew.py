"""Celery's delays in Redis time, so that no two control-plane hosts need agree on the time.

A `countdown` (a reconcile's coalescing delay, a follow-up check, a provider task's retry) becomes
an `eta` header: an absolute time on the *sender's* clock, which Celery's worker compares with
*its own*. A receiver whose clock is 90 s behind would hold the task 90 s longer. So:

* `before_task_publish` (every process that sends): a message with an `eta` also gets
  `fleet_eta`, the same instant in Redis time (`fleet.clock`).
* `local_eta` (the worker's consumer, tasks.consumer): a message with `fleet_eta` has its `eta`
  rewritten to that instant on the receiver's clock before Celery reads it.

A message without `fleet_eta` (sent by another service) is left as it came. Each control-plane
worker also publishes its clock's offset from Redis at start and at every re-measurement, for
`fleet status` (`fleet.clock.report`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from celery.signals import before_task_publish, worker_ready

from fleet import clock

log = logging.getLogger(__name__)

HEADER = "fleet_eta"


def _client() -> redis.Redis:
    from tasks.app import manager

    return manager().redis


def _timestamp(value: Any) -> float:
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


@before_task_publish.connect
def _stamp(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Add `fleet_eta` (the `eta` in Redis time) to an outgoing Fleet task (`fleet.*`) with an `eta`."""
    if not headers or not headers.get("eta") or HEADER in headers or not str(headers.get("task")).startswith("fleet."):
        return
    try:
        headers[HEADER] = _timestamp(headers["eta"]) + clock.offset(_client())
    except (ValueError, TypeError, redis.RedisError) as exc:
        log.warning("cannot give a task's eta in Redis time (it keeps the sender's clock): %s", exc)


def localize(headers: dict[str, Any], offset: float) -> None:
    """Rewrite `eta` from `fleet_eta` for a host whose clock is `offset` s behind Redis."""
    try:
        at = float(headers[HEADER]) - offset
    except (KeyError, ValueError, TypeError):
        return
    headers["eta"] = datetime.fromtimestamp(at, tz=UTC).isoformat()


def local_eta(strategy: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap one of Celery's task strategies so that it reads `eta` on this host's clock."""

    def handle(message: Any, *args: Any, **kwargs: Any) -> Any:
        headers = getattr(message, "headers", None)
        if isinstance(headers, dict) and HEADER in headers and headers.get("eta"):
            try:
                localize(headers, clock.offset(_client()))
            except redis.RedisError as exc:
                log.warning("cannot read Redis time for a task's eta (it keeps the sender's clock): %s", exc)
        return strategy(message, *args, **kwargs)

    return handle


@worker_ready.connect
def _report_clock(**_: Any) -> None:
    """Publish this worker's clock offset (and keep publishing it) for `fleet status`."""
    from fleet.runtime import worker_role
    from tasks.app import config

    try:
        clock.report(_client(), config().fleet.id, worker_role())
    except redis.RedisError as exc:
        log.warning("cannot measure this host's clock against Redis: %s", exc)
