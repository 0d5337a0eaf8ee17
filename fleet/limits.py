"""The limits on one provider's calls that every control-plane worker shares through Redis:
operations per second (a moving window) and concurrent launches (leases).

The moving window is a Redis list of the times of the last `per_second` calls, read and written by
one script that takes the time from Redis (`TIME`): the `limits` library stamps calls with each
host's own clock, so a host whose clock is ahead would fill the window with calls that, to a host
behind it, stay "within the last second" for as long as the two disagree."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from fleet.errors import TransientProviderError
from fleet.keys import Keyspace
from fleet.lease import Lease

#: KEYS[1] the window; ARGV[1] the calls allowed per window, ARGV[2] its length (s). Returns "0"
#: if a call was taken, else the seconds until the oldest call in the window leaves it.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local oldest = redis.call('LINDEX', KEYS[1], limit - 1)
if oldest and tonumber(oldest) > now - window then
  return tostring(tonumber(oldest) + window - now)
end
redis.call('LPUSH', KEYS[1], string.format('%.6f', now))
redis.call('LTRIM', KEYS[1], 0, limit - 1)
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000) + 1000)
return '0'
"""


class LaunchSlotsBusy(TransientProviderError):
    """Every concurrent-launch slot of this provider is taken; try again in a moment."""


class Limits:
    def __init__(self, client: redis.Redis, url: str, fleet_id: str) -> None:
        self.r = client
        self.url = url
        self.keys = Keyspace(fleet_id)
        self._take = client.register_script(_TAKE)

    def take_op(self, provider: str, per_second: int, max_wait: float = 30.0) -> None:
        """Wait for one operation token of `provider` (shared by every control-plane worker)."""
        key = f"{self.keys.limits_prefix}:{provider}"
        deadline = time.monotonic() + max_wait
        while (wait := float(self._take(keys=[key], args=[max(per_second, 1), 1.0]))) > 0:
            if time.monotonic() > deadline:
                raise TransientProviderError(f"no operation token for provider {provider!r} within {max_wait:g} s")
            time.sleep(min(max(wait, 0.01), 1.0))

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
