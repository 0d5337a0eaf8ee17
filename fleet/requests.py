"""Public requests that expire, and that name their fleet.

A caller that gives up waiting must be able to say truthfully whether its request will happen.
Celery's own `expires` is an absolute time on the sender's clock, read against the worker's: two
hosts whose clocks disagree by minutes make it useless. Redis's `TIME` is the one clock both
sides share, so:

* The sender reads Redis `TIME` and sends two message headers (`stamp`): `fleet_deadline`, Redis
  time after which the request must not be applied, and `fleet_id`, the fleet it is meant for.
  Its request id is the Celery task id.
* Before a control plane applies a public task it admits it (`Gate.admit`): a request named for
  another fleet is refused (`WrongFleet`) and changes nothing; then one Lua step (lua/admit.lua)
  keyed by the request id refuses it if its sender gave up on it (`abandoned`) or Redis time is
  past its deadline (records `expired`), else records `applying`. A refused request raises
  `RequestExpired` and writes a `request_expired` event to its cluster. A read-only request
  (`fleet.status`) past its deadline is refused without any write.
* A sender whose wait times out gives up (`abandon`, lua/abandon.lua): atomically, if no control
  plane recorded anything for the request, it records `abandoned`, and from then on the request
  is refused wherever it lands: only then may the sender say "not applied". If a control plane
  had taken it, the sender says so: it may have been applied.

A fate is kept `KEEP` seconds past the deadline; a message that waits longer is still refused by
its deadline. A message without `fleet_deadline` (a plain `send_task`) never expires, as before;
every service should send one (`fleet.client.request_headers`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import redis

from fleet.config import FleetConfig, shorten
from fleet.errors import InvalidRequest, RequestExpired, WrongFleet
from fleet.keys import Keyspace
from fleet.model import EventKind
from fleet.scripts import source
from fleet.store import Store

log = logging.getLogger(__name__)

#: The message header holding the request's deadline, in Redis time (Unix seconds).
DEADLINE = "fleet_deadline"
#: The message header naming the fleet the request is meant for.
FLEET = "fleet_id"
#: Seconds a request waits for an answer when its sender does not say (the CLI and console's too).
DEFAULT_TIMEOUT = 30.0
#: Seconds a request's fate is kept past its deadline: the sender may give up until then.
KEEP = 3600
#: A deadline further ahead of Redis time than this is refused as bad input.
MAX_AHEAD = 86400.0
#: The fates after which a request is never applied.
NOT_APPLIED = ("abandoned", "expired")


def stamp(client: redis.Redis, fleet_id: str, timeout: float) -> dict[str, Any]:
    """The headers of a request to fleet `fleet_id` that expires `timeout` seconds from now (Redis time)."""
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and 0 < timeout <= MAX_AHEAD):
        raise InvalidRequest(f"timeout must be between 0 and {MAX_AHEAD:g} seconds, got {shorten(timeout)}")
    seconds, micros = client.time()
    return {DEADLINE: round(seconds + micros / 1e6 + timeout, 6), FLEET: fleet_id}


def abandon(client: redis.Redis, fleet_id: str, task_id: str, deadline: float) -> str:
    """Give up on request `task_id`: its fate, 'abandoned' if no control plane had taken it (it
    never will), 'applying' if one had (it may be applied), 'expired' if one refused it, or
    'unknown' (asked more than KEEP seconds past the deadline)."""
    script = client.register_script(source("abandon"))
    fate = script(keys=[Keyspace(fleet_id).request(task_id)], args=[repr(float(deadline)), KEEP])
    return fate.decode() if isinstance(fate, bytes) else str(fate)


def _deadline(value: Any) -> float | None:
    """The `fleet_deadline` header from the outside world: none, or a finite number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(f"the {DEADLINE} header must be a number (Redis time, seconds), got {shorten(value)}")
    return float(value)


class Gate:
    """The control plane's admission of public requests (see the module's docstring)."""

    def __init__(self, config: FleetConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.keys = Keyspace(config.fleet.id)
        self._admit = store.r.register_script(source("admit"))

    def admit(self, task: str, task_id: str | None, headers: Mapping[str, Any], args: tuple[Any, ...],
              mutating: bool = True) -> None:
        """Raise unless request `task_id` of `task` (its message headers and arguments) may be
        applied now: `WrongFleet` if it names another fleet, `InvalidRequest` for a malformed
        header, `RequestExpired` if it is past its deadline or its sender gave up on it. A
        mutating request is recorded as applying; a refused one gets a `request_expired` event."""
        named = headers.get(FLEET)
        if named is not None and named != self.config.fleet.id:
            raise WrongFleet(f"the request is for fleet {shorten(named, 40)}; this is fleet {self.config.fleet.id!r}: "
                             "nothing was done (check the fleet's Redis URL and public_queue)")
        deadline = _deadline(headers.get(DEADLINE))
        if deadline is None or not task_id:
            return
        if not mutating:
            seconds, micros = self.store.r.time()
            late = seconds + micros / 1e6 - deadline
            if late > 0:
                raise RequestExpired(f"{task} expired {late:.1f} s ago (its sender no longer waits): not answered")
            return
        raw = self._admit(keys=[self.keys.request(task_id)], args=[repr(deadline), KEEP, MAX_AHEAD])
        fate, at = raw[0].decode(), float(raw[1])
        if fate in ("applying", "taken"):
            return
        if fate == "invalid":
            raise InvalidRequest(f"the {DEADLINE} header is more than {MAX_AHEAD:g} s ahead of Redis time")
        why = ("its sender gave up waiting for it" if fate == "abandoned"
               else f"its deadline passed {at - deadline:.1f} s before a control plane took it")
        self._event(task, task_id, args, fate, why)
        raise RequestExpired(f"{task} was not applied: {why}")

    def _event(self, task: str, task_id: str, args: tuple[Any, ...], fate: str, why: str) -> None:
        cluster = args[0] if args else None
        log.warning("refused %s (request %s): %s", task, task_id, why)
        if isinstance(cluster, str) and cluster in self.config.clusters:
            self.store.event(cluster, EventKind.REQUEST_EXPIRED, task=task, request=task_id, fate=fate, why=why)
