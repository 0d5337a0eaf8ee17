"""The rollouts section: each cluster's rollout memory (paused, stopped, or under way) and the
marking of handles as outdated whatever their revision (max_lifetime)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import cast

from fleet.state.base import StoreBase


class Rollouts(StoreBase):
    """Reading and changing a cluster's rollout memory; expiring handles."""

    def rollout_state(self, cluster: str) -> dict[str, str]:
        """The cluster's rollout memory: `state` (paused | stopped, or absent: rolling when there is
        anything to roll), `reason`, `at`, and `active` while outdated workers are being replaced."""
        raw = cast("Mapping[bytes, bytes]", self.r.hgetall(self.of(cluster).rollout))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def hold_rollout(self, cluster: str, state: str, reason: str) -> bool:
        """Pause or stop the cluster's rollout (`state`: paused | stopped); True if it was not so."""
        k = self.of(cluster).rollout
        was = self.r.hget(k, "state")
        self.r.hset(k, mapping={"state": state, "reason": reason[:300], "at": self.now()})
        return was != state.encode()

    def release_rollout(self, cluster: str) -> bool:
        """Let the cluster's rollout go on (resume, or a start after a stop); True if it was held."""
        k = self.of(cluster).rollout
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hget(k, "state")
            pipe.hdel(k, "state", "reason", "at")
            was, _ = pipe.execute()
        return was is not None

    def mark_rollout(self, cluster: str, active: bool) -> bool:
        """Remember whether a rollout is under way; True if that changed."""
        k = self.of(cluster).rollout
        return bool(self.r.hset(k, "active", "1")) if active else bool(self.r.hdel(k, "active"))

    def expire(self, cluster: str, handles: Iterable[str]) -> list[str]:
        """Mark live handles as outdated whatever their revision (max_lifetime): one script call;
        returns the handles marked (a handle marked before is left alone)."""
        wanted = list(dict.fromkeys(handles))
        if not wanted:
            return []
        k = self.of(cluster)
        return [h.decode() for h in self._script("expire", cluster, [k.handles, k.index, k.counts], wanted)]
