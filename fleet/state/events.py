"""The events section: each cluster's event stream (`fleet.model.EventKind`), counted in the
metrics hash by the same pipeline or script that appends it, and the series of worker samples
the console charts.

Events about many handles are one event per batch (`count`, `workers`, and up to SAMPLE
`handles` named); `per_handle` splits them for readers that follow one handle."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

from fleet.counters import record_event
from fleet.model import EventKind
from fleet.state.base import EVENTS_MAXLEN, StoreBase

#: The console's chart: one sample of a cluster's workers per this many seconds at most, this many kept
SERIES_EVERY = 30.0
SERIES_KEEP = 240

#: handles named in one batch event; `count` says how many there were (as lua/prelude.lua)
SAMPLE = 50


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


class Events(StoreBase):
    """Appending, counting and reading events; sampling and reading the series."""

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

    # -- the series ------------------------------------------------------------------------
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
