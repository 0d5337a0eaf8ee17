"""Noticing that Redis lost its data under a running control plane (a restart without
persistence, a FLUSHALL, or a failover to a replica that lacked the primary's last writes):
launches in flight then are invisible until their run tasks record them or the sweep adopts them,
so every worker holds launches off for `launch_timeout`."""

from __future__ import annotations

import logging
import threading

from fleet.holds import Holds
from fleet.replication import promoted_over, replication_ids
from fleet.store import Store

log = logging.getLogger(__name__)


class EpochWatch:
    """Remembers the fleet's epoch (a random value in Redis) as this process first saw it."""

    def __init__(self, store: Store, holds: Holds, hold_for: float) -> None:
        self.store = store
        self.holds = holds
        self.hold_for = hold_for
        self._seen: bytes | None = None
        self._replid = ""  # the replication id of the primary this process last saw
        self._lock = threading.Lock()

    def check(self) -> None:
        """Start the recovery hold if the epoch vanished or changed since this process saw it. A
        control plane that starts on an empty Redis holds nothing: whoever's SET NX wins writes
        the epoch, and everybody then reads the same value."""
        current = self.store.epoch()
        ids = replication_ids(self.store.r)
        with self._lock:
            # Only a change from an epoch this process already saw means lost data: a thread that
            # merely found the key missing at the first start raced another thread writing it.
            if self._seen is not None and current is not None and current != self._seen:
                self.holds.start_recovery(self.hold_for)
            elif promoted_over(self._replid, ids):  # a failover: the old primary's last writes may be lost
                log.warning("Redis failed over to a promoted replica: recovering as from lost data for %.0f s",
                            self.hold_for)
                self.holds.start_recovery(self.hold_for)
            self._seen = current
            self._replid = ids[0]
