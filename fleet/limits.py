"""The limits on one provider's calls that every control-plane worker shares through Redis:
operations per second (the `limits` library's moving window) and concurrent launches (leases)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from limits import parse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from fleet.errors import TransientProviderError
from fleet.keys import Keyspace
from fleet.lease import Lease


class LaunchSlotsBusy(TransientProviderError):
    """Every concurrent-launch slot of this provider is taken; try again in a moment."""


class Limits:
    def __init__(self, client: redis.Redis, url: str, fleet_id: str) -> None:
        self.r = client
        self.url = url
        self.keys = Keyspace(fleet_id)
        self._limiter_obj: MovingWindowRateLimiter | None = None

    @property
    def _limiter(self) -> MovingWindowRateLimiter:
        if self._limiter_obj is None:  # built on first use: it opens its own Redis connection
            self._limiter_obj = MovingWindowRateLimiter(RedisStorage(self.url, key_prefix=self.keys.limits_prefix))
        return self._limiter_obj

    def take_op(self, provider: str, per_second: int, max_wait: float = 30.0) -> None:
        """Wait for one operation token of `provider` (shared by every control-plane worker)."""
        item = parse(f"{max(per_second, 1)}/second")
        deadline = time.monotonic() + max_wait
        while not self._limiter.hit(item, self.keys.fleet_id, provider):
            if time.monotonic() > deadline:
                raise TransientProviderError(f"no operation token for provider {provider!r} within {max_wait:g} s")
            stats = self._limiter.get_window_stats(item, self.keys.fleet_id, provider)
            time.sleep(min(max(stats.reset_time - time.time(), 0.01), 1.0))

    @contextmanager
    def launch_slot(self, provider: str, slots: int, lease: float) -> Iterator[None]:
        """One of `slots` concurrent launches of `provider`, or LaunchSlotsBusy. Each slot is a
        lease of `lease` seconds, renewed while the launch runs."""
        for i in range(slots):
            held = Lease(self.r, self.keys.provider_slot(provider, i), lease)
            if held.acquire():
                try:
                    yield
                finally:
                    held.release()
                return
        raise LaunchSlotsBusy(f"all {slots} concurrent launches of provider {provider!r} are taken")
