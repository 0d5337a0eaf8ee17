"""The fleet's counters and histograms: the fields of its metrics hash (`Keyspace.metrics`), written
by the store (in the same script or transaction that writes an event), by the provider
instrumentation and by the transport, and read by `fleet.metrics` at scrape time.

| field                                  | meaning                                                  |
|----------------------------------------|----------------------------------------------------------|
| `events|{cluster}|{kind}`              | every event ever written for that cluster and kind        |
| `ready|{cluster}|{le}`                  | workers whose launch request -> running time fell in the  |
|                                        | bucket with upper bound `le` (NOT cumulative)             |
| `ready_sum|{cluster}`, `ready_count|{cluster}` | seconds (HINCRBYFLOAT) and number of those workers |
| `op|{provider}|{op}|{le}`              | provider operation latency, same bucket scheme (OP_BUCKETS) |
| `op_sum|{provider}|{op}`, `op_count|{provider}|{op}` | seconds and number of operations            |
| `op_errors|{provider}|{op}|{error}`    | failed operations by exception class name                 |
| `dead_letters|{reason}`                | poison messages set aside (`fleet.deadletters`)           |
| `unreadable|{cluster}|{source}|{reason}` | inputs from outside skipped or set aside (`fleet.inputs`) |
| `pool_launches|{cluster}|{pool}`       | workers launched in a pool (recorded by `lua/record.lua`)  |
| `fallbacks|{cluster}|{pool}|{cause}`   | workers launched elsewhere because the pool was skipped    |
| `interruptions|{cluster}|{pool}|{cause}` | workers the cloud reclaims (`lua/interrupt.lua`)        |
| `replaced|{cluster}|{le}`, `replaced_sum|{cluster}` | seconds from an interruption notice to a  |
|                                        | replacement running (READY_BUCKETS, NOT cumulative)       |
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis

from fleet.keys import Keyspace

log = logging.getLogger(__name__)

#: upper bounds (seconds) of the time-to-running buckets, as stored in `ready|{cluster}|{le}`
READY_BUCKETS: tuple[str, ...] = ("1", "2", "5", "10", "30", "60", "120", "300", "600", "1800", "+Inf")
#: upper bounds (seconds) of the provider operation buckets, as stored in `op|{provider}|{op}|{le}`
OP_BUCKETS: tuple[str, ...] = ("0.01", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "+Inf")
#: the provider operations the instrumentation times
OPS: tuple[str, ...] = ("run", "status", "kill", "list", "find", "observe")


def bucket_for(seconds: float, buckets: Sequence[str]) -> str:
    """The `le` of the (non-cumulative) bucket `seconds` falls in: the first upper bound it does
    not exceed, else the last one ("+Inf"). NaN goes to the last bucket."""
    for le in buckets:
        if seconds <= float(le):
            return le
    return buckets[-1]


def event_field(cluster: str, kind: str) -> str:
    return f"events|{cluster}|{kind}"


def fallback_field(cluster: str, pool: str, why: str) -> str:
    """The counter of launches that went past `pool`, by the cause of the skip ("no capacity",
    "error: ..." -> no_capacity, error)."""
    cause = why.split(":", 1)[0].strip().replace(" ", "_") or "unknown"
    return f"fallbacks|{cluster}|{pool}|{cause}"


def dead_letter_field(reason: str) -> str:
    return f"dead_letters|{reason}"


def _pipeline(pipe_or_client: Any) -> tuple[Any, bool]:
    """(pipeline to queue commands on, whether we own it and must execute it)."""
    if isinstance(pipe_or_client, redis.client.Pipeline):
        return pipe_or_client, False
    return pipe_or_client.pipeline(transaction=False), True


def record_event(pipe_or_client: Any, keys: Keyspace, cluster: str, kind: str, n: int = 1) -> None:
    """Count `n` events of `kind` (queued on a pipeline if given one; else sent at once)."""
    pipe_or_client.hincrby(keys.metrics, event_field(cluster, str(kind)), n)


def record_ready(pipe_or_client: Any, keys: Keyspace, cluster: str, seconds: float, workers: int = 1) -> None:
    """Observe `workers` workers that took `seconds` from launch request to running.

    Given a pipeline (or a WATCH/MULTI transaction in its MULTI phase), the commands are queued on
    it and it is not executed; given a client, they are sent in one non-transactional pipeline."""
    seconds = max(float(seconds), 0.0)
    pipe, own = _pipeline(pipe_or_client)
    pipe.hincrby(keys.metrics, f"ready|{cluster}|{bucket_for(seconds, READY_BUCKETS)}", workers)
    pipe.hincrbyfloat(keys.metrics, f"ready_sum|{cluster}", seconds * workers)
    pipe.hincrby(keys.metrics, f"ready_count|{cluster}", workers)
    if own:
        pipe.execute()


def record_op(client: redis.Redis, keys: Keyspace, provider: str, op: str, seconds: float, error: str | None) -> None:
    """Observe one provider operation (`op` in OPS) that took `seconds` and failed with the
    exception class named `error` (None: it succeeded). One round trip.

    Never raises a Redis error: metrics must not break the provider call they time."""
    seconds = max(float(seconds), 0.0)
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(keys.metrics, f"op|{provider}|{op}|{bucket_for(seconds, OP_BUCKETS)}", 1)
    pipe.hincrbyfloat(keys.metrics, f"op_sum|{provider}|{op}", seconds)
    pipe.hincrby(keys.metrics, f"op_count|{provider}|{op}", 1)
    if error:
        pipe.hincrby(keys.metrics, f"op_errors|{provider}|{op}|{error}", 1)
    try:
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("cannot record a %s %s operation in the metrics: %s", provider, op, exc)


def unreadable_field(cluster: str, source: str, reason: str) -> str:
    return f"unreadable|{cluster}|{source}|{reason}"


def record_unreadable(client: redis.Redis, keys: Keyspace, cluster: str, source: str, reason: str, n: int) -> None:
    """Count `n` inputs from outside of `source` that could not be read (`Provider.unreadable`;
    `source` and `reason` are slugs). Never raises a Redis error."""
    try:
        client.hincrby(keys.metrics, unreadable_field(cluster, source, reason), n)
    except redis.RedisError as exc:
        log.warning("cannot count unreadable inputs of %s in the metrics: %s", cluster, exc)


def lua_constants() -> str:
    """The Lua line that gives the scripts the time-to-running buckets (see lua/prelude.lua)."""
    return "local READY_BUCKETS = {" + ", ".join(f"'{le}'" for le in READY_BUCKETS) + "}\n"
