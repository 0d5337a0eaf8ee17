"""The cost of what runs, read from Redis: each cluster's run rate and accumulated cost, by pool.

Every handle records its hourly price at launch (`HandleRecord.price`, stored `usd`; a record
without one costs 0). The scripts that add and remove handles keep the cluster's `cost` hash
(lua/index.lua COST): `rate@<pool>` (micro-USD/h of the handles in Redis: every status runs, so
every status costs), `held@<pool>` (the sum of their price x born / 3600), `spent@<pool>` (USD of
the handles gone: price x (confirmed stop - recorded)), and the same by hour (`<hour>@<pool>`,
Unix time // 3600) for the last `COST_HOURS` hours. At read time:

* hourly rate = `rate@<pool>` + the rate of the launches in flight (pending ones a run task
  claimed: their `rate`, written by lua/claim.lua);
* cost so far = `spent@<pool>` + what the handles still in Redis cost so far, the sum of
  price x (now - born): rate x now / 3600 - `held@<pool>`, without reading a record. Since a
  time (`since`), the records are read: price x (now - max(born, since)), plus the hourly fields.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleet.model import HandleRecord, LaunchRecord
from fleet.state.handles import Handles, decode_pending

#: hours of cost kept by the hour (lua/index.lua COST_HOURS): how far `since` may look back
COST_HOURS = 168
_RATE, _HELD, _SPENT = "rate@", "held@", "spent@"


@dataclass
class PoolCost:
    """One pool's cost: `rate` (USD/h of its handles in Redis), `in_flight` (USD/h of its claimed
    launches), `spent` (USD of its handles gone) and `live` (USD its handles in Redis cost so far)."""

    rate: float = 0.0
    in_flight: float = 0.0
    spent: float = 0.0
    live: float = 0.0

    @property
    def hourly(self) -> float:
        return self.rate + self.in_flight

    @property
    def total(self) -> float:
        return self.spent + self.live

    def as_json(self) -> dict[str, float]:
        return {"hourly_cost": round(self.hourly, 6), "cost_total": round(self.total, 6)}


@dataclass
class ClusterCost:
    """A cluster's cost by pool ("" for handles recorded without a pool), since `since` (None: ever)."""

    pools: dict[str, PoolCost] = field(default_factory=dict)
    since: float | None = None

    def pool(self, name: str) -> PoolCost:
        return self.pools.setdefault(name, PoolCost())

    @property
    def hourly(self) -> float:
        return sum(p.hourly for p in self.pools.values())

    @property
    def total(self) -> float:
        return sum(p.total for p in self.pools.values())

    def as_json(self) -> dict[str, float]:
        return {"hourly_cost": round(self.hourly, 6), "cost_total": round(self.total, 6)}


def _num(raw: bytes | None) -> float:
    try:
        value = float(raw) if raw is not None else 0.0
    except ValueError:
        return 0.0
    return value if math.isfinite(value) else 0.0


def spent_since(cost: Mapping[bytes, bytes], since: float) -> dict[str, float]:
    """Pool -> USD spent by handles gone, from `since` on (from the hourly fields; the hour
    `since` falls in counts in proportion)."""
    out: dict[str, float] = {}
    first = since / 3600
    for name, raw in cost.items():
        hour, at, pool = name.decode().partition("@")
        if not at or not hour.isdigit() or int(hour) + 1 <= first:
            continue
        share = min(1.0, int(hour) + 1 - first)
        out[pool] = out.get(pool, 0.0) + _num(raw) * share
    return out


def tally(cost: Mapping[bytes, bytes], pending: Iterable[LaunchRecord], now: float,
          handles: Iterable[HandleRecord] | None = None, since: float | None = None) -> ClusterCost:
    """A cluster's cost from its `cost` hash and pending launches; since `since`, from the
    handle records too (see the module)."""
    out = ClusterCost(since=since)
    held: dict[str, float] = {}
    for name, raw in cost.items():
        key = name.decode()
        if key.startswith(_RATE):
            out.pool(key[len(_RATE):]).rate += _num(raw) / 1e6
        elif key.startswith(_HELD):
            held[key[len(_HELD):]] = _num(raw)
        elif key.startswith(_SPENT) and since is None:
            out.pool(key[len(_SPENT):]).spent += _num(raw)
    if since is None:
        for pool, p in out.pools.items():
            p.live = max(p.rate * now / 3600 - held.get(pool, 0.0), 0.0)
    else:
        for pool, usd in spent_since(cost, since).items():
            out.pool(pool).spent += usd
    for rec in handles or ():
        if rec.price:
            born = rec.born if rec.born is not None else rec.since
            start = max(born, since) if since is not None else born
            out.pool(rec.pool).live += rec.price * max(now - start, 0.0) / 3600
    for launch in pending:
        if launch.rate and launch.claimed is not None:
            out.pool(launch.pool).in_flight += launch.rate
    for p in out.pools.values():
        if abs(p.rate) < 1e-9:  # what integer micro-dollars leave of a rate that went to 0
            p.rate = 0.0
    return out


class Costs(Handles):
    """Reading what each cluster's handles cost."""

    def costs(self, clusters: Iterable[str], since: float | None = None) -> dict[str, ClusterCost]:
        """Each cluster's run rate and cost so far (since `since`, Unix seconds; None: ever), in
        one round trip (the handle records are read only with `since`); hourly fields older than
        `COST_HOURS` are dropped on the way."""
        names = list(clusters)
        now = self.now()
        pipe = self.r.pipeline(transaction=False)
        for c in names:
            k = self.of(c)
            pipe.hgetall(k.cost)
            pipe.hgetall(k.pending)
            if since is not None:
                pipe.hgetall(k.handles)
        raw: list[Any] = pipe.execute()
        out: dict[str, ClusterCost] = {}
        oldest = int(now // 3600) - COST_HOURS
        n = 2 if since is None else 3
        for i, c in enumerate(names):
            cost, pending, *rest = raw[n * i:n * i + n]
            records = []
            for v in (rest[0] if rest else {}).values():
                try:
                    records.append(HandleRecord.decode(v))
                except (ValueError, KeyError, TypeError):
                    continue  # a record nobody can read costs nothing
            out[c] = tally(cost, decode_pending(pending).values(), now, records if rest else None, since)
            stale = [name for name in cost if (h := name.split(b"@")[0]).isdigit() and int(h) < oldest]
            if stale:
                self.r.hdel(self.of(c).cost, *stale)
        return out

    def cost(self, cluster: str, since: float | None = None) -> ClusterCost:
        return self.costs([cluster], since)[cluster]
