"""Autoscaling from the queue, as a pure decision (the sweep feeds it, Redis keeps its memory).

load = messages waiting in the cluster's queues + tasks active or reserved on its workers (work a
worker has prefetched is invisible in the queue's length, a known failure of queue-length
scalers). wanted = clamp(ceil(load / tasks_per_worker), min_workers, max_workers), and never below
the manual floor (the last `fleet.scale`). Up at once; down only after the load stayed low for
`scale_down_delay` seconds and at least `agreeing_sweeps` sweeps in a row asked for less, and then
only to the largest number any of them asked for (no flapping).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Memory:
    """What the autoscaler remembers between sweeps (kept in Redis)."""

    low_since: float | None = None
    agreeing: int = 0
    highest_low: int = 0


@dataclass(frozen=True)
class Decision:
    desired: int | None  # None: leave the desired number as it is
    memory: Memory
    wanted: int


def decide(*, load: int, current: int, floor: int, min_workers: int, max_workers: int,
           tasks_per_worker: int, scale_down_delay: float, agreeing_sweeps: int,
           memory: Memory, now: float) -> Decision:
    wanted = math.ceil(load / tasks_per_worker) if load > 0 else 0
    wanted = min(max(wanted, floor, min_workers), max_workers)
    if wanted > current:
        return Decision(wanted, Memory(), wanted)
    if wanted == current:
        return Decision(None, Memory(), wanted)
    low_since = memory.low_since if memory.low_since is not None else now
    agreeing = memory.agreeing + 1
    highest = max(memory.highest_low, wanted)
    if now - low_since >= scale_down_delay and agreeing >= agreeing_sweeps:
        return Decision(highest, Memory(), wanted)
    return Decision(None, Memory(low_since, agreeing, highest), wanted)
