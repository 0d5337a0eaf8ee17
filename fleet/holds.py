"""What every control-plane worker must know about the clouds' moods, shared through Redis: the
holds that stop launches or calls for a while, and why.

| hold (key in `fleet.keys`)       | meaning                                                          |
|----------------------------------|------------------------------------------------------------------|
| provider `hold`                  | rate-limited: no call to the provider before this ends           |
| provider `capacity` (zset)       | instance types with no capacity, scored by when their hold ends  |
| fleet `recovering`               | Redis lost data under a running control plane: no launches       |
| cluster `at_quota`               | quota reached: no launches until a worker goes or it expires     |
| cluster `no_capacity`            | no capacity for any type the cluster may use: no launches        |
| cluster `at_budget`              | an hourly cap is reached (`fleet.budget`): no launches for a while |
| cluster `error`                  | a permanent error (JSON: message, config fingerprint, at)        |
| cluster `unresponsive`           | a provider call timed out: the cluster's calls fail at once      |

A cluster that declares pools has the four cluster holds but `at_budget` per pool (`pool:<pool>:...`): one pool
out of capacity, at quota or in error sends its launches to the next pool. The instance types
held for capacity are per provider and pool (spot capacity says nothing of on-demand capacity).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import redis

from fleet import clock, reasons
from fleet.keys import Keyspace


class Holds:
    def __init__(self, client: redis.Redis, fleet_id: str) -> None:
        self.r = client
        self.keys = Keyspace(fleet_id)

    def _left(self, raw: Any) -> float:
        """Seconds left of a hold whose key holds the time it ends, in Redis time (0: none, or over)."""
        return max(float(raw) - clock.now(self.r), 0.0) if raw else 0.0

    def _set(self, key: str, seconds: float) -> None:
        self.r.set(key, clock.now(self.r) + seconds, px=max(int(seconds * 1000), 1))

    # -- provider-wide ---------------------------------------------------------------------
    def hold_provider(self, provider: str, seconds: float) -> None:
        """No call to `provider` for `seconds` (a later, longer hold wins; a shorter one is ignored)."""
        key = self.keys.provider_hold(provider)
        seconds = max(seconds, 0.05)
        until = clock.now(self.r) + seconds
        with self.r.pipeline() as pipe:
            pipe.set(key, until, px=int(seconds * 1000), nx=True)
            pipe.get(key)
            created, current = pipe.execute()
        if not created and float(current or 0) < until:
            self.r.set(key, until, px=int(seconds * 1000))

    def provider_hold(self, provider: str) -> float:
        """Seconds left of a rate-limit hold on `provider` (0: none)."""
        return self._left(self.r.get(self.keys.provider_hold(provider)))

    def call_holds(self, provider: str, cluster: str, pool: str = "") -> tuple[float, float]:
        """(seconds left of a rate-limit hold on `provider`, of an unresponsive hold on `cluster`'s
        `pool`), in one round trip: what every provider call checks first."""
        held, unresponsive = self.r.mget(self.keys.provider_hold(provider),
                                         self.keys.cluster(cluster).pool(pool).unresponsive)
        return self._left(held), self._left(unresponsive)

    @staticmethod
    def capacity_scope(provider: str, pool: str = "") -> str:
        """Whose instance types a capacity hold is about: the provider, and the pool if any."""
        return f"{provider}/{pool}" if pool else provider

    def hold_type(self, provider: str, instance_type: str, seconds: float, pool: str = "") -> None:
        self.r.zadd(self.keys.provider_capacity(self.capacity_scope(provider, pool)),
                    {instance_type: clock.now(self.r) + seconds})

    def held_types(self, provider: str, pool: str = "") -> frozenset[str]:
        key = self.keys.provider_capacity(self.capacity_scope(provider, pool))
        now = clock.now(self.r)
        with self.r.pipeline() as pipe:
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zrangebyscore(key, now, "+inf")
            _, held = pipe.execute()
        return frozenset(h.decode() for h in held)

    def start_recovery(self, seconds: float) -> None:
        """Hold every launch of the fleet for `seconds` (Redis lost data under us)."""
        self.r.set(self.keys.recovering, clock.now(self.r) + seconds, px=int(seconds * 1000), nx=True)

    def recovering(self) -> float:
        return self._left(self.r.get(self.keys.recovering))

    # -- per cluster -----------------------------------------------------------------------
    def _of(self, cluster: str, pool: str) -> Any:
        return self.keys.cluster(cluster).pool(pool)

    def set_at_quota(self, cluster: str, seconds: float, pool: str = "") -> None:
        self._set(self._of(cluster, pool).at_quota, seconds)

    def at_quota(self, cluster: str, pool: str = "") -> float:
        """Seconds left at quota (0: not at quota)."""
        return self._left(self.r.get(self._of(cluster, pool).at_quota))

    def set_no_capacity(self, cluster: str, seconds: float, pool: str = "") -> None:
        """No launch for the cluster (or pool) for a while: no capacity for anything it may use."""
        self._set(self._of(cluster, pool).no_capacity, seconds)

    def no_capacity(self, cluster: str, pool: str = "") -> float:
        return self._left(self.r.get(self._of(cluster, pool).no_capacity))

    def hold_unresponsive(self, cluster: str, seconds: float, pool: str = "") -> None:
        """A provider call of the cluster (pool) timed out: fail its next calls at once for `seconds`."""
        self._set(self._of(cluster, pool).unresponsive, seconds)

    def unresponsive(self, cluster: str, pool: str = "") -> float:
        """Seconds left of the hold after a provider call of the cluster timed out (0: none)."""
        return self._left(self.r.get(self._of(cluster, pool).unresponsive))

    def lift_unresponsive(self, cluster: str, pool: str = "") -> None:
        """The call that timed out answered after all: the provider is slow, not gone; end the hold."""
        self.r.delete(self._of(cluster, pool).unresponsive)

    def set_at_budget(self, cluster: str, seconds: float, cap: str, rate: float, limit: float) -> None:
        """No launch for the cluster for `seconds`: cap `cap` ("fleet", "group g", "cluster c") of
        `limit` USD/h is reached, `rate` USD/h committed under it."""
        until = clock.now(self.r) + seconds
        self.r.set(self.keys.cluster(cluster).at_budget,
                   json.dumps({"until": until, "cap": cap, "rate": round(rate, 6), "limit": round(limit, 6)}),
                   px=max(int(seconds * 1000), 1))

    def at_budget(self, cluster: str) -> tuple[float, dict[str, Any]]:
        """(seconds left of the cluster's budget hold (0: none), its figures: cap, rate, limit)."""
        raw = self.r.get(self.keys.cluster(cluster).at_budget)
        if not raw:
            return 0.0, {}
        try:
            figures = dict(json.loads(raw))
            return self._left(figures.pop("until")), figures
        except (ValueError, TypeError, KeyError):
            return 0.0, {}

    def worker_went_away(self, cluster: str, pools: Iterable[str] = ("",)) -> None:
        """A worker left: the quota may have room again, and so may the budget."""
        self.r.delete(*(self._of(cluster, p).at_quota for p in pools), self.keys.cluster(cluster).at_budget)

    def set_error(self, cluster: str, message: str, fingerprint: str, pool: str = "") -> None:
        record = {"message": message[:1000], "fingerprint": fingerprint, "at": clock.now(self.r)}
        self.r.set(self._of(cluster, pool).error, json.dumps(record))

    def error(self, cluster: str, pool: str = "") -> dict[str, Any] | None:
        raw = self.r.get(self._of(cluster, pool).error)
        return dict(json.loads(raw)) if raw else None

    def clear(self, cluster: str, pools: Iterable[str] = ("",)) -> bool:
        """An operator's reset: forget the cluster's (and its pools') permanent error, quota and
        capacity state, and end a fleet-wide recovery hold (the operator vouches that no lost
        launch is in flight)."""
        keys = [self.keys.recovering]
        for p in dict.fromkeys(("", *pools)):
            k = self._of(cluster, p)
            keys += [k.error, k.at_quota, k.no_capacity]
        keys.append(self.keys.cluster(cluster).at_budget)
        return bool(self.r.delete(*keys))

    def blocked(self, cluster: str, fingerprint: str, pool: str = "") -> str | None:
        """Why the cluster (or its pool `pool`) may not launch now, in `fleet.reasons.why`'s words,
        or None. A permanent error recorded under another configuration (its fingerprint differs:
        the config changed) is forgotten: try again."""
        error = self.error(cluster, pool)
        if error and error.get("fingerprint") != fingerprint:
            k = self._of(cluster, pool)
            self.r.delete(k.error, k.at_quota, k.no_capacity)
            error = None
        if error:
            return reasons.why("error", detail=error["message"])
        if self.at_quota(cluster, pool):
            return reasons.why("at_quota")
        if self.no_capacity(cluster, pool):
            return reasons.why("no_capacity")
        if self.at_budget(cluster)[0]:
            return reasons.why("at_budget")
        if self.recovering():
            return reasons.why("recovering")
        return None

    def skipped(self, cluster: str, fingerprint: str, pool: str, provider: str, calls: bool = True) -> str | None:
        """Why pool `pool` gets no launch now: `blocked`, and with `calls` also a rate-limited
        provider or an unresponsive pool (its launches then go to the next pool). None: it may."""
        why = self.blocked(cluster, fingerprint, pool)
        if why is None and calls:
            if self.provider_hold(provider):
                return reasons.why("rate_limited")
            if self.unresponsive(cluster, pool):
                return reasons.why("unresponsive")
        return why
