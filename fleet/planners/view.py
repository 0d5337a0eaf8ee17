"""The read-only view every planner decides from: built once per reconcile from the store's read
(`Store.commit`'s `PlanView`), plus what the reconciler knows besides (holds, unknown workers,
Redis time, the rollout's state). No I/O here but one: the live handles' records are read
through `load_records`, once, and only when a planner asks for them (`records`), so that a
reconcile that needs only the counts reads (and WATCHes) no record.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from fleet import allocation
from fleet.config import ClusterSpec
from fleet.model import Counts, Desired, HandleRecord, HandleStatus, LaunchRecord, LaunchState


def target(spec: ClusterSpec, desired: Desired | None) -> int:
    """The desired number, within the cluster's limits as the config says *now*; `min_workers`
    while nobody has asked for a number."""
    n = desired.n if desired else spec.min_workers
    return min(max(n, spec.min_workers), spec.max_workers)


def pool_views(spec: ClusterSpec, counts: Counts, pending: Mapping[str, LaunchRecord],
               blocked: Mapping[str, str | None]) -> list[allocation.PoolView]:
    """Every pool of the cluster with what is in it, from the counts and the pending launches."""
    first = spec.pool_list[0].name
    out = []
    for pool in spec.pool_list:
        def of(status: HandleStatus, name: str = pool.name) -> int:
            return counts.in_pool(name, status, first)
        waiting = sum(p.count for p in pending.values() if (p.pool or first) == pool.name)
        live = of(HandleStatus.INITIALIZING) + of(HandleStatus.RUNNING)
        out.append(allocation.PoolView(
            pool.name, spec.rank(pool.name), pool.weight, pool.max_workers,
            committed=live + of(HandleStatus.DRAINING) + of(HandleStatus.STOPPING) + waiting,
            live=live, running=of(HandleStatus.RUNNING), blocked=blocked.get(pool.name),
            waiting=sum(p.count for p in pending.values()
                        if (p.pool or first) == pool.name and p.state is not LaunchState.CANCELLED)))
    return out


def _no_records() -> dict[str, HandleRecord]:
    return {}


@dataclass(frozen=True)
class ClusterView:
    """One cluster as a reconcile sees it. Planners read it and never change it (nor the
    records it hands out: the reconciler copies a record before it moves it).

    `blocked`: why each pool may not launch now (None: it may). `unknown`: workers the provider
    lists that Redis does not know yet. `retired`: the cluster left the config (`fleet.retire`):
    nothing new for it. `rollout_held`: the rollout's state when an operator or a failed boot
    paused or stopped it (None: it may go on)."""

    spec: ClusterSpec
    desired: Desired | None
    counts: Counts
    pending: Mapping[str, LaunchRecord]
    blocked: Mapping[str, str | None] = field(default_factory=dict)
    unknown: int = 0
    now: float = 0.0
    retired: bool = False
    rollout_held: str | None = None
    load_records: Callable[[], Mapping[str, HandleRecord]] = _no_records

    @functools.cached_property
    def records(self) -> Mapping[str, HandleRecord]:
        """The live (initializing, running) handles' records, read on first use only."""
        return self.load_records()

    @functools.cached_property
    def current(self) -> frozenset[str]:
        """The current revision of every pool (`ClusterSpec.revisions`)."""
        return self.spec.revisions

    @functools.cached_property
    def goal(self) -> int:
        """The number to reach: the target, or, while nobody asked for a number (or Redis lost
        it: a launch in flight may just have recorded its workers), what runs and is pending
        until the sweep takes its count for the desired number (`Sweeper.observe`) or someone
        asks; `min_workers` still launches."""
        goal = target(self.spec, self.desired)
        if self.desired is None:
            goal = min(max(goal, self.counts.live + self.open_waiting), self.spec.max_workers)
        return goal

    @functools.cached_property
    def pools(self) -> list[allocation.PoolView]:
        """Every pool with what is in it (`pool_views`)."""
        return pool_views(self.spec, self.counts, self.pending, self.blocked)

    @property
    def open_waiting(self) -> int:
        """Workers of the pending launches not cancelled."""
        return sum(p.count for p in self.pending.values() if p.state is not LaunchState.CANCELLED)

    @property
    def waiting(self) -> int:
        """Workers of every pending launch, cancelled ones too (they may still appear)."""
        return sum(p.count for p in self.pending.values())

    @property
    def running(self) -> int:
        return self.counts.of(HandleStatus.RUNNING)

    @functools.cached_property
    def outdated(self) -> int:
        """Live workers of an older revision (none for a retired cluster: it launches nothing)."""
        return 0 if self.retired else self.counts.outdated(self.current)

    def is_outdated(self, rec: HandleRecord) -> bool:
        """`rec` was launched from a revision that is not current (a record without one never is)."""
        return bool(rec.rev) and rec.rev not in self.current

    def rank_of(self, rec: HandleRecord) -> int:
        """The rank of `rec`'s pool (a record without one is in the first pool)."""
        return self.spec.rank(rec.pool or self.spec.pool_list[0].name)
