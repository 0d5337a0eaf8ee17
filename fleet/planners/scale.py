"""The scale planner: given what is desired and what exists, decide what to cancel, kill and
launch (and, with `fleet.allocation`, in which pools). Moved here from `fleet.planner`, which
re-exports it.

No I/O here, so the rules can be tested exhaustively (see tests/test_planner.py and
tests/test_planner_scale.py):

* observed = workers of initializing + running handles + workers of live pending launches;
* scale-down takes from tiers in order: queued launches, launches in flight, initializing
  handles, running handles; within a tier it picks the subset with the smallest total that
  still covers the excess, so it never kills more than needed, preferring handles of worse
  pools, then idle ones, then the newest;
* when shared handles make an exact cut impossible it goes *below* the target and launches the
  difference (4+4 -> 5 kills one 4 and launches 1), never staying above it;
* launches never push the committed total (live + stopping + in-flight) past `max_workers`;
* it needs the handles one by one only to choose which to kill: given the totals, it asks for
  them (a callable) only when the pending launches do not cover the excess.

`decide` is its planner shape (`fleet.planners`): it runs last, asks for the desired number plus
the earlier planners' surge, lets the cluster go above `max_workers` by their headroom, leaves
out the handles they retire, and places its launch in pools.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from fleet import allocation
from fleet.model import GOING, LIVE, HandleRecord, HandleStatus, LaunchRecord, LaunchState
from fleet.planners.decision import Decision, Reason, headroom, retired, surge
from fleet.planners.lifetimes import idle_long
from fleet.planners.view import ClusterView

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class HandleView:
    handle: str
    workers: int
    status: HandleStatus
    since: float = 0.0
    busy: int = 0  # tasks active or reserved on its workers (last sweep), when known
    hold: bool = False  # an operator's hold: never chosen to be killed
    rank: int = 0  # its pool's rank (lower is better): a scale-down takes from worse pools first
    outdated: bool = False  # launched from an older revision of the spec: a scale-down takes it first
    idle_long: bool = False  # idle for the cluster's idle_timeout: a scale-down takes it before others

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", HandleStatus(self.status))


@dataclass(frozen=True)
class PendingView:
    launch_id: str
    count: int
    state: LaunchState
    created: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", LaunchState(self.state))


@dataclass
class Plan:
    cancel: list[str] = field(default_factory=list)
    kill: list[str] = field(default_factory=list)
    launch: int = 0
    observed: int = 0
    capped_by_max: bool = False

    @property
    def empty(self) -> bool:
        return not (self.cancel or self.kill or self.launch)


def choose_at_least(items: Sequence[tuple[K, int]], need: int) -> list[K]:
    """Keys of a subset of `items` (key, weight>0) whose weights sum to the smallest total >= need.

    Items earlier in `items` are preferred among equal weights. If the whole set sums to less
    than `need`, every key is returned.
    """
    if need <= 0:
        return []
    total = sum(w for _, w in items)
    if total <= need:
        return [k for k, _ in items]
    by_weight: dict[int, list[K]] = {}
    for key, weight in items:
        by_weight.setdefault(weight, []).append(key)
    if len(by_weight) == 1:
        (weight, keys), = by_weight.items()
        return keys[: -(-need // weight)]
    # Bounded knapsack reachability over sums up to need + max weight - 1, tracking how many
    # items of each weight reach each sum, then the smallest reachable sum >= need.
    cap = need + max(by_weight) - 1
    weights = sorted(by_weight)
    reach = [True] + [False] * cap
    stages: list[list[int]] = []
    for weight in weights:
        limit = len(by_weight[weight])
        used = [0] * (cap + 1)
        new = reach[:]
        for s in range(weight, cap + 1):
            if not new[s] and new[s - weight] and used[s - weight] < limit:
                new[s] = True
                used[s] = used[s - weight] + 1
        stages.append(used)
        reach = new
    best = next(s for s in range(need, cap + 1) if reach[s])
    chosen: list[K] = []
    for weight, used in zip(reversed(weights), reversed(stages), strict=True):
        n = used[best]
        chosen.extend(by_weight[weight][:n])
        best -= n * weight
    return chosen


@dataclass(frozen=True)
class Totals:
    """Workers of the live (initializing + running) and going (draining + stopping) handles."""

    live: int
    going: int

    @classmethod
    def of(cls, handles: Sequence[HandleView]) -> Totals:
        return cls(sum(h.workers for h in handles if h.status in LIVE),
                   sum(h.workers for h in handles if h.status in GOING))


def plan(
    desired: int,
    max_workers: int,
    handles: Sequence[HandleView] | Callable[[], Sequence[HandleView]],
    pending: Sequence[PendingView],
    *,
    totals: Totals | None = None,
    unknown: int = 0,
    may_launch: bool = True,
) -> Plan:
    """What one reconcile does to move from what exists towards `desired`.

    `handles`: the cluster's handles, or a callable that reads them (called at most once, and
    only if the plan kills; then `totals` must agree with what it returns). `totals`: the
    handles' totals, if known without reading them. `unknown`: workers the provider lists that
    Redis does not know yet (they count against max_workers until adopted). `may_launch=False`
    (at quota, a permanent error) plans no launch.
    """
    read: list[Sequence[HandleView]] = []

    def all_handles() -> Sequence[HandleView]:
        if not read:
            read.append(handles() if callable(handles) else handles)
        return read[0]

    if totals is None:
        totals = Totals.of(all_handles())
    stopping = totals.going
    open_pending = [p for p in pending if p.state is not LaunchState.CANCELLED]
    # Cancelled launches already claimed by a run task may still materialise: they count
    # against max_workers until their run task records (and kills) them.
    ghost = sum(p.count for p in pending if p.state is LaunchState.CANCELLED)
    observed = totals.live + sum(p.count for p in open_pending)
    result = Plan(observed=observed)

    excess = observed - desired
    if excess > 0:
        def newest(xs: list[PendingView]) -> list[PendingView]:
            return sorted(xs, key=lambda p: -p.created)

        def idlest(status: HandleStatus) -> Callable[[], list[tuple[str, int]]]:
            # idle ones first (a busy one's work would be lost), the worst pool first, then the newest
            def items() -> list[tuple[str, int]]:
                chosen = sorted((h for h in all_handles() if h.status is status and not h.hold),
                                key=lambda h: (h.busy > 0, not h.idle_long, not h.outdated, -h.rank, h.busy,
                                               -h.since))
                return [(h.handle, h.workers) for h in chosen]
            return items

        def launches(state: LaunchState) -> Callable[[], list[tuple[str, int]]]:
            return lambda: [(p.launch_id, p.count) for p in newest([p for p in open_pending if p.state is state])]

        tiers: list[tuple[str, Callable[[], list[tuple[str, int]]]]] = [
            ("cancel", launches(LaunchState.QUEUED)),
            ("cancel", launches(LaunchState.IN_FLIGHT)),
            ("kill", idlest(HandleStatus.INITIALIZING)),
            ("kill", idlest(HandleStatus.RUNNING)),
        ]
        chosen: list[tuple[int, str, str, int]] = []  # (tier, action, key, workers)
        for tier, (action, listed) in enumerate(tiers):
            if excess <= 0:
                break
            items = listed()
            weights = dict(items)
            for key in choose_at_least(items, excess):
                chosen.append((tier, action, key, weights[key]))
                excess -= weights[key]
        # A later tier may overshoot enough to spare something an earlier tier gave up: keep
        # it (initializing handles first, then launches in flight, then queued ones).
        for item in sorted(chosen, key=lambda c: -c[0]):
            if item[3] <= -excess:
                chosen.remove(item)
                excess += item[3]
        for _, action, key, _ in chosen:
            getattr(result, action).append(key)

    cancel_set = set(result.cancel)
    cancelled = {p.launch_id for p in pending if p.launch_id in cancel_set}
    removed = sum(p.count for p in pending if p.launch_id in cancelled)
    kill_set = set(result.kill)  # once: built per handle, it made large scale-downs quadratic
    killed = sum(h.workers for h in all_handles() if h.handle in kill_set) if kill_set else 0
    remaining = observed - removed - killed
    want = max(desired - remaining, 0)
    in_flight_cancelled = sum(p.count for p in pending if p.launch_id in cancelled and p.state is LaunchState.IN_FLIGHT)
    committed = remaining + stopping + killed + ghost + in_flight_cancelled + unknown
    room = max(max_workers - committed, 0) if may_launch else 0
    result.launch = min(want, room)
    result.capped_by_max = may_launch and result.launch < want
    return result


def handle_views(records: Mapping[str, HandleRecord], view: ClusterView) -> list[HandleView]:
    """The planner's view of `records`: each with its pool's rank, and whether it is outdated or
    idle for the cluster's `idle_timeout` (a scale-down takes those first)."""
    idle = view.spec.idle_timeout
    return [HandleView(h, r.workers, r.status, r.since, r.busy, r.hold, view.rank_of(r), view.is_outdated(r),
                       idle_long(r, idle, view.now))
            for h, r in records.items()]


