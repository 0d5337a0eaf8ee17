"""Poison messages set aside: entries on the control plane's queues that cannot be decoded or
dispatched (not JSON, not a message envelope, a body that is not what its encoding says, broken
headers, an unknown task, a content type Fleet does not accept).

A control-plane worker that receives one logs it without its payload, counts it in the fleet's
metrics hash (`dead_letters|<reason>`), pushes it onto the fleet's dead-letter list and
acknowledges it, so that it never comes back and no worker dies of it. The list is capped: the
newest `CAP` entries stay. `fleet status` shows how many there are and the newest reason.

Each entry is JSON: `{at, queue, reason, size, payload}`, `payload` being the raw entry as text
(cut to `PAYLOAD_LIMIT` characters; undecodable bytes escaped).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from fleet.counters import dead_letter_field
from fleet.keys import Keyspace

log = logging.getLogger(__name__)

#: entries kept in the dead-letter list (the newest)
CAP = 1000
#: characters of a payload kept in its entry
PAYLOAD_LIMIT = 64 * 1024


def dead_letter_key(fleet_id: str) -> str:
    return Keyspace(fleet_id).dead_letters


def as_text(payload: Any) -> str:
    """The raw entry as text: bytes decoded (undecodable ones escaped), anything else as JSON."""
    if isinstance(payload, bytes):
        return payload.decode("utf-8", errors="backslashreplace")
    if isinstance(payload, str):
        return payload
    try:
        return json.dumps(payload, default=repr)
    except (TypeError, ValueError):
        return repr(payload)


def set_aside(client: redis.Redis, fleet_id: str, queue: str, reason: str, payload: Any) -> bool:
    """Push one poison message onto the dead-letter list (capped) and count it, in one MULTI.
    Logs it without its payload. Returns False (and logs) when Redis refused: the caller drops
    the message all the same, since delivering it again would only fail again."""
    text = as_text(payload)
    entry = json.dumps({"at": time.time(), "queue": queue[:200], "reason": reason[:200], "size": len(text),
                        "payload": text[:PAYLOAD_LIMIT]})
    log.error("set aside a message from queue %r that cannot be processed: %s (%d characters; see `fleet status`)",
              queue[:200], reason[:200], len(text))
    keys = Keyspace(fleet_id)
    try:
        with client.pipeline(transaction=True) as pipe:
            pipe.lpush(keys.dead_letters, entry)
            pipe.ltrim(keys.dead_letters, 0, CAP - 1)
            pipe.hincrby(keys.metrics, dead_letter_field(reason.split(":", 1)[0][:60]), 1)
            pipe.execute()
    except redis.RedisError as exc:
        log.error("could not set that message aside (%s); it is dropped", exc)
        return False
    return True


@dataclass(frozen=True)
class DeadLetters:
    """What `fleet status` shows of the dead-letter list."""

    count: int
    newest_reason: str | None
    newest_at: float | None
    newest_queue: str | None


def summary(client: redis.Redis, fleet_id: str) -> DeadLetters:
    """How many messages are set aside, and the newest one's reason (one round trip)."""
    key = dead_letter_key(fleet_id)
    with client.pipeline(transaction=False) as pipe:
        pipe.llen(key)
        pipe.lindex(key, 0)
        count, newest = pipe.execute()
    if not newest:
        return DeadLetters(int(count), None, None, None)
    try:
        entry = json.loads(newest)
        return DeadLetters(int(count), str(entry.get("reason")), float(entry.get("at", 0)), str(entry.get("queue")))
    except (ValueError, TypeError, AttributeError):
        return DeadLetters(int(count), "unreadable entry", None, None)
