"""Fleet's shared state in Redis: desired numbers, handle and launch records, events, and the
small markers of the reconcile. The key names come from `fleet.keys`, the records from
`fleet.model`, the Lua scripts from `fleet/lua/`.

Beside the handle records the store keeps a status index (handle -> status) and the counts by
status, so that the work of a reconcile and a sweep follows what changed, not the fleet's size:
a reconcile reads the counts, and the handle records only when it kills; a sweep compares the
provider's answer with the index and writes only what differs. Events about many handles are
one event per batch (`count`, `workers`, and up to 50 `handles` named).

Every change that touches more than one key, or reads before it writes, is one Lua script or one
WATCH/MULTI transaction. Every event is counted in the metrics hash, once per handle, by the same
script or transaction that appends it. Safe to share across threads (redis-py pools).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import redis

from fleet import clock
from fleet.counters import record_event
from fleet.keys import ClusterKeys, Keyspace
from fleet.model import (
    LIVE,
    TRANSITIONS,
    ClusterState,
    Counts,
    Desired,
    EventKind,
    HandleRecord,
    HandleStatus,
    LaunchRecord,
    Summary,
)
from fleet.scripts import Scripts

#: The console's chart: one sample of a cluster's workers per this many seconds at most, this many kept
SERIES_EVERY = 30.0
SERIES_KEEP = 240

EVENTS_MAXLEN = 1000
#: handles named in one batch event; `count` says how many there were (as lua/prelude.lua)
SAMPLE = 50
T = TypeVar("T")


@dataclass(frozen=True)
class StatusResult:
    pruned: int = 0  # workers of handles that died on their own
    changed: int = 0  # handles whose record changed
    gone: int = 0  # handles that left Redis (died, or killed and confirmed)
    dead: dict[str, str] = field(default_factory=dict)  # the handles that died on their own -> pool
    #: the ones of them that died before they ran -> their revision (a rollout's new worker failing)
    died_booting: dict[str, str] = field(default_factory=dict)


@dataclass
class Writes:
    """What one reconcile commits, in one MULTI (see `Store.commit`)."""

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


#: An index value as stored (bytes) -> its status: one dict look-up per handle on a read.
_INDEXED: dict[bytes, HandleStatus] = {s.value.encode(): s for s in HandleStatus}


def parse_index(raw: Mapping[bytes, bytes]) -> tuple[dict[str, HandleStatus], dict[str, str]]:
    """The index as stored (`status`, or `status@pool`) -> (handle -> status, handle -> pool)."""
    index: dict[str, HandleStatus] = {}
    pools: dict[str, str] = {}
    for h, v in raw.items():
        handle = h.decode()
        status = _INDEXED.get(v)
        if status is None:
            s, _, pool = v.decode().partition("@")
            status = HandleStatus(s)
            pools[handle] = pool
        index[handle] = status
    return index, pools


def index_value(rec: HandleRecord) -> str:
    return f"{rec.status.value}@{rec.pool}" if rec.pool else rec.status.value

def event_handles(event: Mapping[str, str]) -> list[str]:
    """The handles an event names (a batch event's `handles`, a single one's `handle`)."""
    if "handles" in event:
        return [h for h in event["handles"].split(",") if h and h != "..."]
    return [event["handle"]] if "handle" in event else []


def per_handle(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The events with a batch event split into one per handle it names (each with `handle`,
    and `workers` only when the batch is of one handle), for readers that follow handles."""
    out: list[dict[str, Any]] = []
    for e in events:
        if "handles" not in e:
            out.append(dict(e))
            continue
        rest = {k: v for k, v in e.items() if k not in ("handles", "count", "workers")}
        named = event_handles(e)
        for h in named:
            out.append({**rest, "handle": h, **({"workers": e["workers"]} if len(named) == 1 else {})})
    return out


def _desired(raw: Mapping[bytes, bytes]) -> Desired | None:
    if not raw or b"n" not in raw:
        return None
    return Desired(int(raw[b"n"]), int(raw.get(b"version", 0)), float(raw.get(b"at", 0)), int(raw.get(b"floor", 0)))


def _pending(raw: Mapping[bytes, bytes]) -> dict[str, LaunchRecord]:
    return {k.decode(): LaunchRecord.decode(v) for k, v in raw.items()}


