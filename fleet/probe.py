"""What a cluster's Celery workers are doing, asked over their broker: messages waiting in their
queues, and tasks active or reserved (prefetched) on each worker. Workers are matched to handles
by hostname: start them with `--hostname ${FLEET_HANDLE}@%h`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from fleet.amqp_management import Depth, Management
from fleet.connection import RedisTarget, target, transport_options
from fleet.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Activity:
    """Tasks active or reserved, by handle (workers whose hostname starts with `<handle>@`)."""

    busy: dict[str, int] = field(default_factory=dict)
    hostnames: dict[str, list[str]] = field(default_factory=dict)

    def of(self, handle: str) -> int:
        return self.busy.get(handle, 0)


class Probe:
    """One per broker URL; cheap to keep (connections are pooled by kombu). With `management_url`
    (RabbitMQ's management API), `depth` reads ready and unacknowledged messages there."""

    def __init__(self, broker_url: str, management_url: str | None = None, settings: Any = None) -> None:
        """`settings` (the fleet's `FleetSettings`): for a sentinel:// broker that is not the
        fleet's own Redis, its master's name and the sentinels' credentials."""
        self.app = Celery("fleet-probe", broker=broker_url, set_as_current=False)
        self.app.conf.broker_connection_retry_on_startup = True
        if broker_url.startswith(("redis://", "rediss://", "sentinel://")):  # timeouts, keepalive
            self.app.conf.broker_transport_options = transport_options()
            chosen = target(broker_url)
            if chosen.sentinel and not chosen.sentinel_master and settings is not None:
                chosen = RedisTarget.from_settings(broker_url, settings)
            self.app.conf.update(chosen.broker_access())  # the fleet's Redis: its user, TLS
            if chosen.sentinel:  # kombu's Sentinel transport finds the primary by the master's name
                if not chosen.sentinel_master:
                    raise ConfigError("a sentinel:// broker URL needs fleet.redis_sentinel_master (the master's name)")
                self.app.conf.broker_transport_options["master_name"] = chosen.sentinel_master
                self.app.conf.broker_transport_options["sentinel_kwargs"] = chosen.sentinel_kwargs()  # their password
        self.management = Management(management_url, broker_url) if management_url else None

    def depth(self, queues: Sequence[str]) -> Depth:
        """What `queues` hold: from the management API when there is one (ready and unacked;
        if it cannot be read, a warning and what follows), else ready only, by passive declare."""
        if self.management is not None:
            try:
                return self.management.depth(queues)
            except (OSError, ValueError) as exc:
                log.warning("cannot read the broker's management API (%s): counting ready messages only",
                            type(exc).__name__)
        return Depth(self.waiting(queues))

    def waiting(self, queues: Sequence[str]) -> int:
        """Messages waiting in `queues` (for Redis, priority sub-queues included)."""
        total = 0
        with self.app.connection_for_read() as conn:
            for queue in queues:
                with conn.channel() as channel:
                    try:
                        total += channel.queue_declare(queue=queue, passive=True).message_count
                    except conn.channel_errors:
                        pass  # no such queue (Redis: an empty one): nothing waits there
        return total

    def activity(self, handles: Sequence[str], timeout: float = 1.0) -> Activity:
        """Active and reserved tasks of the workers of `handles` (hostnames `<handle>@...`): two
        broadcasts only they answer, each done when all answered or after `timeout` seconds.
        Only workers that answered both are heard (see `tally`)."""
        if not handles:
            return Activity()
        inspect = self.app.control.inspect(timeout=timeout, limit=len(handles), pattern=_pattern(handles),
                                           matcher="pcre")
        active = inspect.active() or {}
        return tally(active, inspect.reserved() or {})

    def start_consuming(self, queues: Iterable[str], hostnames: Sequence[str]) -> None:
        """Tell these workers to take messages from `queues` again (a drain called off)."""
        if not hostnames:
            return
        for queue in queues:
            self.app.control.add_consumer(queue, destination=list(hostnames))

    def stop_consuming(self, queues: Iterable[str], handles: Sequence[str]) -> None:
        """Tell the workers of `handles` (hostnames `<handle>@...`) to stop taking new messages
        from `queues`; they finish what they hold. Sent by hostname pattern, to no list of
        names: a worker that cannot answer now (busy, stopped) reads it when it reads again."""
        if not handles:
            return
        for queue in queues:
            self.app.control.cancel_consumer(queue, pattern=_pattern(handles), matcher="pcre")


def tally(active: Mapping[str, list[Any] | None], reserved: Mapping[str, list[Any] | None]) -> Activity:
    """What the workers hold, from their answers to `inspect active` and `inspect reserved`
    (hostname -> tasks). A handle is heard only when each of its workers that answered one
    question answered the other too: a worker that answered just one (its control consumer
    came back between the two, as after its broker restarted, or one answer was late) may hold
    what the other would have said, and is not known to be idle, so its handle is left out
    (as if silent) for this time."""
    partial = {hostname.split("@", 1)[0] for hostname in set(active) ^ set(reserved)}
    found = Activity()
    for hostname in sorted(set(active) & set(reserved)):
        handle = hostname.split("@", 1)[0]
        if handle in partial:
            continue
        count = len(active[hostname] or []) + len(reserved[hostname] or [])
        found.busy[handle] = found.busy.get(handle, 0) + count
        found.hostnames.setdefault(handle, []).append(hostname)
    return found


def _pattern(handles: Sequence[str]) -> str:
    """The hostname pattern of the workers of `handles`."""
    return "^(?:" + "|".join(re.escape(h) for h in handles) + ")@"
