"""The sweep's section: what the provider reports (statuses, interruptions), kill attempts and
the cleanup of dead handles' remains, and the handles the provider lists that Redis does not
know (remembered, then adopted). Each write is one Lua script call (`fleet/lua/`)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from fleet.model import HandleStatus
from fleet.state.base import StoreBase


@dataclass(frozen=True)
class StatusResult:
    pruned: int = 0  # workers of handles that died on their own
    changed: int = 0  # handles whose record changed
    gone: int = 0  # handles that left Redis (died, or killed and confirmed)
    dead: dict[str, str] = field(default_factory=dict)  # the handles that died on their own -> pool
    #: the ones of them that died before they ran -> their revision (a rollout's new worker failing)
    died_booting: dict[str, str] = field(default_factory=dict)


class Sweeps(StoreBase):
    """Statuses, interruptions, kills, cleanups, unknown handles and adoption."""

    def apply_status(self, cluster: str, status: Mapping[str, str], grace: float = 0.0,
                     cleanup_retry: float = 10.0) -> StatusResult:
        """Write observed statuses in one script call; drops stopped handles. Dead ones (and
        stopping ones whose last kill failed) enter the cleanup hash: see `cleanup_due`."""
        if not status:
            return StatusResult()
        args: list[Any] = [grace, cleanup_retry]
        for h, s in status.items():
            args += [h, s]
        k = self.of(cluster)
        pruned, changed, gone, dead = self._script("status", cluster, [k.handles, k.cleanup, k.index, k.counts,
                                                                        k.notice, k.cost], args)
        rows = [tuple(x.decode() for x in dead[i:i + 4]) for i in range(0, len(dead), 4)]
        return StatusResult(int(pruned), int(changed), int(gone), {h: p for h, p, _, _ in rows},
                            {h: rev for h, _, was, rev in rows if was == HandleStatus.INITIALIZING.value})

    def interrupt(self, cluster: str, notices: Mapping[str, tuple[str, float | None]],
                  default_notice: float = 120.0) -> list[str]:
        """Mark handles the cloud reclaims (handle -> (cause, deadline or None)) as interrupted,
        in one script call (lua/interrupt.lua): live ones move to draining until the deadline
        (`default_notice` seconds from now without one). Unknown and stopping handles, and
        handles already marked, are left as they are. Returns the handles moved to draining."""
        if not notices:
            return []
        args: list[Any] = [default_notice]
        for h, (cause, deadline) in notices.items():
            if deadline is not None and not math.isfinite(deadline):
                deadline = None  # a provider's nonsense (inf, nan) means "no deadline", never a failed script
            args += [h, str(cause)[:64], "" if deadline is None else deadline]
        k = self.of(cluster)
        moved = self._script("interrupt", cluster, [k.handles, k.index, k.counts, k.notice], args)
        return [h.decode() for h in moved]

    def record_kills(self, cluster: str, results: Mapping[str, bool], cleanup_retry: float = 10.0,
                     pool: str = "") -> None:
        """Count a kill attempt on each handle (they stay stopping until the provider no longer
        reports them; see apply_status); a failed one is an event. A failed kill of a handle that
        already left Redis enters the cleanup hash; a successful one ends a cleanup."""
        if not results:
            return
        args: list[Any] = [cleanup_retry, pool]
        for h, ok in results.items():
            args += [h, "1" if ok else "0"]
        k = self.of(cluster)
        self._script("killed", cluster, [k.handles, k.cleanup], args)

    def cleanup_due(self, cluster: str, retry: float, most: int) -> dict[str, str]:
        """Dead handles whose cleanup kill should be sent (again) now -> their pool; one script
        call. A successful kill (`record_kills`) ends a handle's cleanup."""
        due = self._script("cleanup_due", cluster, [self.of(cluster).cleanup], [retry, most])
        return {h.decode(): p.decode() for h, p in zip(due[::2], due[1::2], strict=True)}

    # -- recovery --------------------------------------------------------------------------
    def track_unknown(self, cluster: str, listed: Mapping[str, int], now: float,
                      pools: Mapping[str, str] | None = None) -> dict[str, float]:
        """Remember when each live handle the provider lists but Redis does not know was first
        seen (and the pool that listed it); forget the ones no longer in that set. Returns
        handle -> first seen."""
        key = self.of(cluster).unknown
        raw = cast("Mapping[bytes, bytes]", self.r.hgetall(key))
        old = {k.decode(): json.loads(v) for k, v in raw.items()}
        keep: dict[str, dict[str, Any]] = {}
        for h, w in listed.items():
            keep[h] = {"w": w, "first": old.get(h, {}).get("first", now)}
            if pools and pools.get(h):
                keep[h]["p"] = pools[h]
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(key)
        if keep:
            pipe.hset(key, mapping={h: json.dumps(v) for h, v in keep.items()})
        pipe.execute()
        return {h: float(v["first"]) for h, v in keep.items()}

    def unknown_workers(self, cluster: str) -> int:
        return sum(int(json.loads(v)["w"]) for v in self.r.hvals(self.of(cluster).unknown))

    def adopt(self, cluster: str, found: Mapping[str, tuple[int, str]], set_desired: bool,
              pools: Mapping[str, str] | None = None, revs: Mapping[str, str] | None = None) -> int:
        """Record handles found at the provider (handle -> (workers, status)), under the pool
        that listed each (`pools`); with set_desired and no desired number stored, desired :=
        the cluster's live workers (the seed's reconnect)."""
        args: list[Any] = ["1" if set_desired else "0"]
        for h, (w, s) in found.items():
            args += [h, w, s, (pools or {}).get(h, ""), (revs or {}).get(h, "")]
        k = self.of(cluster)
        return int(self._script("adopt", cluster, [k.handles, k.unknown, k.desired, k.cleanup, k.index, k.counts],
                                args))