def _snapshot(d: Mapping[bytes, bytes], h: Mapping[bytes, bytes], p: Mapping[bytes, bytes]) -> ClusterState:
    return ClusterState(_desired(d), {k.decode(): HandleRecord.decode(v) for k, v in h.items()}, _pending(p))


class Store:
    """Typed access to one fleet's state."""

    def __init__(self, client: redis.Redis, fleet_id: str) -> None:
        self.r = client
        self.fleet_id = fleet_id
        self.keys = Keyspace(fleet_id)
        self._scripts = Scripts(client)

    def of(self, cluster: str) -> ClusterKeys:
        return self.keys.cluster(cluster)

    def now(self) -> float:
        """Redis time (`fleet.clock`): every time stored in or compared with the state."""
        return clock.now(self.r)

    # -- desired ---------------------------------------------------------------------------
    def set_desired(self, cluster: str, n: int, *, floor: int | None = None, source: str = "request",
                    queued_ttl: int | None = None) -> tuple[int, bool]:
        """Store the desired number (and the autoscaler's floor) with its event; with
        `queued_ttl`, also set the "reconcile queued" marker if it is not set, in the same round
        trip. Returns (the new version, which only grows; whether this call set the marker)."""
        k = self.of(cluster)
        version, flagged = self._script("desired", cluster, [k.desired, k.queued], [
            n, "" if floor is None else floor, source, "" if queued_ttl is None else queued_ttl])
        return int(version), bool(flagged)

    def get_desired(self, cluster: str) -> Desired | None:
        return _desired(cast("Mapping[bytes, bytes]", self.r.hgetall(self.of(cluster).desired)))

    # -- the reconcile's markers -----------------------------------------------------------
    def mark_queued(self, cluster: str, ttl: int) -> bool:
        """Set the "reconcile queued" marker unless it is set: True if this call set it."""
        return bool(self.r.set(self.of(cluster).queued, "1", nx=True, ex=ttl))

    def clear_queued(self, cluster: str) -> None:
        self.r.delete(self.of(cluster).queued)

    def mark_again(self, cluster: str, ttl: int) -> None:
        """A reconcile found the lease taken: its holder is to reconcile once more."""
        self.r.set(self.of(cluster).again, "1", ex=ttl)

    def mark_check(self, cluster: str, delay: float) -> bool:
        """Set the "follow-up check queued" marker for `delay` seconds unless it is set: True if
        this call set it."""
        return bool(self.r.set(self.of(cluster).check, "1", nx=True, px=max(int(delay * 1000), 1)))

    def clear_check(self, cluster: str) -> None:
        self.r.delete(self.of(cluster).check)

    def index(self, cluster: str) -> dict[str, HandleStatus]:
        """Every handle's status (the index; built first if need be)."""
        return self.sweep_view(cluster).index

    def take_again(self, cluster: str) -> bool:
        """Clear the "again" marker; True if it was set."""
        return bool(self.r.delete(self.of(cluster).again))

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
        pipe = self.r.pipeline(transaction=False)
        for c in names:
            k = self.of(c)
            pipe.hgetall(k.desired)
            pipe.hgetall(k.handles)
            pipe.hgetall(k.pending)
        raw = pipe.execute()
        return {c: _snapshot(*raw[3 * i:3 * i + 3]) for i, c in enumerate(names)}

    def rebuild_counts(self, cluster: str) -> None:
        """Build the counts and the index from the records if `v` is missing (one script call;
        the readers below call it when they find the counts not whole)."""
        k = self.of(cluster)
        self._scripts["counts"](keys=[k.handles, k.index, k.counts])

    def counts(self, cluster: str) -> Counts:
        """Workers and handles by status."""
        return self.summary(cluster).counts

    def summaries(self, clusters: Iterable[str]) -> dict[str, Summary]:
        """Each cluster's counts, desired number and pending launches, in one round trip (two
        more for any cluster whose counts must be built first)."""
        names = list(clusters)
        while True:
            pipe = self.r.pipeline(transaction=False)
            for c in names:
                k = self.of(c)
                pipe.hgetall(k.counts)
                pipe.hgetall(k.desired)
                pipe.hgetall(k.pending)
            raw = pipe.execute()
            out = {c: Summary(_desired(raw[3 * i + 1]), Counts.decode(raw[3 * i]), _pending(raw[3 * i + 2]))
                   for i, c in enumerate(names)}
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
            pipe.hexists(k.counts, "v")
            pipe.hgetall(k.desired)
            pipe.hgetall(k.pending)
            pipe.hgetall(k.index)
            whole, d, p, index = pipe.execute()
            if whole:
                return SweepView(_desired(d), _pending(p), *parse_index(index))
            self.rebuild_counts(cluster)

    def remember_pools(self, specs: Mapping[str, Any], records: Mapping[str, str]) -> None:
        """Store each declared pool's provider and provider_options (cluster -> ClusterSpec), so
        that the handles of a pool later removed from the config are still swept and killed by
        their own provider; and each cluster's spec record (`fleet.retire.spec_record`), so that
        a cluster removed from the config can be retired. Provider options hold no secrets (the
        contract)."""
        pipe = self.r.pipeline(transaction=False)
        for cluster, spec in specs.items():
            if cluster in records:
                pipe.set(self.of(cluster).spec, records[cluster])
            if spec.pools:
                pipe.hset(self.of(cluster).pools, mapping={
                    p.name: json.dumps({"provider": p.provider, "provider_options": p.provider_options})
                    for p in spec.pools})
        pipe.execute()

    def spec_records(self, clusters: Iterable[str]) -> dict[str, bytes]:
        """The stored spec records of these clusters (those that have one)."""
        names = list(clusters)
        raw = cast("list[bytes | None]", self.r.mget([self.of(c).spec for c in names])) if names else []
        return {c: v for c, v in zip(names, raw, strict=True) if v}

    def declare(self, clusters: Iterable[str], ttl: float) -> None:
        """This process's config declares these clusters (for `ttl` seconds): a process still on an
        older config that retired one of them stands down meanwhile (fleet.retire)."""
        pipe = self.r.pipeline(transaction=False)
        for c in clusters:
            pipe.set(self.of(c).declared, "1", px=max(int(ttl * 1000), 1))
        pipe.execute()

    def declared(self, cluster: str) -> bool:
        return bool(self.r.exists(self.of(cluster).declared))

    def leftovers(self, cluster: str) -> bool:
        """Whether any key of the cluster is left (a retired cluster to forget again)."""
        k = self.of(cluster)
        return bool(self.r.exists(k.counts, k.index, k.events, k.series, k.rollout, k.spec, k.retiring, k.desired,
                                  k.autoscale, k.unknown, k.pools, k.notice))

    def has_state(self, cluster: str) -> bool:
        """Whether the cluster still has handles, pending launches or remains to kill."""
        k = self.of(cluster)
        return bool(self.r.exists(k.handles, k.pending, k.cleanup))

    def forget(self, cluster: str) -> int:
        """Delete every key of the cluster (a retired cluster with nothing left). Returns how many."""
        keys = list(self.r.scan_iter(match=self.of(cluster).prefix + "*", count=1000))
        return int(self.r.delete(*keys)) if keys else 0

    def pools_of(self, cluster: str, handles: Iterable[str]) -> dict[str, str]:
        """handle -> its pool ("" when recorded without one, or unknown): where to send its kill."""
        wanted = list(handles)
        records = self.records(cluster, wanted)
        return {h: records[h].pool if h in records else "" for h in wanted}

    def records(self, cluster: str, handles: Iterable[str]) -> dict[str, HandleRecord]:
        """The records of these handles (those that exist)."""
        wanted = list(handles)
        if not wanted:
            return {}
        raw = self.r.hmget(self.of(cluster).handles, wanted)
        return {h: HandleRecord.decode(v) for h, v in zip(wanted, raw, strict=True) if v}

    def commit(self, cluster: str, plan: Callable[[PlanView], tuple[Writes, T]]) -> T:
        """Read the cluster's plan view (WATCHing desired, pending and counts; and the handles if
        the plan reads their records), let `plan` decide what to write, and write it in one MULTI.
        If a watched key changed meanwhile (a run task recorded its handles, a sweep pruned one),
        read and plan again: never act twice on one state."""
        k = self.of(cluster)
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(k.desired, k.pending, k.counts)
                    # a WATCHing pipeline runs commands at once (until MULTI) and returns their replies
                    counts = Counts.decode(cast(Mapping[bytes, bytes], pipe.hgetall(k.counts)))
                    if not counts.whole:
                        pipe.unwatch()
                        self.rebuild_counts(cluster)
                        continue
                    desired = _desired(cast(Mapping[bytes, bytes], pipe.hgetall(k.desired)))
                    pending = _pending(cast(Mapping[bytes, bytes], pipe.hgetall(k.pending)))

                    def live_records() -> dict[str, HandleRecord]:
                        pipe.watch(k.handles)
                        index, _ = parse_index(cast(Mapping[bytes, bytes], pipe.hgetall(k.index)))
                        live = [h for h, st in index.items() if st in LIVE]
                        raw = cast(list[bytes | None], pipe.hmget(k.handles, live)) if live else []
                        return {h: HandleRecord.decode(v) for h, v in zip(live, raw, strict=True) if v}

                    writes, result = plan(PlanView(desired, pending, counts, live_records))
                    if writes.empty:
                        return result
                    pipe.multi()
                    for launch_id in writes.dropped:
                        pipe.hdel(k.pending, launch_id)
                    if writes.pending:
                        pipe.hset(k.pending, mapping={lid: rec.encode() for lid, rec in writes.pending.items()})
                    self._queue_moves(pipe, cluster, writes.moves)
                    for kind, items in writes.events:
                        self.queue_events(pipe, cluster, kind, items)
                    for name, n in writes.counters.items():
                        pipe.hincrby(self.keys.metrics, name, n)
                    pipe.execute()
                    return result
                except redis.WatchError:
                    continue

    def _queue_moves(self, pipe: Any, cluster: str, moves: Mapping[str, tuple[HandleRecord, HandleStatus]]) -> None:
        """Write changed handle records, with their index entries and the counts, on `pipe`."""
        if not moves:
            return
        k = self.of(cluster)
        pipe.hset(k.handles, mapping={h: rec.encode() for h, (rec, _) in moves.items()})
        pipe.hset(k.index, mapping={h: index_value(rec) for h, (rec, _) in moves.items()})
        delta: dict[str, int] = {}
        for rec, old in moves.values():
            if rec.status is old:
                continue
            for status, sign in ((old, -1), (rec.status, 1)):
                delta[status.value] = delta.get(status.value, 0) + sign * rec.workers
                delta[f"{status.value}:h"] = delta.get(f"{status.value}:h", 0) + sign
                if rec.pool:
                    name = f"{status.value}@{rec.pool}"
                    delta[name] = delta.get(name, 0) + sign * rec.workers
                if rec.rev and status in LIVE:
                    name = f"r:{rec.rev}"
                    delta[name] = delta.get(name, 0) + sign * rec.workers
        for name, n in delta.items():
            if n:
                pipe.hincrby(k.counts, name, n)

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

    # -- launches --------------------------------------------------------------------------
    def claim_launch(self, cluster: str, launch_id: str) -> tuple[str, int, bool, str, str]:
        """Mark a pending launch as taken by a run task: ('claimed', count, first: no run task
        had taken it before, its pool, its revision); ('settle', count, False, pool, rev) for a
        launch cancelled after a run task had taken it (it may have made workers); or
        ('cancelled'|'missing', 0, False, "", "")."""
        state, count, first, pool, rev = self._scripts["claim"](keys=[self.of(cluster).pending],
                                                                args=[launch_id, self.now()])
        return state.decode(), int(count), bool(int(first)), pool.decode(), rev.decode()

    def sample(self, cluster: str, now: float) -> bool:
        """Add a sample of the running and desired workers to the cluster's series, unless the
        newest is younger than SERIES_EVERY (several processes sweep). True if this call did."""
        k = self.of(cluster)
        return bool(self._scripts["sample"](keys=[k.series, k.counts, k.desired],
                                            args=[now, SERIES_EVERY, SERIES_KEEP]))

    def series(self, cluster: str, since: float = 0.0) -> list[tuple[float, int, int | None]]:
        """The samples (time, running, desired or None) newer than `since`, oldest first."""
        out = []
        for raw in reversed(cast("list[bytes]", self.r.lrange(self.of(cluster).series, 0, -1))):
            at, running, desired = raw.decode().split()
            if float(at) > since:
                out.append((float(at), int(running), None if desired == "-" else int(desired)))
        return out

    def drop_launch(self, cluster: str, launch_id: str) -> None:
        """Forget a pending launch (it failed for good)."""
        self.r.hdel(self.of(cluster).pending, launch_id)

    def _script(self, name: str, cluster: str, keys: list[str], args: list[Any]) -> Any:
        """Run one of the event-writing scripts (see lua/prelude.lua for the leading keys and args)."""
        return self._scripts[name](keys=[self.of(cluster).events, self.keys.metrics, *keys],
                                   args=[cluster, EVENTS_MAXLEN, self.now(), *args])

    def record_launch(self, cluster: str, launch_id: str, handles: list[str], pool: str = "", rev: str = "") -> str:
        """Move a launch's handles into the cluster (initializing, or stopping if it was cancelled
        meanwhile), recorded under its pool, and drop the pending entry, atomically. Returns the
        launch's previous state."""
        counts: dict[str, int] = {}
        for h in handles:
            counts[h] = counts.get(h, 0) + 1
        args: list[Any] = [launch_id, pool, rev]
        for h, w in counts.items():
            args += [h, w]
        k = self.of(cluster)
        return str(self._script("record", cluster, [k.pending, k.handles, k.index, k.counts], args).decode())

    # -- sweep and kills -------------------------------------------------------------------
    def apply_status(self, cluster: str, status: Mapping[str, str], grace: float = 0.0,
                     cleanup_retry: float = 10.0) -> StatusResult:
        """Write observed statuses in one script call; drops stopped handles. Dead ones (and
        stopping ones whose last kill failed) enter the cleanup hash: see `cleanup_due`."""
        if not status:
            return StatusResult()
        args: list[Any] = [grace, cleanup_retry]
        for h, s in status.items():
            args += [h, s]
        k = self.of(cluster)
        pruned, changed, gone, dead = self._script("status", cluster, [k.handles, k.cleanup, k.index, k.counts,
                                                                        k.notice], args)
        rows = [tuple(x.decode() for x in dead[i:i + 4]) for i in range(0, len(dead), 4)]
        return StatusResult(int(pruned), int(changed), int(gone), {h: p for h, p, _, _ in rows},
                            {h: rev for h, _, was, rev in rows if was == HandleStatus.INITIALIZING.value})

    def interrupt(self, cluster: str, notices: Mapping[str, tuple[str, float | None]],
                  default_notice: float = 120.0) -> list[str]:
        """Mark handles the cloud reclaims (handle -> (cause, deadline or None)) as interrupted,
        in one script call (lua/interrupt.lua): live ones move to draining until the deadline
        (`default_notice` seconds from now without one). Unknown and stopping handles, and
        handles already marked, are left as they are. Returns the handles moved to draining."""
        if not notices:
            return []
        args: list[Any] = [default_notice]
        for h, (cause, deadline) in notices.items():
            if deadline is not None and not math.isfinite(deadline):
                deadline = None  # a provider's nonsense (inf, nan) means "no deadline", never a failed script
            args += [h, str(cause)[:64], "" if deadline is None else deadline]
        k = self.of(cluster)
        moved = self._script("interrupt", cluster, [k.handles, k.index, k.counts, k.notice], args)
        return [h.decode() for h in moved]

    def record_kills(self, cluster: str, results: Mapping[str, bool], cleanup_retry: float = 10.0,
                     pool: str = "") -> None:
        """Count a kill attempt on each handle (they stay stopping until the provider no longer
        reports them; see apply_status); a failed one is an event. A failed kill of a handle that
        already left Redis enters the cleanup hash; a successful one ends a cleanup."""
        if not results:
            return
        args: list[Any] = [cleanup_retry, pool]
        for h, ok in results.items():
            args += [h, "1" if ok else "0"]
        k = self.of(cluster)
        self._script("killed", cluster, [k.handles, k.cleanup], args)

    def cleanup_due(self, cluster: str, retry: float, most: int) -> dict[str, str]:
        """Dead handles whose cleanup kill should be sent (again) now -> their pool; one script
        call. A successful kill (`record_kills`) ends a handle's cleanup."""
        due = self._script("cleanup_due", cluster, [self.of(cluster).cleanup], [retry, most])
        return {h.decode(): p.decode() for h, p in zip(due[::2], due[1::2], strict=True)}

    def transition(self, cluster: str, handles: Iterable[str], allowed: Iterable[HandleStatus], to: HandleStatus,
                   event: EventKind, *, event_fields: Mapping[str, Any] | None = None,
                   drain_until: float | None = None) -> list[str]:
        """Move handles whose status is in `allowed` to `to` (since = kill_at = now, and
        `drain_until` if given), with one event each (plus `event_fields`), atomically
        (WATCH/MULTI). Every move must be one of fleet.model.TRANSITIONS. Returns the handles moved."""
        ok = set(allowed)
        if bad := [s for s in ok if to not in TRANSITIONS[s]]:
            raise ValueError(f"{', '.join(map(str, bad))} -> {to} is not an allowed handle transition")
        key, wanted = self.of(cluster).handles, list(dict.fromkeys(handles))
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = cast(list[bytes | None], pipe.hmget(key, wanted)) if wanted else []
                    records = {h: HandleRecord.decode(v) for h, v in zip(wanted, raw, strict=True) if v}
                    moved = [h for h, r in records.items() if r.status in ok]
                    if not moved:
                        return []
                    now = self.now()
                    pipe.multi()
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
                    self._queue_moves(pipe, cluster, moves)
                    self.queue_events(pipe, cluster, event, events)
                    pipe.execute()
                    return moved
                except redis.WatchError:
                    continue

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
        """Set field `name` of existing handle records (handle -> value) in one WATCH/MULTI,
        writing only the records it changes. Returns how many it wrote."""
        key = self.of(cluster).handles
        wanted = list(values)
        if not wanted:
            return 0
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = cast(list[bytes | None], pipe.hmget(key, wanted))
                    changed: dict[str, HandleRecord] = {}
                    for h, v in zip(wanted, raw, strict=True):
                        if v and getattr(rec := HandleRecord.decode(v), name) != values[h]:
                            setattr(rec, name, values[h])
                            changed[h] = rec
                    if not changed:
                        return 0
                    pipe.multi()
                    pipe.hset(key, mapping={h: rec.encode() for h, rec in changed.items()})
                    pipe.execute()
                    return len(changed)
                except redis.WatchError:
                    continue

    # -- rollouts --------------------------------------------------------------------------
    def rollout_state(self, cluster: str) -> dict[str, str]:
        """The cluster's rollout memory: `state` (paused | stopped, or absent: rolling when there is
        anything to roll), `reason`, `at`, and `active` while outdated workers are being replaced."""
        raw = cast("Mapping[bytes, bytes]", self.r.hgetall(self.of(cluster).rollout))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def hold_rollout(self, cluster: str, state: str, reason: str) -> bool:
        """Pause or stop the cluster's rollout (`state`: paused | stopped); True if it was not so."""
        k = self.of(cluster).rollout
        was = self.r.hget(k, "state")
        self.r.hset(k, mapping={"state": state, "reason": reason[:300], "at": self.now()})
        return was != state.encode()

    def release_rollout(self, cluster: str) -> bool:
        """Let the cluster's rollout go on (resume, or a start after a stop); True if it was held."""
        k = self.of(cluster).rollout
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hget(k, "state")
            pipe.hdel(k, "state", "reason", "at")
            was, _ = pipe.execute()
        return was is not None

    def mark_rollout(self, cluster: str, active: bool) -> bool:
        """Remember whether a rollout is under way; True if that changed."""
        k = self.of(cluster).rollout
        return bool(self.r.hset(k, "active", "1")) if active else bool(self.r.hdel(k, "active"))

    def expire(self, cluster: str, handles: Iterable[str]) -> list[str]:
        """Mark live handles as outdated whatever their revision (max_lifetime): one script call;
        returns the handles marked (a handle marked before is left alone)."""
        wanted = list(dict.fromkeys(handles))
        if not wanted:
            return []
        k = self.of(cluster)
        return [h.decode() for h in self._script("expire", cluster, [k.handles, k.index, k.counts], wanted)]

    # -- recovery --------------------------------------------------------------------------
    def track_unknown(self, cluster: str, listed: Mapping[str, int], now: float,
                      pools: Mapping[str, str] | None = None) -> dict[str, float]:
        """Remember when each live handle the provider lists but Redis does not know was first
        seen (and the pool that listed it); forget the ones no longer in that set. Returns
        handle -> first seen."""
        key = self.of(cluster).unknown
        raw = cast("Mapping[bytes, bytes]", self.r.hgetall(key))
        old = {k.decode(): json.loads(v) for k, v in raw.items()}
        keep: dict[str, dict[str, Any]] = {}
        for h, w in listed.items():
            keep[h] = {"w": w, "first": old.get(h, {}).get("first", now)}
            if pools and pools.get(h):
                keep[h]["p"] = pools[h]
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(key)
        if keep:
            pipe.hset(key, mapping={h: json.dumps(v) for h, v in keep.items()})
        pipe.execute()
        return {h: float(v["first"]) for h, v in keep.items()}

    def unknown_workers(self, cluster: str) -> int:
        return sum(int(json.loads(v)["w"]) for v in self.r.hvals(self.of(cluster).unknown))

    def adopt(self, cluster: str, found: Mapping[str, tuple[int, str]], set_desired: bool,
              pools: Mapping[str, str] | None = None, revs: Mapping[str, str] | None = None) -> int:
        """Record handles found at the provider (handle -> (workers, status)), under the pool
        that listed each (`pools`); with set_desired and no desired number stored, desired :=
        the cluster's live workers (the seed's reconnect)."""
        args: list[Any] = ["1" if set_desired else "0"]
        for h, (w, s) in found.items():
            args += [h, w, s, (pools or {}).get(h, ""), (revs or {}).get(h, "")]
        k = self.of(cluster)
        return int(self._script("adopt", cluster, [k.handles, k.unknown, k.desired, k.cleanup, k.index, k.counts],
                                args))

    def epoch(self) -> bytes | None:
        """The fleet's epoch, written (SET NX, so by one writer) if it is missing."""
        current = self.r.get(self.keys.epoch)
        if current is None:
            self.r.set(self.keys.epoch, uuid.uuid4().hex, nx=True)
            current = self.r.get(self.keys.epoch)
        return cast("bytes | None", current)

    # -- autoscaler memory -----------------------------------------------------------------
    def autoscale_memory(self, cluster: str) -> dict[str, Any] | None:
        raw = self.r.get(self.of(cluster).autoscale)
        return dict(json.loads(raw)) if raw else None

    def set_autoscale_memory(self, cluster: str, memory: Mapping[str, Any], ttl: int = 86400) -> None:
        self.r.set(self.of(cluster).autoscale, json.dumps(dict(memory)), ex=ttl)

    # -- events ----------------------------------------------------------------------------
    def queue_event(self, pipe: Any, cluster: str, kind: EventKind, **fields: Any) -> None:
        """Append an event on `pipe` (a pipeline or the client) and count it, as emit() does."""
        self.queue_events(pipe, cluster, kind, [fields])

    def queue_events(self, pipe: Any, cluster: str, kind: EventKind, items: Iterable[Mapping[str, Any]]) -> None:
        """Append the `kind` events of `items` on `pipe`. Items about handles (with `handle` and
        `workers`) become one event per group of equal other fields, with `count`, `workers` (the
        sum) and `handles` (up to SAMPLE named); others are one event each. Each item counts once
        in the metrics hash, with one HINCRBY for them all."""
        key, n = self.of(cluster).events, 0
        groups: dict[tuple[tuple[str, str], ...], list[Mapping[str, Any]]] = {}
        for fields in items:
            n += 1
            if "handle" not in fields:
                pipe.xadd(key, {"kind": str(kind), **{k: str(v) for k, v in fields.items()}}, maxlen=EVENTS_MAXLEN,
                          approximate=True)
                continue
            rest = tuple(sorted((k, str(v)) for k, v in fields.items() if k not in ("handle", "workers")))
            groups.setdefault(rest, []).append(fields)
        for rest, members in groups.items():
            names = ",".join(str(m["handle"]) for m in members[:SAMPLE]) + (",..." if len(members) > SAMPLE else "")
            pipe.xadd(key, {"kind": str(kind), "count": len(members), "workers": sum(int(m.get("workers", 0))
                                                                                  for m in members),
                            "handles": names, **dict(rest)}, maxlen=EVENTS_MAXLEN, approximate=True)
        if n:
            record_event(pipe, self.keys, cluster, kind, n)

    def event(self, cluster: str, kind: EventKind, **fields: Any) -> None:
        pipe = self.r.pipeline(transaction=True)
        self.queue_event(pipe, cluster, kind, **fields)
        pipe.execute()

    def events(self, cluster: str, count: int = 50) -> list[dict[str, Any]]:
        """The newest `count` events, oldest first."""
        out = []
        rows = cast("list[tuple[bytes, dict[bytes, bytes]]]",
                    self.r.xrevrange(self.of(cluster).events, count=count))
        for eid, data in reversed(rows):
            ms = int(eid.split(b"-")[0])
            out.append({"at": ms / 1000.0, **{k.decode(): v.decode() for k, v in data.items()}})
        return out
