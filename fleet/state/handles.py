"""The handles-and-counts section: handle records, the status index (handle -> status, or
status@pool) and the counts by status that follow every move, so that a reconcile reads the
counts and a sweep the index, and the handle records only when they must; consistent snapshots;
atomic moves between statuses (fleet.model.TRANSITIONS) and patches of record fields."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from redis.client import Pipeline

from fleet import grammar
from fleet.keys import ClusterKeys
from fleet.model import (
    TRANSITIONS,
    ClusterState,
    Counts,
    Desired,
    EventKind,
    HandleRecord,
    HandleStatus,
    LaunchRecord,
    Summary,
    may_move,
)
from fleet.state.events import Events
from fleet.state.optimistic import Writer, optimistic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepView:
    """What a sweep starts from: the desired number, the pending launches, and every handle's
    status (the index), without its record."""

    desired: Desired | None
    pending: dict[str, LaunchRecord]
    index: dict[str, HandleStatus]
    #: handle -> its pool, for the handles recorded under one (the others are in the first pool)
    pools: dict[str, str] = field(default_factory=dict)

    def in_pool(self, pool: str, default_pool: str) -> dict[str, HandleStatus]:
        """The index of the handles of `pool` (handles without one belong to `default_pool`)."""
        return {h: s for h, s in self.index.items() if self.pools.get(h, default_pool) == pool}


def legal(cluster: str, handle: str, old: HandleStatus | None, new: HandleStatus | None) -> bool:
    """Whether fleet.model.TRANSITIONS allows `handle` to move from `old` to `new`; a move it
    does not allow is logged (the caller refuses it: nothing of it is written)."""
    if may_move(old, new):
        return True
    log.warning("refused an illegal handle transition in %s: %s %s -> %s", cluster, handle, old, new)
    return False


#: An index value as stored (bytes) -> its status: one dict look-up per handle on a read.
_INDEXED: dict[bytes, HandleStatus] = {s.value.encode(): s for s in HandleStatus}


def parse_index(raw: Mapping[bytes, bytes]) -> tuple[dict[str, HandleStatus], dict[str, str]]:
    """The index as stored (`fleet.grammar.index_value`) -> (handle -> status, handle -> pool)."""
    index: dict[str, HandleStatus] = {}
    pools: dict[str, str] = {}
    for h, v in raw.items():
        handle = h.decode()
        status = _INDEXED.get(v)
        if status is None:
            s, pool = grammar.split_index(v.decode())
            status = HandleStatus(s)
            pools[handle] = pool
        index[handle] = status
    return index, pools


def index_value(rec: HandleRecord) -> str:
    return grammar.index_value(rec.status, rec.pool)


def decode_desired(raw: Mapping[bytes, bytes]) -> Desired | None:
    """The desired hash as stored -> its value (None if no number is stored)."""
    if not raw or b"n" not in raw:
        return None
    return Desired(int(raw[b"n"]), int(raw.get(b"version", 0)), float(raw.get(b"at", 0)), int(raw.get(b"floor", 0)))


def decode_pending(raw: Mapping[bytes, bytes]) -> dict[str, LaunchRecord]:
    """The pending hash as stored -> launch id -> its record."""
    return {k.decode(): LaunchRecord.decode(v) for k, v in raw.items()}


def _snapshot(d: Mapping[bytes, bytes], h: Mapping[bytes, bytes], p: Mapping[bytes, bytes]) -> ClusterState:
    return ClusterState(decode_desired(d), {k.decode(): HandleRecord.decode(v) for k, v in h.items()},
                        decode_pending(p))


class Handles(Events):
    """Reading the handles, the index and the counts; moving and patching handle records."""

    # -- snapshots -------------------------------------------------------------------------
    def read(self, cluster: str) -> ClusterState:
        """One consistent snapshot of a cluster (MULTI)."""
        k = self.of(cluster)
        pipe = self.r.pipeline(transaction=True)
        pipe.hgetall(k.desired)
        pipe.hgetall(k.handles)
        pipe.hgetall(k.pending)
        return _snapshot(*pipe.execute())

    def read_many(self, clusters: Iterable[str]) -> dict[str, ClusterState]:
        names = list(clusters)
        rows = self._hashes(names, lambda k: (k.desired, k.handles, k.pending))
        return {c: _snapshot(*row) for c, row in zip(names, rows, strict=True)}

    def _hashes(self, names: list[str], which: Callable[[ClusterKeys], tuple[str, ...]]) -> list[list[Any]]:
        """The `which` hashes of each cluster, in one round trip (no MULTI): one list per cluster."""
        pipe = self.r.pipeline(transaction=False)
        for c in names:
            for key in which(self.of(c)):
                pipe.hgetall(key)
        raw = pipe.execute()
        n = len(raw) // len(names) if names else 0
        return [raw[n * i:n * i + n] for i in range(len(names))]

    def rebuild_counts(self, cluster: str) -> None:
        """Build the counts and the index from the records if `v` is missing (one script call;
        the readers below call it when they find the counts not whole)."""
        k = self.of(cluster)
        self._script("counts", cluster, [k.handles, k.index, k.counts], [])

    def counts(self, cluster: str) -> Counts:
        """Workers and handles by status."""
        return self.summary(cluster).counts

    def summaries(self, clusters: Iterable[str]) -> dict[str, Summary]:
        """Each cluster's counts, desired number and pending launches, in one round trip (two
        more for any cluster whose counts must be built first)."""
        names = list(clusters)
        while True:
            rows = self._hashes(names, lambda k: (k.counts, k.desired, k.pending))
            out = {c: Summary(decode_desired(d), Counts.decode(n), decode_pending(p))
                   for c, (n, d, p) in zip(names, rows, strict=True)}
            stale = [c for c, s in out.items() if not s.counts.whole]
            if not stale:
                return out
            for c in stale:
                self.rebuild_counts(c)

    def summary(self, cluster: str) -> Summary:
        return self.summaries([cluster])[cluster]

    def sweep_view(self, cluster: str) -> SweepView:
        """Desired, pending and the status index, in one round trip (two more if the counts and
        the index must be built first)."""
        k = self.of(cluster)
        while True:
            pipe = self.r.pipeline(transaction=False)
            pipe.hexists(k.counts, grammar.WHOLE)
            pipe.hgetall(k.desired)
            pipe.hgetall(k.pending)
            pipe.hgetall(k.index)
            whole, d, p, index = pipe.execute()
            if whole:
                return SweepView(decode_desired(d), decode_pending(p), *parse_index(index))
            self.rebuild_counts(cluster)

    def index(self, cluster: str) -> dict[str, HandleStatus]:
        """Every handle's status (the index; built first if need be)."""
        return self.sweep_view(cluster).index

    def records(self, cluster: str, handles: Iterable[str]) -> dict[str, HandleRecord]:
        """The records of these handles (those that exist)."""
        wanted = list(handles)
        if not wanted:
            return {}
        raw = self.r.hmget(self.of(cluster).handles, wanted)
        return {h: HandleRecord.decode(v) for h, v in zip(wanted, raw, strict=True) if v}

    def pools_of(self, cluster: str, handles: Iterable[str]) -> dict[str, str]:
        """handle -> its pool ("" when recorded without one, or unknown): where to send its kill."""
        wanted = list(handles)
        records = self.records(cluster, wanted)
        return {h: records[h].pool if h in records else "" for h in wanted}

    def tracked_clusters(self) -> dict[str, int]:
        """Every cluster name that has handles in Redis, live or dead with remains still to kill
        (the cleanup hash) -> how many (a SCAN: for start-up and the CLI, not for the sweep)."""
        names: set[str] = set()
        for kind in ("handles", "cleanup"):
            for key in self.r.scan_iter(match=self.keys.pattern(kind), count=1000):
                if (name := self.keys.cluster_of(key, kind)) is not None:
                    names.add(name)
        ordered = sorted(names)
        pipe = self.r.pipeline(transaction=False)
        for n in ordered:
            pipe.hlen(self.of(n).handles)
            pipe.hlen(self.of(n).cleanup)
        counts = pipe.execute()
        totals = {n: int(counts[2 * i]) + int(counts[2 * i + 1]) for i, n in enumerate(ordered)}
        return {n: c for n, c in totals.items() if c}

    def cleanup_count(self, cluster: str) -> int:
        """Dead handles whose remains still wait for a successful kill."""
        return int(self.r.hlen(self.of(cluster).cleanup))

    # -- moves and patches -----------------------------------------------------------------
    def _queue_moves(self, pipe: Any, cluster: str, moves: Mapping[str, tuple[HandleRecord, HandleStatus]]) -> None:
        """Write changed handle records (handle -> (new record, old status)), with their index
        entries and the counts, on `pipe`. A move that fleet.model.TRANSITIONS does not allow
        is refused (logged, nothing of it written)."""
        moves = {h: (rec, old) for h, (rec, old) in moves.items() if legal(cluster, h, old, rec.status)}
        if not moves:
            return
        k = self.of(cluster)
        pipe.hset(k.handles, mapping={h: rec.encode() for h, (rec, _) in moves.items()})
        pipe.hset(k.index, mapping={h: index_value(rec) for h, (rec, _) in moves.items()})
        delta: dict[str, int] = {}
        for rec, old in moves.values():
            grammar.add(delta, grammar.moved(rec, old, rec.status))
        for name, n in delta.items():
            if n:
                pipe.hincrby(k.counts, name, n)

    def transition(self, cluster: str, handles: Iterable[str], allowed: Iterable[HandleStatus], to: HandleStatus,
                   event: EventKind, *, event_fields: Mapping[str, Any] | None = None,
                   drain_until: float | None = None) -> list[str]:
        """Move handles whose status is in `allowed` to `to` (since = kill_at = now, and
        `drain_until` if given), with one event each (plus `event_fields`), atomically
        (`fleet.state.optimistic`). Every move must be one of fleet.model.TRANSITIONS. Returns the
        handles moved."""
        ok = set(allowed)
        if bad := [s for s in ok if to not in TRANSITIONS[s]]:
            raise ValueError(f"{', '.join(map(str, bad))} -> {to} is not an allowed handle transition")
        key, wanted = self.of(cluster).handles, list(dict.fromkeys(handles))

        def attempt(pipe: Pipeline) -> tuple[list[str], Writer | None]:
            raw = cast(list[bytes | None], pipe.hmget(key, wanted)) if wanted else []
            records = {h: HandleRecord.decode(v) for h, v in zip(wanted, raw, strict=True) if v}
            moved = [h for h, r in records.items() if r.status in ok]
            if not moved:
                return [], None
            now = self.now()
            events, moves = [], {}
            for h in moved:
                rec = records[h]
                was = rec.status
                rec.status, rec.since, rec.kill_at = to, now, now
                if drain_until is not None:
                    rec.drain_until = drain_until
                if to is HandleStatus.RUNNING:  # a drain called off (fleet.retire)
                    rec.kill_at = rec.drain_until = None
                    rec.extra.pop("retire", None)
                moves[h] = (rec, was)
                events.append({"handle": h, "workers": rec.workers, "was": was, **(event_fields or {})})

            def write(tx: Pipeline) -> None:
                self._queue_moves(tx, cluster, moves)
                self.queue_events(tx, cluster, event, events)

            return moved, write

        return optimistic(self.r, [key], attempt)

    def set_busy(self, cluster: str, busy: Mapping[str, int]) -> int:
        """Store the tasks each handle's workers hold (the probe's answer); returns # changed."""
        return self._patch(cluster, "busy", busy)

    def set_idle(self, cluster: str, since: Mapping[str, float | None]) -> int:
        """Store since when each handle's workers hold no task (None: busy); writes changes only."""
        return self._patch(cluster, "idle_since", since)

    def set_hold(self, cluster: str, handle: str, hold: bool) -> bool:
        """An operator's hold on one handle; False if the handle is unknown. Writes on change only."""
        if not self.r.hexists(self.of(cluster).handles, handle):
            return False
        self._patch(cluster, "hold", {handle: hold})
        return True

    def _patch(self, cluster: str, name: str, values: Mapping[str, Any]) -> int:
        """Set field `name` of existing handle records (handle -> value) atomically
        (`fleet.state.optimistic`), writing only the records it changes. Returns how many it wrote."""
        key = self.of(cluster).handles
        wanted = list(values)
        if not wanted:
            return 0

        def attempt(pipe: Pipeline) -> tuple[int, Writer | None]:
            raw = cast(list[bytes | None], pipe.hmget(key, wanted))
            changed: dict[str, HandleRecord] = {}
            for h, v in zip(wanted, raw, strict=True):
                if v and getattr(rec := HandleRecord.decode(v), name) != values[h]:
                    setattr(rec, name, values[h])
                    changed[h] = rec
            if not changed:
                return 0, None

            def write(tx: Pipeline) -> None:
                tx.hset(key, mapping={h: rec.encode() for h, rec in changed.items()})

            return len(changed), write

        return optimistic(self.r, [key], attempt)
