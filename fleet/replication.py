"""What Redis replication means for Fleet's promises, behind Sentinel or any primary with replicas.

- An acknowledged public request is on a replica: a mutating public task answers only after a
  connected replica confirmed every write so far (WAIT), or fails with `NotReplicated`, which says
  the change was applied on the primary and may still be lost if the primary fails before a
  replica has it. A primary without connected replicas has nothing to wait for.
- A failover is noticed: a promoted replica reports the old primary's replication id as its
  `master_replid2`. What the old primary wrote last may be missing there, exactly as when Redis
  loses its data, so the caller (`fleet.control.epoch`) starts the same recovery.
"""

from __future__ import annotations

from typing import Any

import redis

from fleet.errors import NotReplicated

#: How long a mutating public task waits for a replica to confirm its writes.
CONFIRM_TIMEOUT = 2.0


def confirm_replicated(r: redis.Redis, key: str, timeout: float = CONFIRM_TIMEOUT) -> int:
    """Wait until a connected replica has every write made on the primary so far; the number of
    replicas that confirmed (0 without replicas). Raise NotReplicated if none did in `timeout`.

    WAIT counts only the writes of its own connection, and a pooled client may have written on
    another: so one small write (`key`, a counter) goes first on the same connection. Replication
    keeps order, so a replica that has it has everything written before it."""
    replicas = int(r.info("replication").get("connected_slaves", 0))
    if not replicas:
        return 0
    pipe = r.pipeline(transaction=False)
    pipe.incr(key)
    pipe.execute_command("WAIT", 1, int(timeout * 1000))
    _, confirmed = pipe.execute()
    if not int(confirmed):
        raise NotReplicated(f"applied on the Redis primary, but none of its {replicas} replica(s) confirmed it within "
                            f"{timeout:g} s: the change is lost if the primary fails now (see `fleet status`)")
    return int(confirmed)


def replication_ids(r: redis.Redis) -> tuple[str, str]:
    """(master_replid, master_replid2) of the server `r` talks to now."""
    info: dict[str, Any] = r.info("replication")
    return str(info.get("master_replid", "")), str(info.get("master_replid2", ""))


def promoted_over(seen: str, now: tuple[str, str]) -> bool:
    """True if the server now answering was promoted from a replica of the primary whose
    replication id this process saw as `seen` (a failover happened between the two looks)."""
    replid, replid2 = now
    return bool(seen) and replid != seen and replid2 == seen
