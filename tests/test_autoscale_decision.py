"""The autoscaler's decision rule, exactly (the real-queue behaviour is in test_autoscale_drain)."""

from __future__ import annotations

from fleet.autoscale import Decision, Memory, decide

BASE = {"floor": 0, "min_workers": 0, "max_workers": 10, "tasks_per_worker": 2, "scale_down_delay": 10.0,
        "agreeing_sweeps": 3}


def step(load: int, current: int, memory: Memory, now: float, **kw: object) -> Decision:
    return decide(load=load, current=current, memory=memory, now=now, **{**BASE, **kw})  # type: ignore[arg-type]


def test_up_at_once_clamped_to_max() -> None:
    assert step(7, 0, Memory(), 0).desired == 4
    assert step(100, 2, Memory(), 0).desired == 10


def test_down_only_after_the_delay_and_enough_agreeing_sweeps() -> None:
    memory, now = Memory(), 0.0
    for _ in range(5):  # load fell to 2 (1 worker) but not for long enough
        d = step(2, 4, memory, now)
        assert d.desired is None
        memory, now = d.memory, now + 2
    d = step(2, 4, memory, now)  # 10 s of lower load, 6 sweeps agreeing
    assert d.desired == 1


def test_down_to_the_largest_recent_recommendation_and_reset_by_a_rise() -> None:
    memory = Memory()
    for now, load in [(0, 0), (4, 4), (8, 0)]:
        memory = step(load, 4, memory, now).memory
    assert step(0, 4, memory, 12).desired == 2  # not 0: a sweep in the window asked for 2
    assert step(8, 4, memory, 12).memory == Memory()  # the load is back: the clock restarts


def test_floor_and_min_hold_it_up() -> None:
    assert step(0, 0, Memory(), 0, floor=3).desired == 3
    assert step(0, 2, Memory(), 0, min_workers=2).desired is None
