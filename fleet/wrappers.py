"""Cross-cutting concerns around a provider, one wrapper each (as Arvados wraps its cloud drivers):

* `Normalized`: anything a provider raises that is not a `ProviderError` becomes a
  `TransientProviderError` (the contract), and a result of the wrong shape a
  `PermanentProviderError`.
* `Deadlined`: every call has a deadline (`call_timeout`, per page of a listing); a call that
  misses it raises `ProviderTimeout` and holds the cluster's calls off (`fleet.deadline`,
  `Holds.hold_unresponsive`) until it answers after all (a listing's late answer is kept).
* `Instrumented`: every call's latency and error class go to the metrics hash.
* `LaunchSlots`: a launch takes one of the provider's concurrent-launch slots.
* `Throttled`: every call takes one of the provider's operation tokens.
* `Held`: a call during a rate-limit hold on the provider, or an unresponsive hold on the
  cluster, fails at once; a `RateLimited` from the cloud holds every worker off.

They are composed in one place, `fleet.control.pool.compose`. Each passes every provider
method through its `_call`; `raw` is the provider they wrap, all the way down.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis

from fleet.config import ProviderLimits
from fleet.counters import record_op
from fleet.deadline import Deadline
from fleet.errors import PermanentProviderError, ProviderError, ProviderTimeout, RateLimited, TransientProviderError
from fleet.holds import Holds
from fleet.keys import Keyspace
from fleet.limits import Limits
from fleet.provider import Cluster, ContainerSpec, Hardware, Interruption, Observation, Provider, WorkerStatus


class ProviderWrapper(Provider[Any]):
    """A provider that passes every call to `inner` through `_call`; override `_call`."""

    def __init__(self, inner: Provider[Any], name: str) -> None:
        super().__init__(inner.context)
        self.inner = inner
        self.name = name

    @property
    def raw(self) -> Provider[Any]:
        """The provider under every wrapper."""
        inner = self.inner
        return inner.raw if isinstance(inner, ProviderWrapper) else inner

    @property
    def grace(self) -> float:
        return float(self.raw.listing_grace)

    def _call(self, op: str, cluster: Cluster[Any], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(cluster, *args, **kwargs)

    def run_workers(self, cluster: Cluster[Any], container: ContainerSpec, hardware: Hardware, count: int,
                    *, launch_id: str) -> list[str]:
        return list(self._call("run", cluster, self.inner.run_workers, container, hardware, count, launch_id=launch_id))

    def worker_status(self, cluster: Cluster[Any], handles: Sequence[str]) -> dict[str, WorkerStatus]:
        return dict(self._call("status", cluster, self.inner.worker_status, handles))

    def kill_workers(self, cluster: Cluster[Any], handles: Sequence[str]) -> dict[str, bool | WorkerStatus]:
        return dict(self._call("kill", cluster, self.inner.kill_workers, handles))

    def observe(self, cluster: Cluster[Any], handles: Sequence[str]) -> Observation:
        if type(self.raw).observe is Provider.observe:
            # the provider's own observe is list + status: two calls, so each goes through the
            # wrappers as itself (two tokens, two timings), never as one "observe"
            return Provider.observe(self, cluster, handles)
        result: Observation = self._call("observe", cluster, self.inner.observe, handles)
        return result

    def launch_batch(self, cluster: Cluster[Any]) -> int:
        return self.inner.launch_batch(cluster)  # a property of the cloud, not a call to it

    def list_workers(self, cluster: Cluster[Any]) -> dict[str, int] | None:
        listed = self._call("list", cluster, self.inner.list_workers)
        return None if listed is None else dict(listed)

    def find_launch(self, cluster: Cluster[Any], launch_id: str) -> list[str] | None:
        found = self._call("find", cluster, self.inner.find_launch, launch_id)
        return None if found is None else list(found)

    def interruptions(self, cluster: Cluster[Any]) -> list[Interruption]:
        if type(self.raw).interruptions is Provider.interruptions:
            return []  # no such signal: no call, no token, no timing
        return list(self._call("interruptions", cluster, self.inner.interruptions))

    def acknowledge(self, cluster: Cluster[Any], notices: Sequence[Interruption]) -> None:
        if notices and type(self.raw).acknowledge is not Provider.acknowledge:
            self._call("acknowledge", cluster, self.inner.acknowledge, notices)


class Normalized(ProviderWrapper):
    """The contract's error rule: what is not a ProviderError is transient; a result of the wrong
    shape is permanent (a provider bug a person must fix)."""

    def _call(self, op: str, cluster: Cluster[Any], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(cluster, *args, **kwargs)
        except ProviderError:
            raise
        except Exception as exc:
            raise TransientProviderError(f"provider {self.name!r} failed in {op}", f"{type(exc).__name__}: {exc}") \
                from exc
        if op in ("run", "find") and result is not None and not (
                isinstance(result, list) and all(isinstance(h, str) and h for h in result)):
            raise PermanentProviderError(f"provider {self.name!r} returned {type(result).__name__} from {op}, "
                                         "not a list of handles")
        if op in ("status", "kill") and not isinstance(result, Mapping):
            raise PermanentProviderError(f"provider {self.name!r} returned {type(result).__name__} from {op}, "
                                         "not a dict by handle")
        if op == "kill":
            return {h: self._kill_answer(h, v) for h, v in result.items()}
        if op == "observe" and not isinstance(result, Observation):
            raise PermanentProviderError(f"provider {self.name!r} returned {type(result).__name__} from observe, "
                                         "not an Observation")
        if op == "interruptions" and not (isinstance(result, list)
                                          and all(isinstance(n, Interruption) for n in result)):
            raise PermanentProviderError(f"provider {self.name!r} returned {type(result).__name__} from "
                                         "interruptions, not a list of Interruption")
        return result

    def _kill_answer(self, handle: str, value: Any) -> bool | WorkerStatus:
        if isinstance(value, bool):
            return value
        try:
            return WorkerStatus(value)
        except ValueError:
            raise PermanentProviderError(f"provider {self.name!r} answered {value!r} for {handle} from kill, "
                                         "not True, False or a WorkerStatus") from None


class Deadlined(ProviderWrapper):
    """No call waits longer than `seconds` for an answer, or for the next page of one; one that
    would raises ProviderTimeout and holds the cluster's calls off for `hold` seconds in every
    process (see fleet.deadline). A listing (`READS`) that answers after all lifts the hold, and
    its answer is the next listing's."""

    #: the operations whose late answer is kept for the next call (their answer needs no argument)
    READS = ("observe", "list")

    def __init__(self, inner: Provider[Any], name: str, seconds: float, holds: Holds, hold: float) -> None:
        super().__init__(inner, name)
        self.deadline = Deadline(name, seconds, on_late=holds.lift_unresponsive)
        self.holds = holds
        self.hold = hold

    def _call(self, op: str, cluster: Cluster[Any], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return self.deadline.run(cluster.name, cluster.pool, op, fn, (cluster, *args), kwargs,
                                     keep=op in self.READS)
        except ProviderTimeout as exc:
            if not exc.held:
                self.holds.hold_unresponsive(cluster.name, self.hold, cluster.pool)
                if not self.deadline.abandoned(cluster.name):  # it answered while the hold was set
                    self.holds.lift_unresponsive(cluster.name, cluster.pool)
            raise


class Instrumented(ProviderWrapper):
    """Every call's latency and error class, in the metrics hash (fleet_provider_operation_seconds)."""

    def __init__(self, inner: Provider[Any], name: str, client: redis.Redis, keys: Keyspace) -> None:
        super().__init__(inner, name)
        self.client = client
        self.keys = keys

    def _call(self, op: str, cluster: Cluster[Any], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        started, error = time.monotonic(), None
        try:
            return fn(cluster, *args, **kwargs)
        except Exception as exc:
            error = type(exc).__name__
            raise
        finally:
            record_op(self.client, self.keys, self.name, op, time.monotonic() - started, error)


class LaunchSlots(ProviderWrapper):
    """A launch takes one of `slots` concurrent-launch slots of the provider, or LaunchSlotsBusy."""

    def __init__(self, inner: Provider[Any], name: str, limits: Limits, slots: int, lease: float) -> None:
        super().__init__(inner, name)
        self.limits = limits
        self.slots = slots
        self.lease = lease

    def _call(self, op: str, cluster: Cluster[Any], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if op != "run":
            return fn(cluster, *args, **kwargs)
        with self.limits.launch_slot(self.name, self.slots, self.lease):
            return fn(cluster, *args, **kwargs)


class Throttled(ProviderWrapper):
    """Every call takes one operation token of the provider (`ops_per_second`, shared)."""

    def __init__(self, inner: Provider[Any], name: str, limits: Limits, per_second: int) -> None:
        super().__init__(inner, name)
        self.limits = limits
        self.per_second = per_second

    def _call(self, op: str, cluster: Cluster[Any], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.limits.take_op(self.name, self.per_second)
        return fn(cluster, *args, **kwargs)


class Held(ProviderWrapper):
    """Honours the shared holds before a call: a rate-limit hold on the provider (RateLimited with
    the time left) and an unresponsive hold on the cluster (ProviderTimeout, `held`). A
    RateLimited from the cloud sets the provider's hold, for every control-plane worker."""

    def __init__(self, inner: Provider[Any], name: str, holds: Holds) -> None:
        super().__init__(inner, name)
        self.holds = holds

    def _call(self, op: str, cluster: Cluster[Any], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        wait, held = self.holds.call_holds(self.name, cluster.name, cluster.pool)
        if wait > 0:
            raise RateLimited(f"provider {self.name!r} is rate-limited", retry_after=wait)
        if held > 0:
            raise ProviderTimeout(f"provider {self.name!r} did not answer for cluster {cluster.name!r} lately: its "
                                  f"calls are held for {held:.0f} s", retry_after=held, held=True)
        try:
            return fn(cluster, *args, **kwargs)
        except RateLimited as exc:
            self.holds.hold_provider(self.name, exc.retry_after)
            raise


def call_timeout(raw: Provider[Any], limits: ProviderLimits) -> float:
    """The deadline of a provider's calls: the operator's, else the provider's own."""
    return float(limits.call_timeout or raw.call_timeout)
