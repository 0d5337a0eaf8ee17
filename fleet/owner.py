"""One fleet per public queue of a Redis database.

Public tasks arrive on the fleet's public queue (`fleet.public_queue`, default Celery's "celery").
Two fleets whose control planes consumed the same queue of the same database would each take the
other's requests. So a control-plane process that consumes the public queue claims it first
(lua/owner.lua): the key `fleet-queue:<queue>:owner` holds the fleet id for `TTL` seconds, and a
heartbeat thread renews it every `TTL / 5` while the process lives. A process of another fleet
that finds the key refuses to start (`QueueTaken`); processes of the same fleet share it. A stopped
fleet's claim lapses within `TTL` seconds.
"""

from __future__ import annotations

import logging
import threading

import redis

from fleet.errors import QueueTaken
from fleet.keys import queue_owner
from fleet.scripts import source

log = logging.getLogger(__name__)

#: Seconds a claim lives without a heartbeat.
TTL = 15.0


def refusal(queue: str, fleet_id: str, owner: str, where: str) -> str:
    return (f"fleet {fleet_id!r} cannot serve the public queue {queue!r} of {where}: the control plane of fleet "
            f"{owner!r} consumes it. Give each fleet its own Redis database (/0, /1, ...) or its own "
            "[fleet] public_queue (docs/configuration.md)")


def owner_of(client: redis.Redis, queue: str) -> str | None:
    """The fleet whose control plane consumes `queue` now, if any."""
    raw = client.get(queue_owner(queue))
    return raw.decode() if isinstance(raw, bytes) else raw


def check_free(client: redis.Redis, queue: str, fleet_id: str, where: str) -> None:
    """Raise QueueTaken if another fleet's control plane consumes `queue` (a check, no claim)."""
    owner = owner_of(client, queue)
    if owner is not None and owner != fleet_id:
        raise QueueTaken(refusal(queue, fleet_id, owner, where))


class QueueOwner:
    """This process's claim on `queue` for fleet `fleet_id`: `claim()` once (raises QueueTaken),
    then a heartbeat renews it until `stop()`."""

    def __init__(self, client: redis.Redis, queue: str, fleet_id: str, where: str, ttl: float = TTL) -> None:
        self.client = client
        self.queue = queue
        self.fleet_id = fleet_id
        self.where = where
        self.ttl = ttl
        self._script = client.register_script(source("owner"))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _renew(self) -> str:
        owner = self._script(keys=[queue_owner(self.queue)], args=[self.fleet_id, int(self.ttl * 1000)])
        return owner.decode() if isinstance(owner, bytes) else str(owner)

    def claim(self) -> None:
        """Claim the queue and keep it while this process lives; QueueTaken if another fleet has
        it. With Redis not answering yet, the heartbeat claims it once Redis answers."""
        try:
            owner = self._renew()
        except redis.RedisError as exc:
            log.warning("cannot check who consumes the public queue %r yet: %s", self.queue, exc)
            owner = self.fleet_id
        if owner != self.fleet_id:
            raise QueueTaken(refusal(self.queue, self.fleet_id, owner, self.where))
        self._thread = threading.Thread(target=self._beat, name="fleet-queue-owner", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 5):
            try:
                owner = self._renew()
            except redis.RedisError as exc:
                log.warning("cannot renew this fleet's claim on the public queue %r: %s", self.queue, exc)
                continue
            if owner != self.fleet_id:  # our claim lapsed (Redis lost it, a long stall) and another took it
                log.error("%s", refusal(self.queue, self.fleet_id, owner, self.where))

    def stop(self) -> None:
        """Stop the heartbeat (the claim lapses within TTL unless another process of the fleet keeps it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
