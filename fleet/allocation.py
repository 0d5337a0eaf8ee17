"""Pure pool arithmetic: which pools a launch goes to, and how far a rebalance may go (no I/O).

A cluster's pools are ranked (`PoolSpec.priority`, else their order). A launch goes to the best
ranked pools that may launch, shared by weight among pools of one rank, each up to its own cap;
a pool held (no capacity, at quota, in error, rate-limited, unresponsive) or full is skipped, and
the rest of the launch goes on to the next rank. The scale planner (`fleet.planners.scale`)
decides how many workers to launch; this module only decides where.

A rebalance (opt-in, `RebalanceSpec`) moves workers from pools ranked worse than the best pool
that may launch back to it, `max_in_flight` at a time: the reconcile asks for that many workers
above the desired number (the *surge*, launched in the better pool), and once more workers run
than desired, retires that many from the worse pools (*retire*). Running workers never drop below
the desired number, and the surge never goes past `max_workers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PoolView:
    """One pool as a reconcile sees it."""

    name: str
    rank: int  # lower is better
    weight: int = 1
    cap: int | None = None  # its own max_workers (None: only the cluster's)
    committed: int = 0  # workers in it (live, going) and pending for it
    live: int = 0  # workers of its initializing and running handles (a rebalance passes them without
    # the held ones: an operator's hold keeps a handle where it is)
    running: int = 0  # workers of its running handles
    blocked: str | None = None  # why it may not launch now (None: it may)
    waiting: int = 0  # workers of launches pending for it (part of `committed`)

    @property
    def room(self) -> int | None:
        """Workers it may still take under its own cap (None: no cap of its own)."""
        return None if self.cap is None else max(self.cap - self.committed, 0)

    @property
    def open(self) -> bool:
        """It may launch now: not held, and not full."""
        return self.blocked is None and self.room != 0


@dataclass(frozen=True)
class Allocation:
    counts: dict[str, int]  # pool -> workers to launch there (pools given none are left out)
    skipped: list[tuple[str, str]]  # pools ranked before the first that launches: (pool, why)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _share(n: int, pools: Sequence[PoolView]) -> dict[str, int]:
    """`n` among `pools` by weight (largest remainder), each up to its room; what one cannot
    take goes to the others."""
    out = dict.fromkeys((p.name for p in pools), 0)
    left, active = n, list(pools)
    while left > 0 and active:
        total = sum(p.weight for p in active)
        quotas = {p.name: left * p.weight // total for p in active}
        rest = left - sum(quotas.values())
        for p in sorted(active, key=lambda p: -(left * p.weight % total))[:rest]:
            quotas[p.name] += 1
        given, full = 0, []
        for p in active:
            room = None if p.room is None else p.room - out[p.name]
            take = quotas[p.name] if room is None else min(quotas[p.name], room)
            out[p.name] += take
            given += take
            if room is not None and take >= room:
                full.append(p.name)
        left -= given
        if given == 0:
            break
        active = [p for p in active if p.name not in full]
    return {k: v for k, v in out.items() if v}


def allocate(n: int, pools: Sequence[PoolView]) -> Allocation:
    """Where `n` new workers go: see the module docstring."""
    counts: dict[str, int] = {}
    skipped: list[tuple[str, str]] = []
    left = n
    for rank in sorted({p.rank for p in pools}):
        if left <= 0:
            break
        group = [p for p in pools if p.rank == rank]
        usable = [p for p in group if p.open]
        if not counts:
            skipped += [(p.name, p.blocked or "full") for p in group if not p.open]
        shared = _share(left, usable)
        counts.update(shared)
        left -= sum(shared.values())
    return Allocation(counts, skipped)


@dataclass(frozen=True)
class Rebalance:
    surge: int = 0  # workers to ask for above the desired number, for the better pool
    retire: int = 0  # workers of worse pools to drain or kill now
    best: int = 0  # the rank of the best pool that may launch


@dataclass(frozen=True)
class RebalanceBounds:
    """What bounds a rebalance step. `desired`: the desired number; `running`: running workers
    of the cluster; `max_in_flight`: replacements in flight at most (`RebalanceSpec`); `room`:
    workers the cluster may still launch under max_workers; `above`: live and pending workers
    above `desired` (a surge already under way: its launches and booting workers in the best
    pool are part of the surge, not taken from its room, or the next reconcile would see no room
    for them and cancel them)."""

    desired: int
    running: int
    max_in_flight: int
    room: int
    above: int = 0


def rebalance(pools: Sequence[PoolView], bounds: RebalanceBounds) -> Rebalance:
    """How far a rebalance goes in this reconcile, within `bounds`: see the module docstring."""
    # the best pool not held leads, full or not: a surge that fills its cap must not make the
    # worse pool look best (the next reconcile would drop the surge, and launch it again)
    candidates = [p for p in pools if p.blocked is None]
    if not candidates:
        return Rebalance()
    best = min(p.rank for p in candidates)
    worse = [p for p in pools if p.rank > best]
    worse_live = sum(p.live for p in worse)
    if not worse_live:
        return Rebalance(best=best)
    retire = min(sum(p.running for p in worse), max(bounds.running - bounds.desired, 0))
    leaders = [p for p in candidates if p.rank == best]
    under_way = min(max(bounds.above, 0), sum(p.live - p.running + p.waiting for p in leaders))
    space = bounds.room + under_way
    own = [p.room for p in leaders]
    if all(r is not None for r in own):
        space = min(space, sum(r or 0 for r in own) + under_way)
    surge = max(min(bounds.max_in_flight, worse_live - retire, space), 0)
    return Rebalance(surge, retire, best)
