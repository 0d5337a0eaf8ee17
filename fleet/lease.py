"""Leases: short-lived Redis locks that stay alive while their holder works.

A control-plane worker holds a cluster's reconcile and sweep locks, a launch's lock and a
provider's launch slots only while it works on them. A lock with a long fixed lifetime (it was
60 s) makes a worker that dies holding it (SIGKILL, OOM, a lost VM) stall its cluster for that
long. A lease instead lives `ttl` seconds (a few sweep intervals) and a keeper thread renews
every lease this process holds, every `ttl / 3`: a live holder keeps it however long it works, a
dead one loses it within `ttl`.

The locks are redis-py's (`Lock`, with `thread_local=False` so that the keeper thread may renew
them); the keeper is hand-written because redis-py has none. A lease that lapses anyway (a
process stalled for longer than `ttl`) is safe: what it protects is atomic in Redis or
idempotent at the provider, the lease only saves duplicate work.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from redis.exceptions import LockError

log = logging.getLogger(__name__)

#: The shortest lease: renewals every second or so stay cheap and survive a busy process.
MIN_TTL = 3.0


def lease_ttl(sweep_interval: float) -> float:
    """The lifetime of a cluster's leases: two sweep intervals, at least MIN_TTL seconds."""
    return max(2.0 * sweep_interval, MIN_TTL)


class _Keeper:
    """One daemon thread per process renewing every lease it holds.

    Each lease is kept with the token it was taken with: a lease let go (and perhaps taken again)
    between the keeper's look and its renewal is left to whoever holds it now."""

    def __init__(self) -> None:
        self._held: dict[int, tuple[Any, Any]] = {}  # id(lock) -> (lock, token when kept)
        self._mutex = threading.Lock()
        self._wake = threading.Condition(self._mutex)
        self._thread: threading.Thread | None = None

    def keep(self, lock: Any) -> None:
        with self._mutex:
            self._held[id(lock)] = (lock, lock.local.token)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="fleet-lease-keeper", daemon=True)
                self._thread.start()
            self._wake.notify()

    def drop(self, lock: Any) -> None:
        with self._mutex:
            self._held.pop(id(lock), None)

    def _run(self) -> None:
        while True:
            with self._mutex:
                if not self._held:
                    self._wake.wait(timeout=5.0)
                    continue
                entries = list(self._held.values())
                period = min(float(lock.timeout) for lock, _ in entries) / 3.0
            for lock, token in entries:
                with self._mutex:
                    if self._held.get(id(lock)) != (lock, token):
                        continue  # let go (or taken again) since: not this entry's to renew
                try:
                    lock.reacquire()
                except LockError:
                    with self._mutex:
                        current = self._held.get(id(lock)) == (lock, token)
                        if current:
                            self._held.pop(id(lock), None)
                    if current:
                        log.warning("lease %s lapsed before its holder let go", _name(lock))
                except redis.RedisError as exc:
                    log.warning("cannot renew lease %s: %s", _name(lock), exc)
            time.sleep(max(period, 0.05))


def _name(lock: Any) -> str:
    name = lock.name
    return name.decode() if isinstance(name, bytes) else str(name)


KEEPER = _Keeper()


class Lease:
    """A lock on `key` held for as long as its holder works (`acquire` never waits)."""

    def __init__(self, client: redis.Redis, key: str, ttl: float) -> None:
        self.lock = client.lock(key, timeout=ttl, thread_local=False)

    def acquire(self) -> bool:
        if not self.lock.acquire(blocking=False):
            return False
        KEEPER.keep(self.lock)
        return True

    def release(self) -> None:
        KEEPER.drop(self.lock)
        try:
            self.lock.release()
        except LockError:
            log.warning("lease %s lapsed before its holder let go", _name(self.lock))
        except redis.RedisError as exc:  # Redis went away: the lease lapses on its own
            log.warning("cannot release lease %s: %s", _name(self.lock), exc)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        if self.lock.local.token is not None:
            self.release()
