"""The scale planner's rules, exactly and as properties (hypothesis)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.model import HandleStatus
from fleet.planner import HandleView, PendingView, choose_at_least, plan


def handles(*sizes: int, status: str = "running") -> list[HandleView]:
    return [HandleView(f"{status[0]}{i}", w, status, since=float(i)) for i, w in enumerate(sizes)]


def test_two_shared_containers_to_five_goes_below_and_launches_the_difference() -> None:
    # The R original stays at 8 for a target of 5 with two 4-worker containers.
    p = plan(5, 16, handles(4, 4), [])
    assert len(p.kill) == 1 and p.launch == 1


def test_three_four_three_to_eleven_launches_one() -> None:
    p = plan(11, 16, handles(3, 4, 3), [])
    assert p.kill == [] and p.cancel == [] and p.launch == 1


def test_ten_to_zero_kills_everything() -> None:
    hs = handles(4, 4, 2)
    p = plan(0, 16, hs, [])
    assert sorted(p.kill) == sorted(h.handle for h in hs) and p.launch == 0


def test_exact_cut_when_possible() -> None:
    p = plan(5, 16, handles(4, 3, 2), [])  # kill the 4: 3+2 = 5
    assert p.kill == ["r0"] and p.launch == 0


def test_scale_down_order_queued_then_in_flight_then_initializing_then_running() -> None:
    pending = [PendingView("q", 2, "queued"), PendingView("f", 2, "running")]
    hs = handles(2, status="initializing") + handles(2, status="running")
    assert plan(6, 16, hs, pending).cancel == ["q"]
    p = plan(4, 16, hs, pending)
    assert sorted(p.cancel) == ["f", "q"] and p.kill == []
    p = plan(2, 16, hs, pending)
    assert p.kill == ["i0"]
    p = plan(0, 16, hs, pending)
    assert sorted(p.kill) == ["i0", "r0"]


def test_launch_never_passes_max_counting_stopping_workers() -> None:
    hs = handles(4, status="stopping") + handles(4)
    p = plan(8, 8, hs, [])
    assert p.launch == 0 and p.capped_by_max
    hs = handles(4, 4)
    p = plan(5, 8, hs, [])  # kills a 4 (now stopping): 4 + 4 stopping = 8 = max, so no launch yet
    assert len(p.kill) == 1 and p.launch == 0 and p.capped_by_max


def test_cancelled_in_flight_launches_count_against_max() -> None:
    p = plan(4, 6, [], [PendingView("x", 4, "cancelled")])
    assert p.launch == 2


def test_choose_at_least_prefers_smallest_cover() -> None:
    assert sorted(choose_at_least([("a", 4), ("b", 3), ("c", 2)], 5)) == ["b", "c"]
    assert choose_at_least([("a", 4), ("b", 4)], 1) == ["a"]
    assert choose_at_least([], 3) == []


sizes = st.lists(st.integers(min_value=1, max_value=6), max_size=25)


@settings(max_examples=400, deadline=None)
@given(init=sizes, run=sizes, queued=sizes, desired=st.integers(0, 120), max_extra=st.integers(0, 40))
def test_plan_properties(init: list[int], run: list[int], queued: list[int], desired: int, max_extra: int) -> None:
    hs = handles(*init, status="initializing") + handles(*run, status="running")
    pending = [PendingView(f"p{i}", c, "queued") for i, c in enumerate(queued)]
    observed = sum(init) + sum(run) + sum(queued)
    max_workers = desired + max_extra
    p = plan(desired, max_workers, hs, pending)
    chosen = [c for i, c in enumerate(queued) if f"p{i}" in p.cancel] + [h.workers for h in hs if h.handle in p.kill]
    after = observed - sum(chosen)
    if observed <= desired:
        assert not chosen
        assert p.launch == min(desired - observed, max(max_workers - observed, 0))
    else:
        assert after <= desired  # never stays above the target
        assert all(after + w > desired for w in chosen)  # never kills or cancels more than needed
    assert after + p.launch <= desired  # never launches past the target
    killed = sum(h.workers for h in hs if h.handle in p.kill)  # these are stopping until gone
    assert p.launch == 0 or after + killed + p.launch <= max_workers  # never past max_workers


def test_held_handles_are_never_chosen_and_idle_ones_go_first() -> None:
    hs = [HandleView("held", 1, "running", since=3.0, hold=True), HandleView("busy", 1, "running", since=2.0, busy=3),
          HandleView("idle", 1, "running", since=1.0, busy=0)]
    assert plan(2, 16, hs, []).kill == ["idle"]
    assert sorted(plan(0, 16, hs, []).kill) == ["busy", "idle"]  # the held one stays, above the target


def test_draining_workers_count_against_max_but_not_as_live() -> None:
    hs = [HandleView("d", 2, "draining"), HandleView("r", 2, "running")]
    p = plan(4, 4, hs, [])
    assert p.launch == 0 and p.capped_by_max  # 2 live + 2 draining = max
    assert plan(4, 6, hs, []).launch == 2


def test_a_scale_down_takes_idle_first_then_long_idle_outdated_and_worse_pools() -> None:
    def h(name: str, busy: int = 0, **kw: Any) -> HandleView:
        return HandleView(name, 1, HandleStatus.RUNNING, since=1.0, busy=busy, **kw)
    handles = [h("busy-old-pool", busy=2, outdated=True, rank=5), h("fresh"), h("worse-pool", rank=1),
               h("outdated", outdated=True), h("long-idle", idle_long=True)]
    expected = ["long-idle", "outdated", "worse-pool", "fresh", "busy-old-pool"]
    for n in range(1, 6):
        assert set(plan(5 - n, 10, handles, []).kill) == set(expected[:n]), n
