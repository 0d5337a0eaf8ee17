"""The launches section: a run task's claim on a pending launch, the record of what a launch made,
and the end of a launch that failed for good. (The reconcile writes pending launches in its
commit: `fleet.state.plans`.)"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleet.state.base import StoreBase


class ClaimState(str, enum.Enum):
    """What a run task's claim found (lua/claim.lua)."""

    CLAIMED = "claimed"  # the launch is the task's to carry out
    SETTLE = "settle"  # cancelled after a run task had taken it: it may have made workers
    CANCELLED = "cancelled"  # cancelled before any run task took it: dropped
    MISSING = "missing"  # no such pending launch
    AT_BUDGET = "at_budget"  # not one handle fits under a cap (fleet.budget): dropped

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Claim:
    """A run task's claim on a pending launch. `first`: no run task had taken it before (only
    when claimed). `count`, `pool` and `revision` are the launch's when claimed or to settle;
    0 and "" when cancelled or missing. Under caps (fleet.budget): `cap` names the cap that
    cut the launch (`count` < `asked`) or refused it (AT_BUDGET), "" when none did; `committed`
    is the run rate (USD/h) that cap already covered, `limit` the cap."""

    state: ClaimState
    count: int = 0
    first: bool = False
    pool: str = ""
    revision: str = ""
    cap: str = ""
    committed: float = 0.0
    limit: float = 0.0
    asked: int = 0

    @property
    def cut(self) -> bool:
        """A cap cut the launch, or refused it."""
        return bool(self.cap)

    @classmethod
    def from_reply(cls, reply: Sequence[Any]) -> Claim:
        """The claim script's reply ({state, count, first, pool, rev[, cap, committed, cap
        micro-USD/h, asked]}, as Redis returns it) -> a Claim."""
        state, count, first, pool, rev, *more = reply
        claim = cls(ClaimState(state.decode()), int(count), bool(int(first)), pool.decode(), rev.decode())
        if more:
            cap, committed, limit, asked = more
            return cls(claim.state, claim.count, claim.first, claim.pool, claim.revision, cap.decode(),
                       int(committed) / 1e6, int(limit) / 1e6, int(asked))
        return claim


class Launches(StoreBase):
    """Claiming, recording and dropping pending launches."""

    def claim_launch(self, cluster: str, launch_id: str, prices: Mapping[str, float | None] | None = None,
                     per_handle: int = 1, caps: tuple[Sequence[str], str] = ((), "")) -> Claim:
        """Mark a pending launch as taken by a run task, now (see `Claim`). With `prices` (pool
        -> what one handle costs per hour, "" for a cluster without pools; `per_handle` workers
        each), a claimed launch records its pool's price and its run rate: it counts in the
        cluster's run rate while in flight (fleet.state.costs). With `caps` (`fleet.budget.claim_caps`:
        the clusters the caps cover and the caps), a first claim is admitted under them in the
        same step: cut to what fits, or dropped (AT_BUDGET) when not one handle fits."""
        clusters, caps_json = caps
        args: list[Any] = [launch_id, self.now(), per_handle, caps_json]
        for pool, usd in (prices or {}).items():
            if usd is not None:
                args += [pool, usd]
        keys = [self.of(cluster).pending]
        for c in clusters:
            keys += [self.of(c).cost, self.of(c).pending]
        return Claim.from_reply(self._scripts["claim"](keys=keys, args=args))

    def record_launch(self, cluster: str, launch_id: str, handles: list[str], pool: str = "", rev: str = "",
                      price: float | None = None) -> str:
        """Move a launch's handles into the cluster (initializing, or stopping if it was cancelled
        meanwhile), recorded under its pool with their hourly `price` (None: the one its claim
        recorded, if any), and drop the pending entry, atomically. The handles' price joins the
        run rate (lua/index.lua COST). Returns the launch's previous state."""
        counts: dict[str, int] = {}
        for h in handles:
            counts[h] = counts.get(h, 0) + 1
        args: list[Any] = [launch_id, pool, rev, "" if price is None else price]
        for h, w in counts.items():
            args += [h, w]
        k = self.of(cluster)
        return str(self._script("record", cluster, [k.pending, k.handles, k.index, k.counts, k.cost], args).decode())

    def drop_launch(self, cluster: str, launch_id: str) -> None:
        """Forget a pending launch (it failed for good)."""
        self.r.hdel(self.of(cluster).pending, launch_id)
