"""The pool arithmetic (fleet.allocation), exhaustively: where a launch goes, and how far a
rebalance may go, over random pools."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.allocation import PoolView, RebalanceBounds, allocate, rebalance

pools = st.lists(st.builds(
    PoolView, name=st.sampled_from("abcdefgh"), rank=st.integers(0, 3), weight=st.integers(1, 4),
    cap=st.one_of(st.none(), st.integers(0, 12)), committed=st.integers(0, 12), live=st.integers(0, 8),
    running=st.integers(0, 8), blocked=st.sampled_from([None, None, "no capacity", "at quota"])),
    min_size=1, max_size=6, unique_by=lambda p: p.name)


@settings(max_examples=400, deadline=None)
@given(pools, st.integers(0, 40))
def test_a_launch_goes_to_the_best_open_pools_within_their_caps(ps: list[PoolView], n: int) -> None:
    out = allocate(n, ps)
    by = {p.name: p for p in ps}
    assert out.total <= n
    for name, k in out.counts.items():
        assert k > 0 and by[name].open
        room = by[name].room
        assert room is None or k <= room
    if any(p.open and p.room is None for p in ps):
        assert out.total == n  # an uncapped open pool takes whatever is left
    # a worse rank gets something only when every open pool of a better rank is full
    for name in out.counts:
        for p in ps:
            if p.rank < by[name].rank and p.open:
                assert p.room is not None and out.counts.get(p.name, 0) == p.room
    # skipped: the pools before the first that launches that may not launch, with why
    for name, why in out.skipped:
        assert not by[name].open and why in ("no capacity", "at quota", "full")


def test_weights_share_a_rank() -> None:
    out = allocate(9, [PoolView("a", 0, weight=2), PoolView("b", 0, weight=1), PoolView("c", 1)])
    assert out.counts == {"a": 6, "b": 3}
    capped = allocate(9, [PoolView("a", 0, weight=2, cap=2), PoolView("b", 0, weight=1), PoolView("c", 1, cap=1)])
    assert capped.counts == {"a": 2, "b": 7}
    spilled = allocate(9, [PoolView("a", 0, cap=2), PoolView("b", 1, blocked="no capacity"), PoolView("c", 2)])
    assert spilled.counts == {"a": 2, "c": 7} and spilled.skipped == []
    first_held = allocate(3, [PoolView("a", 0, blocked="no capacity"), PoolView("b", 1)])
    assert first_held.counts == {"b": 3} and first_held.skipped == [("a", "no capacity")]


@settings(max_examples=400, deadline=None)
@given(pools, st.integers(0, 20), st.integers(0, 30), st.integers(1, 5), st.integers(0, 10), st.integers(-5, 10))
def test_a_rebalance_never_goes_below_desired_nor_past_its_budget(ps: list[PoolView], desired: int, running: int,
                                                                 budget: int, room: int, above: int) -> None:
    step = rebalance(ps, RebalanceBounds(desired, running, budget, room, above))
    assert 0 <= step.retire <= max(running - desired, 0)
    assert 0 <= step.surge <= min(budget, room + max(above, 0))
    if not any(p.blocked is None for p in ps):  # every pool held: nothing moves
        assert step.surge == step.retire == 0
    if not any(p.open for p in ps):  # nothing may launch: no surge (a retire is only a scale-down)
        assert step.surge <= max(above, 0)
    worse = [p for p in ps if p.rank > step.best]
    assert step.retire <= sum(p.running for p in worse)
    assert step.surge <= sum(p.live for p in worse)


def test_a_surge_under_way_keeps_its_place_at_max_workers() -> None:
    """max 4, desired 3, 3 on-demand running and the one surge worker booting in spot: no room is
    left, yet the surge stays (else the next reconcile would cancel it, and launch it again)."""
    pools = [PoolView("spot", 0, committed=1, live=1, running=0), PoolView("od", 1, committed=3, live=3, running=3)]
    assert rebalance(pools, RebalanceBounds(3, 3, 1, room=0, above=1)).surge == 1
    queued = [PoolView("spot", 0, committed=1, waiting=1), PoolView("od", 1, committed=3, live=3, running=3)]
    assert rebalance(queued, RebalanceBounds(3, 3, 1, room=0, above=1)).surge == 1
    # once it runs, one on-demand worker retires and nothing more is launched until it is gone
    ran = [PoolView("spot", 0, committed=1, live=1, running=1), PoolView("od", 1, committed=3, live=3, running=3)]
    step = rebalance(ran, RebalanceBounds(3, 4, 1, room=0, above=1))
    assert step.retire == 1
    after = [PoolView("spot", 0, committed=1, live=1, running=1), PoolView("od", 1, committed=3, live=2, running=2)]
    assert rebalance(after, RebalanceBounds(3, 3, 1, room=0, above=0)).surge == 0
