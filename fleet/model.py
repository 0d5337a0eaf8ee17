"""Fleet's vocabulary: the statuses of a handle (from `fleet.status`, with the one table of allowed
handle transitions) and of a launch, the kinds of event, and the records the store keeps (no I/O
here).

Records are stored as compact JSON (`{"w": 2, "s": "running", ...}`: the Lua scripts read and write
them too) and shown with readable names (`fleet status --json`). `HandleRecord.decode` also reads
records written with the readable names, so either spelling found in Redis is understood.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fleet import grammar

# the statuses and their moves live in fleet.status (fleet.grammar needs them too); here for
# every module that takes Fleet's vocabulary from fleet.model
from fleet.status import GOING as GOING
from fleet.status import LIVE as LIVE
from fleet.status import STATUS_VALUES as STATUS_VALUES
from fleet.status import TRANSITIONS as TRANSITIONS
from fleet.status import HandleStatus as HandleStatus
from fleet.status import may_move as may_move


class LaunchState(str, enum.Enum):
    """Where a pending launch is."""

    QUEUED = "queued"  # recorded by a reconcile; its run task has not taken it yet
    IN_FLIGHT = "running"  # a run task has taken it (stored as "running", as before)
    CANCELLED = "cancelled"  # a scale-down no longer wants it; see Store.claim_launch

    def __str__(self) -> str:
        return self.value


class EventKind(str, enum.Enum):
    """Every kind of event in a cluster's stream (`fleet events`)."""

    DESIRED = "desired"
    LAUNCH = "launch"
    CANCELLED = "cancelled"
    KILL = "kill"
    AT_MAX = "at_max"
    DRAIN = "drain"
    DRAINED = "drained"
    DRAIN_TIMEOUT = "drain_timeout"
    HELD = "held"
    RELEASED = "released"
    LAUNCHED = "launched"
    SHORT_LAUNCH = "short_launch"
    RUNNING = "running"
    KILLED = "killed"
    STOPPED = "stopped"
    KILL_FAILED = "kill_failed"
    CLEANED_UP = "cleaned_up"
    CLEANUP_ABANDONED = "cleanup_abandoned"
    BOOT_TIMEOUT = "boot_timeout"
    ADOPTED = "adopted"
    AT_QUOTA = "at_quota"
    NO_CAPACITY = "no_capacity"
    AT_BUDGET = "at_budget"  # an hourly cap cut a launch, or refused it (fleet.budget)
    BUDGET_CAPPED = "budget_capped"  # a scale request above what the caps let run: accepted, capped
    ERROR = "error"
    SWEEP_FAILED = "sweep_failed"
    TIMEOUT = "timeout"
    CLEARED = "cleared"
    INTERRUPTED = "interrupted"  # the cloud reclaims (or reclaimed) a worker: replaced, not failed
    FALLBACK = "fallback"  # a pool could not launch: its shortfall goes to the next pool
    REBALANCE = "rebalance"  # workers of a worse pool retired once their replacements run
    ROLLOUT = "rollout"  # outdated workers replaced: new ones launched (surge), old ones retired
    ROLLOUT_STOPPED = "rollout_stopped"  # a new worker failed to boot, or an operator paused it
    ROLLOUT_DONE = "rollout_done"  # no outdated worker is left
    EXPIRED = "expired"  # workers older than max_lifetime: outdated from now on
    RETIRING = "retiring"  # the cluster left the config with workers: they are drained and killed
    REQUEST_EXPIRED = "request_expired"  # a public request refused: past its deadline, or its sender gave up

    def __str__(self) -> str:
        return self.value


