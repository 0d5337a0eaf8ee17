"""Redis time: the one clock every control-plane process agrees on.

Hosts' clocks disagree (a VM without NTP, a clock stepped by hand); Redis's `TIME` is the same for
every process that talks to it. Every absolute time the control plane stores or compares across
processes (holds, handle records, drain deadlines, events, task due times) is Redis time, from
`now(client)`, never `time.time()`.

Contract:
* `now(client)` is the Redis server's time, in Unix seconds, within a few milliseconds: the
  `TIME` answer of the last measurement plus the local monotonic time elapsed since. A
  measurement (one round trip) is made on first use and again every `REFRESH` seconds, so the
  local wall clock is never read for it, and a local clock that is stepped changes nothing.
* When Redis cannot be reached for a measurement, the last one is kept (and retried after a
  second); with none yet, the RedisError propagates, as any other call to that Redis would.
* `offset(client)` is how far this host's wall clock is *behind* Redis (Redis - local, seconds).
* A process that calls `report(client, fleet_id, role)` once publishes its offset at every
  measurement (a daemon thread measures at least every `REFRESH` seconds) in the fleet's `clocks`
  hash (field `<host>/<pid>`, JSON `{offset, at, role}`);
  `skewed(client, fleet_id)` reads the fresh entries whose offset exceeds `SKEW_WARN`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from fleet.keys import Keyspace

log = logging.getLogger(__name__)

#: Seconds between two measurements of one server's time.
REFRESH = 30.0
#: Seconds a measurement's round trip may take; a slower one is made again (at most twice more).
MAX_ROUND_TRIP = 0.5
#: A host whose clock is off Redis's by more than this many seconds is reported by `fleet status`.
SKEW_WARN = 2.0
#: A published offset older than this (Redis time, seconds) belongs to a process that has stopped.
REPORT_TTL = 3 * REFRESH


@dataclass
class _Reading:
    redis_at: float  # Redis TIME at the measurement (midpoint of the round trip)
    mono_at: float  # local monotonic time then
    offset: float  # Redis - local wall clock
    next_at: float  # monotonic time of the next measurement


_lock = threading.Lock()
_readings: dict[tuple[Any, ...], _Reading] = {}
_reports: dict[tuple[Any, ...], tuple[str, str]] = {}  # server -> (fleet id, role) to publish under


def _server(client: redis.Redis) -> tuple[Any, ...]:
    kw = client.connection_pool.connection_kwargs
    return kw.get("host"), kw.get("port"), kw.get("path"), kw.get("db", 0)


def _measure(client: redis.Redis, server: tuple[Any, ...]) -> _Reading:
    for _ in range(3):
        mono0, wall0 = time.monotonic(), time.time()
        seconds, micros = client.time()
        mono1, wall1 = time.monotonic(), time.time()
        # a slow round trip (a silent pooled connection timed out, and redis-py retried on a new
        # one: fleet.connection) puts the midpoint seconds away from the answer: measure again
        if mono1 - mono0 < MAX_ROUND_TRIP:
            break
    redis_at = seconds + micros / 1e6
    reading = _Reading(redis_at, (mono0 + mono1) / 2, redis_at - (wall0 + wall1) / 2, mono1 + REFRESH)
    with _lock:
        _readings[server] = reading
        target = _reports.get(server)
    if target is not None:
        _publish(client, reading, *target)
    return reading


def _publish(client: redis.Redis, reading: _Reading, fleet_id: str, role: str) -> None:
    key = Keyspace(fleet_id).clocks
    entry = json.dumps({"offset": round(reading.offset, 3), "at": reading.redis_at, "role": role})
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.hset(key, f"{socket.gethostname()}/{os.getpid()}", entry)
            pipe.expire(key, int(REPORT_TTL))
            pipe.execute()
    except redis.RedisError as exc:
        log.debug("cannot publish this host's clock offset: %s", exc)


def _reading(client: redis.Redis) -> _Reading:
    server = _server(client)
    with _lock:
        reading = _readings.get(server)
    if reading is not None and time.monotonic() < reading.next_at:
        return reading
    try:
        return _measure(client, server)
    except redis.RedisError:
        if reading is None:
            raise
        reading.next_at = time.monotonic() + 1.0
        return reading


def now(client: redis.Redis) -> float:
    """The Redis server's time (Unix seconds), measured as the module docstring says."""
    reading = _reading(client)
    return reading.redis_at + (time.monotonic() - reading.mono_at)


def offset(client: redis.Redis) -> float:
    """Redis time minus this host's wall clock, in seconds (positive: this host is behind)."""
    return _reading(client).offset


def report(client: redis.Redis, fleet_id: str, role: str) -> None:
    """Publish this process's offset in the fleet's `clocks` hash now and at every measurement."""
    server = _server(client)
    with _lock:
        first = server not in _reports
        _reports[server] = (fleet_id, role)
    _measure(client, server)
    if first:  # an idle process keeps its report fresh too
        threading.Thread(target=_remeasure, args=(client,), name="fleet-clock", daemon=True).start()


def _remeasure(client: redis.Redis) -> None:
    while True:
        time.sleep(REFRESH / 2)
        try:
            _reading(client)
        except redis.RedisError as exc:
            log.debug("cannot measure Redis time: %s", exc)


def skewed(client: redis.Redis, fleet_id: str, limit: float = SKEW_WARN) -> list[dict[str, Any]]:
    """The control-plane processes whose clock is off Redis's by more than `limit` seconds, from
    their fresh reports: `{process, role, offset}` each (offset = Redis - host, seconds), worst first.
    Stale reports (their process stopped) are dropped from the hash."""
    key = Keyspace(fleet_id).clocks
    current = now(client)
    out, stale = [], []
    for field, raw in client.hgetall(key).items():
        try:
            entry = json.loads(raw)
            off, at, role = float(entry["offset"]), float(entry["at"]), str(entry.get("role", ""))
        except (ValueError, KeyError, TypeError):
            stale.append(field)
            continue
        if current - at > REPORT_TTL:
            stale.append(field)
        elif abs(off) > limit:
            out.append({"process": field.decode() if isinstance(field, bytes) else str(field),
                        "role": role, "offset": round(off, 1)})
    if stale:
        client.hdel(key, *stale)
    return sorted(out, key=lambda e: -abs(e["offset"]))


def describe(entry: dict[str, Any]) -> str:
    """One line for `fleet status`: which process is how far off, which way."""
    off = float(entry["offset"])
    way = "behind" if off > 0 else "ahead of"
    role = f" ({entry['role']})" if entry.get("role") else ""
    return (f"the clock of control-plane process {entry['process']}{role} is {abs(off):.1f} s {way} Redis's: "
            "Fleet keeps working (it uses Redis time), but fix the host's time sync (NTP)")
