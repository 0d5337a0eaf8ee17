"""The control-plane worker's consumer (`worker_consumer`): Celery's own, except that a message
Celery refuses (no task header, an unknown task name, a content type or shape it will not run, a
body it cannot decode) is set aside in the fleet's dead-letter list (see `fleet.deadletters`)
and logged without its payload. Celery's own handlers log the whole body, which may be large or
hold what a sender did not mean to show.

A task's `eta` set by another control-plane process is read in Redis time, not on the sender's
clock (tasks.skew). Everything else is Celery's behaviour: the message is rejected (so acknowledged on Redis), an
unknown task is marked failed with `NotRegistered` so that its caller learns of it, and the
`task_rejected` / `task_unknown` signals and the `task-failed` event are sent.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals
from celery.exceptions import NotRegistered
from celery.utils.collections import AttributeDict as Bunch
from celery.worker.consumer import Consumer as CeleryConsumer

from tasks.skew import local_eta

log = logging.getLogger(__name__)


def _set_aside(message: Any, reason: str) -> None:
    channel = getattr(message, "channel", None)
    queue = str((getattr(message, "delivery_info", None) or {}).get("routing_key") or "?")
    raw = getattr(message, "_raw", None)
    if channel is not None and hasattr(channel, "set_aside"):
        channel.set_aside(raw if raw is not None else getattr(message, "body", b""), queue, reason=reason)
    else:  # a transport other than Fleet's (rediss://, sentinel://): no dead-letter list
        log.error("dropped a message from queue %r that cannot be processed: %s", queue, reason)


class Consumer(CeleryConsumer):
    def update_strategies(self) -> None:
        """Celery's strategies, each reading a Fleet sender's `eta` on this host's clock (tasks.skew)."""
        super().update_strategies()
        for name, strategy in list(self.strategies.items()):
            self.strategies[name] = local_eta(strategy)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        _set_aside(message, "unknown_message")
        message.reject_log_error(log, self.connection_errors)
        signals.task_rejected.send(sender=self, message=message, exc=None)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        headers = message.headers if isinstance(message.headers, dict) else {}
        name, id_ = headers.get("task"), headers.get("id")
        _set_aside(message, f"unknown_task: {str(name)[:100]}")
        message.reject_log_error(log, self.connection_errors)
        if not (isinstance(name, str) and isinstance(id_, str)):
            return  # nobody to tell: no task id to store a failure under
        properties = message.properties if isinstance(message.properties, dict) else {}
        request = Bunch(name=name, chord=None, root_id=headers.get("root_id"),
                        correlation_id=properties.get("correlation_id"), reply_to=properties.get("reply_to"),
                        errbacks=None)
        self.app.backend.mark_as_failure(id_, NotRegistered(name), request=request)
        if self.event_dispatcher:
            self.event_dispatcher.send("task-failed", uuid=id_, exception=f"NotRegistered({name!r})")
        signals.task_unknown.send(sender=self, message=message, exc=exc, name=name, id=id_)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        _set_aside(message, f"invalid_task: {type(exc).__name__}")
        message.reject_log_error(log, self.connection_errors)
        signals.task_rejected.send(sender=self, message=message, exc=exc)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        _set_aside(message, f"decode_error: {type(exc).__name__}")
        message.ack()