#: event kinds that count as a failure (fleet_failures_total{cause})
FAILURE_KINDS: tuple[EventKind, ...] = (
    EventKind.ERROR, EventKind.AT_QUOTA, EventKind.NO_CAPACITY, EventKind.SHORT_LAUNCH, EventKind.KILL_FAILED,
    EventKind.SWEEP_FAILED, EventKind.BOOT_TIMEOUT, EventKind.CLEANUP_ABANDONED, EventKind.TIMEOUT,
)
#: event kinds that mean "a worker went away and will be replaced"
REPLACEMENT_KINDS: tuple[EventKind, ...] = (EventKind.STOPPED, EventKind.BOOT_TIMEOUT)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def price(value: Any) -> float | None:
    """A stored price (USD per hour): a number from 0 to 1e6, else unknown (None), as the Lua
    scripts read it (lua/index.lua `price`): garbage there is no error, it costs nothing."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if 0 <= number < 1e6 else None


def _name(value: Any) -> str:
    """A field that names something (a pool, a revision, a cause): a string, else none (as the
    Lua scripts read it: lua/index.lua read_record)."""
    return value if isinstance(value, str) else ""


@dataclass
class HandleRecord:
    """What the store keeps of one handle."""

    workers: int
    status: HandleStatus
    since: float = 0.0
    launch: str = ""  # the launch id, or "adopted"
    kills: int = 0  # kill attempts so far
    kill_at: float | None = None  # the last kill attempt (or when it was ordered)
    requested_at: float | None = None  # the launch request, until the handle first runs
    busy: int = 0  # tasks its workers held at the last sweep (clusters with queues)
    hold: bool = False  # an operator's hold: never chosen for a scale-down
    drain_until: float | None = None
    kill_failed: bool = False  # its last kill failed (its remains need a kill after it stops)
    pool: str = ""  # the pool it was launched in ("": the cluster declares no pools)
    interrupted: str = ""  # the cloud reclaims it: the cause (fleet.provider.Cause); "" if not
    rev: str = ""  # the revision of the spec it was launched from (ClusterSpec.revision)
    born: float | None = None  # when it was recorded (launched or adopted): for max_lifetime
    idle_since: float | None = None  # clusters with queues: since when its workers hold no task
    #: USD per hour, recorded at launch (fleet.pool_prices.price_of); None: unknown, it costs 0
    price: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # fields this version does not know: kept

    #: readable name -> stored name, where they differ
    STORED: ClassVar[dict[str, str]] = {"workers": "w", "status": "s", "requested_at": "req", "kill_failed": "kfail",
                                        "pool": "p", "interrupted": "int", "born": "b", "idle_since": "idle",
                                        "price": "usd"}
    _READ: ClassVar[dict[str, str]] = {v: k for k, v in STORED.items()}
    _KNOWN: ClassVar[frozenset[str]] = frozenset({"workers", "status", "since", "launch", "kills", "kill_at",
                                                  "requested_at", "busy", "hold", "drain_until", "kill_failed",
                                                  "pool", "interrupted", "rev", "born", "idle_since",
                                                  "price"})

    @classmethod
    def decode(cls, raw: bytes | str | Mapping[str, Any]) -> HandleRecord:
        data = json.loads(raw) if isinstance(raw, (bytes, str)) else dict(raw)
        named = {cls._READ.get(k, k): v for k, v in data.items()}
        return cls(
            workers=int(named.get("workers", 1)), status=HandleStatus(named["status"]),
            since=float(named.get("since", 0.0)), launch=str(named.get("launch", "")),
            kills=int(named.get("kills", 0)), kill_at=_float(named.get("kill_at")),
            requested_at=_float(named.get("requested_at")), busy=int(named.get("busy", 0)),
            hold=bool(named.get("hold", False)), drain_until=_float(named.get("drain_until")),
            kill_failed=bool(named.get("kill_failed", False)), pool=_name(named.get("pool")),
            interrupted=_name(named.get("interrupted")), rev=_name(named.get("rev")),
            born=_float(named.get("born")), idle_since=_float(named.get("idle_since")),
            price=price(named.get("price")),
            extra={k: v for k, v in named.items() if k not in cls._KNOWN})

    def stored(self) -> dict[str, Any]:
        """The compact form kept in Redis (only the fields that are set)."""
        out: dict[str, Any] = {"w": self.workers, "s": self.status.value, "since": self.since, "launch": self.launch,
                               "kills": self.kills, **self.extra}
        if self.kill_at is not None:
            out["kill_at"] = self.kill_at
        if self.requested_at is not None:
            out["req"] = self.requested_at
        if self.busy:
            out["busy"] = self.busy
        if self.hold:
            out["hold"] = True
        if self.drain_until is not None:
            out["drain_until"] = self.drain_until
        if self.kill_failed:
            out["kfail"] = 1
        if self.pool:
            out["p"] = self.pool
        if self.interrupted:
            out["int"] = self.interrupted
        if self.rev:
            out["rev"] = self.rev
        if self.born is not None:
            out["b"] = self.born
        if self.idle_since is not None:
            out["idle"] = self.idle_since
        if self.price is not None:
            out["usd"] = self.price
        return out

    def encode(self) -> str:
        return json.dumps(self.stored(), separators=(",", ":"))

    def readable(self) -> dict[str, Any]:
        """The record with readable names (`fleet status --json`)."""
        out: dict[str, Any] = {"workers": self.workers, "status": self.status.value, "since": self.since,
                               "launch": self.launch, "kills": self.kills}
        for name in ("kill_at", "requested_at", "drain_until"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        out.update(busy=self.busy, hold=self.hold, kill_failed=self.kill_failed)
        if self.pool:
            out["pool"] = self.pool
        if self.interrupted:
            out["interrupted"] = self.interrupted
        if self.rev:
            out["revision"] = self.rev
        if self.born is not None:
            out["born"] = self.born
        if self.idle_since is not None:
            out["idle_since"] = self.idle_since
        if self.price is not None:
            out["price"] = self.price
        return {**out, **self.extra}


@dataclass
class LaunchRecord:
    """What the store keeps of one pending launch."""

    count: int
    state: LaunchState
    at: float = 0.0  # when the reconcile planned it
    claimed: float | None = None  # when a run task last took it
    pool: str = ""  # the pool it launches in ("": the cluster declares no pools)
    rev: str = ""  # the revision it launches (ClusterSpec.revision of its pool when planned)
    #: once a run task claimed it (lua/claim.lua): one handle's price, and the launch's USD/hour
    usd: float | None = None
    rate: float | None = None

    @classmethod
    def decode(cls, raw: bytes | str | Mapping[str, Any]) -> LaunchRecord:
        data = json.loads(raw) if isinstance(raw, (bytes, str)) else dict(raw)
        return cls(int(data["count"]), LaunchState(data["state"]), float(data.get("at") or 0.0),
                   _float(data.get("claimed")), str(data.get("pool") or ""), str(data.get("rev") or ""),
                   price(data.get("usd")), price(data.get("rate")))

    def stored(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count, "state": self.state.value, "at": self.at}
        if self.claimed is not None:
            out["claimed"] = self.claimed
        if self.pool:
            out["pool"] = self.pool
        if self.rev:
            out["rev"] = self.rev
        if self.usd is not None:
            out["usd"] = self.usd
        if self.rate is not None:
            out["rate"] = self.rate
        return out

    def encode(self) -> str:
        return json.dumps(self.stored(), separators=(",", ":"))

    def readable(self) -> dict[str, Any]:
        return self.stored()


@dataclass(frozen=True)
class Desired:
    n: int
    version: int
    at: float
    floor: int = 0  # autoscaled clusters: the last manual request, a floor for the autoscaler


@dataclass(frozen=True)
class Counts:
    """Workers and handles by status, as the store keeps them (no record read)."""

    workers: dict[HandleStatus, int] = field(default_factory=dict)
    handles: dict[HandleStatus, int] = field(default_factory=dict)
    whole: bool = True  # False: the stored counts lack `v` (never built, or deleted): rebuild them
    #: pool -> status -> workers, for handles recorded under a pool (`<status>@<pool>`)
    pools: dict[str, dict[HandleStatus, int]] = field(default_factory=dict)
    #: workers of handles the cloud reclaims that are still in Redis (`int`)
    interrupted: int = 0
    #: revision -> workers of the live (initializing, running) handles launched from it (`r:<rev>`)
    revs: dict[str, int] = field(default_factory=dict)

    @classmethod
    def decode(cls, raw: Mapping[bytes, bytes] | list[bytes]) -> Counts:
        """From HGETALL (a dict, or the flat list a script returns); fields of no kind that
        `fleet.grammar` names are ignored."""
        items = raw.items() if isinstance(raw, Mapping) else zip(raw[::2], raw[1::2], strict=True)
        named = {k.decode() if isinstance(k, bytes) else str(k): v for k, v in items}
        return cls(whole=False).plus({k: int(v) for k, v in named.items() if grammar.parse(k) is not None},
                                     whole=grammar.WHOLE in named)

    def plus(self, delta: Mapping[str, int], whole: bool | None = None) -> Counts:
        """These counts with the counts fields `delta` (`fleet.grammar`: name -> number) added;
        `whole` as given, else as these. Pools and revisions left at 0 are left out."""
        workers, handles, interrupted = dict(self.workers), dict(self.handles), self.interrupted
        pools = {name: dict(by) for name, by in self.pools.items()}
        revs = dict(self.revs)
        by_status = {"workers": workers, "handles": handles}
        for name, n in delta.items():
            f = grammar.parse(name)
            if f is None or f.kind == "whole":
                continue
            if f.kind == "interrupted":
                interrupted += n
            elif f.kind == "rev":
                revs[f.name] = revs.get(f.name, 0) + n
            else:
                by = by_status[f.kind] if f.kind in by_status else pools.setdefault(f.name, {})
                status = HandleStatus(f.status)
                by[status] = by.get(status, 0) + n
        pools = {name: kept for name, by in pools.items() if (kept := {s: n for s, n in by.items() if n})}
        return Counts(workers, handles, self.whole if whole is None else whole, pools, interrupted,
                      {rev: n for rev, n in revs.items() if n})

    def after(self, moves: Iterable[tuple[HandleRecord, HandleStatus | None, HandleStatus | None]]) -> Counts:
        """These counts once each (handle, from status, to status) of `moves` is made (`None`:
        not in Redis), as the store's writes change them (`fleet.grammar.moved`)."""
        delta: dict[str, int] = {}
        for rec, old, new in moves:
            grammar.add(delta, grammar.moved(rec, old, new))
        return self.plus(delta)

    def outdated(self, current: frozenset[str]) -> int:
        """Live workers launched from a revision that is not one of the `current` ones (handles
        recorded without one, from before revisions, are never outdated)."""
        return sum(n for rev, n in self.revs.items() if rev not in current)

    def of(self, status: HandleStatus | str) -> int:
        return self.workers.get(HandleStatus(status), 0)

    def in_pool(self, pool: str, status: HandleStatus | str, default_pool: str = "") -> int:
        """Workers of `pool` in `status`. Handles recorded without a pool belong to
        `default_pool` (the first pool: records from before pools, or of a cluster without)."""
        n = self.pools.get(pool, {}).get(HandleStatus(status), 0)
        if pool == default_pool:
            n += self.of(status) - sum(by.get(HandleStatus(status), 0) for by in self.pools.values())
        return n

    @property
    def live(self) -> int:
        return sum(self.of(s) for s in LIVE)

    @property
    def going(self) -> int:
        return sum(self.of(s) for s in GOING)



