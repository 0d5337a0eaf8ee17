"""The store's one optimistic transaction: WATCH the keys, read, decide, and write what was
decided in one MULTI/EXEC; if a watched key changed meanwhile, read and decide again.

redis-py's `Redis.transaction` is not used: it EXECs even when there is nothing to write, one
more round trip for every reconcile and patch that changes nothing (`tests/test_state_cost.py`
counts them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import redis
from redis.client import Pipeline

T = TypeVar("T")

#: what an attempt decided to write: commands queued on the pipeline after MULTI
Writer = Callable[[Pipeline], None]


class ReadAgain(Exception):
    """Raised by an attempt that found what it read unusable and has repaired it (the counts
    rebuilt): the watches are dropped and the attempt runs again."""


def optimistic(client: redis.Redis, keys: Sequence[str],
               attempt: Callable[[Pipeline], tuple[T, Writer | None]]) -> T:
    """Run `attempt` on a pipeline that WATCHes `keys` until what it decides is written on the
    state it read.

    `attempt` reads through the pipeline (while it watches, its commands run at once and return
    their replies; it may WATCH more keys) and returns (its result, a writer or None). With None
    nothing is written (no MULTI; the watches end with the pipeline). Otherwise the writer queues
    its commands after MULTI and they are EXECuted together; if a watched key changed meanwhile,
    nothing is written and `attempt` runs again from the start: it never acts on a stale state,
    nor twice on one. Returns the result of the attempt whose writes went in."""
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(*keys)
                result, writer = attempt(pipe)
                if writer is not None:
                    pipe.multi()
                    writer(pipe)
                    pipe.execute()
                return result
            except ReadAgain:
                pipe.unwatch()
            except redis.WatchError:
                continue
