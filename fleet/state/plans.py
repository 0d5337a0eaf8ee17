"""The reconcile's commit: read the plan view of a cluster, let the planner decide, and write what
it decided in one MULTI on the state it read (`fleet.state.optimistic`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from redis.client import Pipeline

from fleet.model import LIVE, Counts, Desired, EventKind, HandleRecord, HandleStatus, LaunchRecord
from fleet.state.handles import Handles, decode_desired, decode_pending, parse_index
from fleet.state.optimistic import ReadAgain, Writer, optimistic

T = TypeVar("T")


@dataclass
class Writes:
    """What one reconcile commits, in one MULTI (see `Plans.commit`)."""

    dropped: list[str] = field(default_factory=list)  # queued launches cancelled: deleted
    pending: dict[str, LaunchRecord] = field(default_factory=dict)  # launch records to write
    #: handle -> (its new record, its old status)
    moves: dict[str, tuple[HandleRecord, HandleStatus]] = field(default_factory=dict)
    events: list[tuple[EventKind, list[dict[str, Any]]]] = field(default_factory=list)  # by kind
    counters: dict[str, int] = field(default_factory=dict)  # metrics hash fields to add to

    def event(self, kind: EventKind, **fields: Any) -> None:
        self.events.append((kind, [fields]))

    @property
    def empty(self) -> bool:
        return not (self.dropped or self.pending or self.moves or self.events)


@dataclass
class PlanView:
    """What a reconcile plans from: the desired number, the pending launches and the counts; the
    live handles' records are read (and WATCHed) only if the plan asks for them."""

    desired: Desired | None
    pending: dict[str, LaunchRecord]
    counts: Counts
    live_records: Callable[[], dict[str, HandleRecord]]


class Plans(Handles):
    """The reconcile's one transaction."""

    def commit(self, cluster: str, plan: Callable[[PlanView], tuple[Writes, T]]) -> T:
        """Read the cluster's plan view (WATCHing desired, pending and counts; and the handles if
        the plan reads their records), let `plan` decide what to write, and write it in one MULTI.
        If a watched key changed meanwhile (a run task recorded its handles, a sweep pruned one),
        read and plan again: never act twice on one state."""
        k = self.of(cluster)

        def attempt(pipe: Pipeline) -> tuple[T, Writer | None]:
            # a WATCHing pipeline runs commands at once (until MULTI) and returns their replies
            counts = Counts.decode(cast(Mapping[bytes, bytes], pipe.hgetall(k.counts)))
            if not counts.whole:
                self.rebuild_counts(cluster)
                raise ReadAgain
            desired = decode_desired(cast(Mapping[bytes, bytes], pipe.hgetall(k.desired)))
            pending = decode_pending(cast(Mapping[bytes, bytes], pipe.hgetall(k.pending)))

            def live_records() -> dict[str, HandleRecord]:
                pipe.watch(k.handles)
                index, _ = parse_index(cast(Mapping[bytes, bytes], pipe.hgetall(k.index)))
                live = [h for h, st in index.items() if st in LIVE]
                raw = cast(list[bytes | None], pipe.hmget(k.handles, live)) if live else []
                return {h: HandleRecord.decode(v) for h, v in zip(live, raw, strict=True) if v}

            writes, result = plan(PlanView(desired, pending, counts, live_records))
            return result, None if writes.empty else lambda tx: self._queue_writes(tx, cluster, writes)

        return optimistic(self.r, [k.desired, k.pending, k.counts], attempt)

    def _queue_writes(self, pipe: Pipeline, cluster: str, writes: Writes) -> None:
        """Queue a reconcile's writes on `pipe` (after MULTI)."""
        k = self.of(cluster)
        for launch_id in writes.dropped:
            pipe.hdel(k.pending, launch_id)
        if writes.pending:
            pipe.hset(k.pending, mapping={lid: rec.encode() for lid, rec in writes.pending.items()})
        self._queue_moves(pipe, cluster, writes.moves)
        for kind, items in writes.events:
            self.queue_events(pipe, cluster, kind, items)
        for name, n in writes.counters.items():
            pipe.hincrby(self.keys.metrics, name, n)