@dataclass(frozen=True)
class Summary:
    """A cluster at a glance, from its counts, desired number and pending launches."""

    desired: Desired | None
    counts: Counts
    pending: dict[str, LaunchRecord]

    def as_dict(self, cluster: str) -> dict[str, Any]:
        """The shape `fleet.status` returns (without the holds)."""
        return {
            "cluster": cluster,
            "desired": self.desired.n if self.desired else None,
            "version": self.desired.version if self.desired else 0,
            "initializing": self.counts.of(HandleStatus.INITIALIZING),
            "running": self.counts.of(HandleStatus.RUNNING),
            "stopping": self.counts.of(HandleStatus.STOPPING),
            "draining": self.counts.of(HandleStatus.DRAINING),
            "pending": sum(p.count for p in self.pending.values() if p.state is not LaunchState.CANCELLED),
            "handles": sum(self.counts.handles.values()),
        }

    @property
    def converged(self) -> bool:
        c = self.counts
        return (self.desired is not None and not self.pending and c.of(HandleStatus.INITIALIZING) == 0
                and c.of(HandleStatus.STOPPING) == 0 and c.of(HandleStatus.DRAINING) == 0
                and c.of(HandleStatus.RUNNING) == self.desired.n)

    def converged_at(self, n: int) -> bool:
        """Converged, with `n` desired (and so `n` running)."""
        return self.converged and self.desired is not None and self.desired.n == n


@dataclass(frozen=True)
class ClusterState:
    """One consistent snapshot of a cluster: its desired number, handles and pending launches."""

    desired: Desired | None
    handles: dict[str, HandleRecord]
    pending: dict[str, LaunchRecord]

    @property
    def counts(self) -> Counts:
        """The counts these records make (`fleet.grammar`), as the store keeps them."""
        return Counts(whole=True).plus(grammar.total((r, r.status) for r in self.handles.values()))

    def count(self, status: HandleStatus | str) -> int:
        """Workers of the handles in `status`."""
        return self.counts.of(status)

    def summary(self, cluster: str) -> dict[str, Any]:
        """The shape `fleet.status` returns and `fleet status --json` prints."""
        return Summary(self.desired, self.counts, self.pending).as_dict(cluster)

    @property
    def converged(self) -> bool:
        return Summary(self.desired, self.counts, self.pending).converged