def pending_views(pending: Mapping[str, LaunchRecord]) -> list[PendingView]:
    return [PendingView(lid, p.count, p.state, p.at) for lid, p in pending.items()]


@dataclass(frozen=True)
class ScaleDecision(Decision):
    """The scale planner's decision: `cancel` the pending launches, `retire` the handles (kills
    of the scale-down), `launch` per pool; `planned`: workers it wanted to launch before they
    were placed in pools; `skipped`: pools passed over for the launch, with why (a `fallback`);
    `observed` and `capped_by_max` as in `Plan`."""

    cancel: tuple[str, ...] = ()
    planned: int = 0
    observed: int = 0
    capped_by_max: bool = False
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def empty(self) -> bool:
        """Nothing to cancel, kill or launch."""
        return not (self.cancel or self.retire or self.planned)


def decide(view: ClusterView, earlier: Sequence[Decision] = ()) -> ScaleDecision:
    """What the scale planner does after the `earlier` decisions: see the module docstring. The
    handles they retire are going (no longer live, still counted against `max_workers`)."""
    gone = retired(earlier)
    moved = sum(view.records[h].workers for h in gone)  # only read when an earlier one retires
    totals = Totals(view.counts.live - moved, view.counts.going + moved)
    pools = view.pools

    def live() -> list[HandleView]:
        return handle_views({h: r for h, r in view.records.items() if h not in gone}, view)

    p = plan(view.goal + surge(earlier), view.spec.max_workers + headroom(earlier), live,
             pending_views(view.pending), totals=totals, unknown=view.unknown,
             may_launch=any(pool.open for pool in pools))
    where = allocation.allocate(p.launch, pools)
    return ScaleDecision(Reason.SCALE, retire=tuple(p.kill), launch=where.counts, cancel=tuple(p.cancel),
                         planned=p.launch, observed=p.observed, capped_by_max=p.capped_by_max,
                         skipped=tuple(where.skipped))
