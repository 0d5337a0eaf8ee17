"""Lifetimes: which workers have lived (or idled) too long. Pure (no I/O).

* `max_lifetime`: a live worker older than it becomes outdated (`expired`, marked by the sweep
  with `Store.expire`), and the rollout (`fleet.planners.rollout`) replaces it: new ones first,
  then it drains, as after a change of the spec. One already marked is not chosen again.
* `idle_timeout`: a worker idle that long (`idle_long`) goes first on a scale-down
  (`fleet.planners.scale`).
"""

from __future__ import annotations

from collections.abc import Mapping

from fleet.model import LIVE, HandleRecord

#: the revision `Store.expire` gives a worker past max_lifetime
EXPIRED_REV = "expired"


def expired(records: Mapping[str, HandleRecord], max_lifetime: float, now: float) -> list[str]:
    """The live handles of `records` born more than `max_lifetime` seconds before `now`, not
    marked yet (a record without a birth time never expires)."""
    return [h for h, r in records.items() if r.status in LIVE
            and r.born is not None and now - r.born > max_lifetime and r.rev != EXPIRED_REV]


def idle_long(rec: HandleRecord, idle_timeout: float | None, now: float) -> bool:
    """`rec`'s workers have held no task for `idle_timeout` seconds (never without one)."""
    return bool(idle_timeout) and rec.idle_since is not None and now - rec.idle_since >= (idle_timeout or 0)
