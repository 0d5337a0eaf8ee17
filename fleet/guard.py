"""What every control-plane worker must know about the clouds' moods, shared through Redis.

| key (under `fleet:{id}:`)          | meaning                                                      |
|------------------------------------|--------------------------------------------------------------|
| `provider:{p}:hold`                | rate-limited: no call to provider p before this expires      |
| `provider:{p}:capacity` (zset)     | instance types with no capacity, scored by hold-until time    |
| `provider:{p}:slot:{i}`            | concurrent-launch slots (redis-py Locks)                      |
| `recovering`                       | Redis lost data under a running control plane: no launches   |
| `{cluster}:at_quota`               | quota reached: no launches until a worker goes or it expires |
| `{cluster}:no_capacity`            | no capacity for any type the cluster may use: no launches    |
| `{cluster}:error`                  | a permanent error (JSON: message, config fingerprint, at)    |
| `{cluster}:unresponsive`           | a provider call timed out: calls fail at once until it ends  |

Operations per second are limited with the `limits` library (moving window, Redis storage).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from typing import Any, Iterator

import redis
from limits import parse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from fleet.errors import TransientProviderError
from fleet.lease import Lease


class LaunchSlotsBusy(TransientProviderError):
    """Every concurrent-launch slot of this provider is taken; try again in a moment."""


class Guard:
    def __init__(self, client: redis.Redis, url: str, fleet_id: str) -> None:
        self.r = client
        self.url = url
        self.fleet_id = fleet_id
        self._limiter_obj: MovingWindowRateLimiter | None = None

    @property
    def _limiter(self) -> MovingWindowRateLimiter:
        if self._limiter_obj is None:
            self._limiter_obj = MovingWindowRateLimiter(RedisStorage(self.url, key_prefix=f"fleet:{self.fleet_id}:limits"))
        return self._limiter_obj

    def _key(self, *parts: str) -> str:
        return ":".join(("fleet", self.fleet_id, *parts))

    # -- provider-wide ---------------------------------------------------------------------
    def hold_provider(self, provider: str, seconds: float) -> None:
        """No call to `provider` for `seconds` (a later, longer hold wins; a shorter one is ignored)."""
        key = self._key("provider", provider, "hold")
        until = time.time() + max(seconds, 0.05)
        with self.r.pipeline() as pipe:
            pipe.set(key, until, px=int(max(seconds, 0.05) * 1000), nx=True)
            pipe.get(key)
            created, current = pipe.execute()
        if not created and float(current or 0) < until:
            self.r.set(key, until, px=int(max(seconds, 0.05) * 1000))

    def provider_hold(self, provider: str) -> float:
        """Seconds left of a rate-limit hold on `provider` (0: none)."""
        raw = self.r.get(self._key("provider", provider, "hold"))
        return max(float(raw) - time.time(), 0.0) if raw else 0.0

    def take_op(self, provider: str, per_second: int, max_wait: float = 30.0) -> None:
        """Wait for one operation token of `provider` (shared by every control-plane worker)."""
        item = parse(f"{max(per_second, 1)}/second")
        deadline = time.monotonic() + max_wait
        while not self._limiter.hit(item, self.fleet_id, provider):
            if time.monotonic() > deadline:
                raise TransientProviderError(f"no operation token for provider {provider!r} within {max_wait:g} s")
            stats = self._limiter.get_window_stats(item, self.fleet_id, provider)
            time.sleep(min(max(stats.reset_time - time.time(), 0.01), 1.0))

    @contextmanager
    def launch_slot(self, provider: str, slots: int, hold_for: float) -> Iterator[None]:
        """One of `slots` concurrent launches of `provider`, or LaunchSlotsBusy. Each slot is a
        lease of `hold_for` seconds, renewed while the launch runs."""
        for i in range(slots):
            lease = Lease(self.r, self._key("provider", provider, "slot", str(i)), hold_for)
            if lease.acquire():
                try:
                    yield
                finally:
                    lease.release()
                return
        raise LaunchSlotsBusy(f"all {slots} concurrent launches of provider {provider!r} are taken")

    def hold_type(self, provider: str, instance_type: str, seconds: float) -> None:
        self.r.zadd(self._key("provider", provider, "capacity"), {instance_type: time.time() + seconds})

    def held_types(self, provider: str) -> frozenset[str]:
        key = self._key("provider", provider, "capacity")
        now = time.time()
        with self.r.pipeline() as pipe:
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zrangebyscore(key, now, "+inf")
            _, held = pipe.execute()
        return frozenset(h.decode() for h in held)

    def start_recovery(self, seconds: float) -> None:
        """Hold every launch of the fleet for `seconds` (Redis lost data under us)."""
        self.r.set(self._key("recovering"), time.time() + seconds, px=int(seconds * 1000), nx=True)

    def recovering(self) -> float:
        raw = self.r.get(self._key("recovering"))
        return max(float(raw) - time.time(), 0.0) if raw else 0.0

    # -- per cluster -----------------------------------------------------------------------
    def set_at_quota(self, cluster: str, seconds: float) -> None:
        self.r.set(self._key(cluster, "at_quota"), time.time() + seconds, px=int(seconds * 1000))

    def at_quota(self, cluster: str) -> float:
        """Seconds left at quota (0: not at quota)."""
        raw = self.r.get(self._key(cluster, "at_quota"))
        return max(float(raw) - time.time(), 0.0) if raw else 0.0

    def set_no_capacity(self, cluster: str, seconds: float) -> None:
        """No launch for the cluster for a while: the cloud has no capacity for anything it may use."""
        self.r.set(self._key(cluster, "no_capacity"), time.time() + seconds, px=int(seconds * 1000))

    def no_capacity(self, cluster: str) -> float:
        raw = self.r.get(self._key(cluster, "no_capacity"))
        return max(float(raw) - time.time(), 0.0) if raw else 0.0

    def hold_unresponsive(self, cluster: str, seconds: float) -> None:
        """A provider call of the cluster timed out: fail its next calls at once for `seconds`."""
        self.r.set(self._key(cluster, "unresponsive"), time.time() + seconds, px=int(seconds * 1000))

    def unresponsive(self, cluster: str) -> float:
        """Seconds left of the hold after a provider call of the cluster timed out (0: none)."""
        raw = self.r.get(self._key(cluster, "unresponsive"))
        return max(float(raw) - time.time(), 0.0) if raw else 0.0

    def worker_went_away(self, cluster: str) -> None:
        """A worker left: the quota may have room again."""
        self.r.delete(self._key(cluster, "at_quota"))

    def set_error(self, cluster: str, message: str, fingerprint: str) -> None:
        record = {"message": message[:1000], "fingerprint": fingerprint, "at": time.time()}
        self.r.set(self._key(cluster, "error"), json.dumps(record))

    def error(self, cluster: str) -> dict[str, Any] | None:
        raw = self.r.get(self._key(cluster, "error"))
        return dict(json.loads(raw)) if raw else None

    def clear(self, cluster: str) -> bool:
        """An operator's reset: forget the cluster's permanent error, quota and capacity state, and
        end a fleet-wide recovery hold (the operator vouches that no lost launch is in flight)."""
        return bool(self.r.delete(self._key(cluster, "error"), self._key(cluster, "at_quota"),
                                  self._key(cluster, "no_capacity"), self._key("recovering")))
