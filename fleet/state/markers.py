"""The markers section: each cluster's desired number and the small markers of the reconcile
(queued, again, follow-up check), the autoscaler's memory, and the fleet's epoch."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any, cast

from fleet.model import Desired
from fleet.state.base import StoreBase
from fleet.state.handles import decode_desired


class Markers(StoreBase):
    """The desired number, the reconcile's markers, the autoscaler's memory, the epoch."""

    # -- desired ---------------------------------------------------------------------------
    def set_desired(self, cluster: str, n: int, *, floor: int | None = None, source: str = "request",
                    queued_ttl: int | None = None) -> tuple[int, bool]:
        """Store the desired number (and the autoscaler's floor) with its event; with
        `queued_ttl`, also set the "reconcile queued" marker if it is not set, in the same round
        trip. Returns (the new version, which only grows; whether this call set the marker)."""
        k = self.of(cluster)
        version, flagged = self._script("desired", cluster, [k.desired, k.queued], [
            n, "" if floor is None else floor, source, "" if queued_ttl is None else queued_ttl])
        return int(version), bool(flagged)

    def get_desired(self, cluster: str) -> Desired | None:
        return decode_desired(cast("Mapping[bytes, bytes]", self.r.hgetall(self.of(cluster).desired)))

    # -- the reconcile's markers -----------------------------------------------------------
    def mark_queued(self, cluster: str, ttl: int) -> bool:
        """Set the "reconcile queued" marker unless it is set: True if this call set it."""
        return bool(self.r.set(self.of(cluster).queued, "1", nx=True, ex=ttl))

    def clear_queued(self, cluster: str) -> None:
        self.r.delete(self.of(cluster).queued)

    def mark_again(self, cluster: str, ttl: int) -> None:
        """A reconcile found the lease taken: its holder is to reconcile once more."""
        self.r.set(self.of(cluster).again, "1", ex=ttl)

    def take_again(self, cluster: str) -> bool:
        """Clear the "again" marker; True if it was set."""
        return bool(self.r.delete(self.of(cluster).again))

    def mark_check(self, cluster: str, delay: float) -> bool:
        """Set the "follow-up check queued" marker for `delay` seconds unless it is set: True if
        this call set it."""
        return bool(self.r.set(self.of(cluster).check, "1", nx=True, px=max(int(delay * 1000), 1)))

    def clear_check(self, cluster: str) -> None:
        self.r.delete(self.of(cluster).check)

    # -- autoscaler memory and the epoch ---------------------------------------------------
    def autoscale_memory(self, cluster: str) -> dict[str, Any] | None:
        raw = self.r.get(self.of(cluster).autoscale)
        return dict(json.loads(raw)) if raw else None

    def set_autoscale_memory(self, cluster: str, memory: Mapping[str, Any], ttl: int = 86400) -> None:
        self.r.set(self.of(cluster).autoscale, json.dumps(dict(memory)), ex=ttl)

    def epoch(self) -> bytes | None:
        """The fleet's epoch, written (SET NX, so by one writer) if it is missing."""
        current = self.r.get(self.keys.epoch)
        if current is None:
            self.r.set(self.keys.epoch, uuid.uuid4().hex, nx=True)
            current = self.r.get(self.keys.epoch)
        return cast("bytes | None", current)
