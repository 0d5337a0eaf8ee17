"""The rebalance planner (opt-in, `RebalanceSpec`): move workers from pools ranked worse than the
best pool that may launch back to it, `max_in_flight` at a time. Pure (no I/O); the arithmetic
of how far it goes is `fleet.allocation.rebalance`, this module chooses the handles.

It asks for a surge in the better pool (the scale planner launches it), and once more workers
run than desired, retires as many from the worse pools: idle ones first, then the worst pool,
then the newest. Never a held handle (nor counts on moving one), never a busy one where it would
be killed without a drain; running workers never drop below the desired number. It waits while
a rollout is under way, and a retired cluster has none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from fleet import allocation
from fleet.config import ClusterSpec
from fleet.model import Counts, HandleRecord, HandleStatus
from fleet.planners.decision import Decision, Reason, headroom, status_after, up_to
from fleet.planners.view import ClusterView, pool_views


def retirees(records: Mapping[str, HandleRecord], spec: ClusterSpec, best: int, most: int) -> list[str]:
    """Running handles of pools ranked worse than `best`, idle ones first, then the worst pool,
    then the newest, of `most` workers at most (a rebalance never goes below the desired
    number). Never a held one; never a busy one where it would be killed without a drain (a
    cluster with `queues` and no `drain_timeout`): it waits until it is idle."""
    first = spec.pool_list[0].name
    spare_busy = bool(spec.queues) and not spec.drain_timeout
    worse = sorted(((h, r) for h, r in records.items()
                    if r.status is HandleStatus.RUNNING and not r.hold and spec.rank(r.pool or first) > best
                    and not (spare_busy and r.busy)),
                   key=lambda hr: (hr[1].busy > 0, -spec.rank(hr[1].pool or first), hr[1].busy, -hr[1].since))
    return up_to(worse, most)


def without_held(pools: list[allocation.PoolView], records: Mapping[str, HandleRecord],
                 spec: ClusterSpec) -> list[allocation.PoolView]:
    """The pools with their held handles' workers left out of `live` and `running`: a rebalance
    never moves a held handle, so it must not count on moving it."""
    first = spec.pool_list[0].name
    held: dict[str, tuple[int, int]] = {}
    for r in records.values():
        if r.hold and r.status in (HandleStatus.INITIALIZING, HandleStatus.RUNNING):
            live, running = held.get(r.pool or first, (0, 0))
            held[r.pool or first] = (live + r.workers, running + r.workers * (r.status is HandleStatus.RUNNING))
    return [dataclasses.replace(p, live=p.live - held[p.name][0], running=p.running - held[p.name][1])
            if p.name in held else p for p in pools]


def after(counts: Counts, records: Mapping[str, HandleRecord], retire: Sequence[str], drain_timeout: float) -> Counts:
    """`counts` with the handles of `retire` moved to the status they retire to (by pool):
    what the pools hold once the reconcile commits."""
    return counts.after((records[h], records[h].status, status_after(drain_timeout, records[h].status))
                        for h in retire)


def decide(view: ClusterView, earlier: Sequence[Decision] = ()) -> Decision:
    """The rebalance's step in this reconcile: see the module docstring. It reads the live
    records only when it moves something."""
    spec = view.spec
    if not spec.rebalance or view.retired or view.outdated:
        return Decision(Reason.REBALANCE)
    ceiling = spec.max_workers + headroom(earlier)
    room = max(ceiling - view.counts.live - view.counts.going - view.waiting - view.unknown, 0)
    bounds = allocation.RebalanceBounds(view.goal, view.running, spec.rebalance.max_in_flight, room,
                                        above=view.counts.live + view.open_waiting - view.goal)
    step = allocation.rebalance(view.pools, bounds)
    if not (step.surge or step.retire):
        return Decision(Reason.REBALANCE)
    # a rebalance under way: its moves need the records (held handles stay put)
    records = view.records
    held = sum(r.workers for r in records.values() if r.hold)
    step = allocation.rebalance(without_held(view.pools, records, spec) if held else view.pools, bounds)
    retire = retirees(records, spec, step.best, step.retire)
    moved = sum(records[h].workers for h in retire)
    pools = pool_views(spec, after(view.counts, records, retire, spec.drain_timeout), view.pending, view.blocked)
    step = allocation.rebalance(without_held(pools, records, spec) if held else pools, dataclasses.replace(
        bounds, running=view.running - moved, above=view.counts.live - moved + view.open_waiting - view.goal))
    return Decision(Reason.REBALANCE, retire=tuple(retire), surge=step.surge)
