"""A deadline on every provider call, so that a provider that never answers cannot hold a
control-plane thread for longer than its `call_timeout`.

A Python thread cannot be cancelled, and an SDK's own timeouts are per attempt (botocore: connect
10 s + read 60 s, times its attempts) or absent. So each call runs in a daemon thread of its
own; the caller waits at most `seconds` and then gets a `ProviderTimeout`. The abandoned call
finishes (or hangs) on its own; its result is dropped. While a cluster has an abandoned call
still running in this process, its new calls fail at once (`ProviderTimeout` with `held`)
instead of piling more threads behind a dead endpoint; `GuardedProvider` also holds the
cluster's calls off in Redis, for every process. (`concurrent.futures` is not used: its
executor joins its threads at interpreter exit, so one hung call would hang the shutdown.)

A provider that answers slowly but does answer is never held blind:

* **Per page.** A paginated listing calls `progress()` as each page arrives; the deadline then
  starts again from that moment. `seconds` bounds the wait for one page, not for a listing of
  the whole fleet, so a listing that grows with the fleet never outgrows its deadline.
* **Late answers are kept.** A call that missed its deadline still finishes in its thread; when
  it does, with an answer, `on_late` is told (the unresponsive hold is lifted: the provider did
  answer). The answer of a read (`Deadline.read`: a listing, an observation) is kept for
  `seconds`: the next read of that cluster, pool and op takes it at once instead of asking again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from fleet.errors import ProviderTimeout

T = TypeVar("T")
log = logging.getLogger(__name__)
#: the progress beacon of the deadlined call running in this thread (see `progress`)
_beacon = threading.local()


def progress() -> None:
    """Tell the deadline of the provider call running in this thread that it made progress (a
    page of a listing arrived): its deadline starts again from now. Outside one: nothing."""
    beat = getattr(_beacon, "beat", None)
    if beat is not None:
        beat()


class Deadline:
    """Runs one provider's calls, each under a deadline of `seconds` (from its start, or from its
    last `progress`). `on_late(cluster, pool)`: a call of that pool that timed out answered
    after all, and no other call of the cluster is still out."""

    def __init__(self, provider: str, seconds: float, on_late: Callable[[str, str], None] | None = None) -> None:
        self.provider = provider
        self.seconds = seconds
        self.on_late = on_late
        self._abandoned: Counter[str] = Counter()
        self._late: dict[tuple[str, str, str], tuple[float, Any]] = {}  # (cluster, pool, op) -> (when, answer)
        self._mutex = threading.Lock()

    def abandoned(self, cluster: str) -> int:
        """Calls of `cluster` that timed out and are still running in this process."""
        with self._mutex:
            return self._abandoned[cluster]

    def call(self, cluster: str, op: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)`, or ProviderTimeout if it has not returned within the deadline."""
        return self.run(cluster, "", op, fn, args, kwargs)

    def read(self, cluster: str, pool: str, op: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`call`, for a read whose answer is still worth having late (see `run`)."""
        return self.run(cluster, pool, op, fn, args, kwargs, keep=True)

    def run(self, cluster: str, pool: str, op: str, fn: Callable[..., T], args: tuple[Any, ...],
            kwargs: dict[str, Any], keep: bool = False) -> T:
        """`call` of `cluster`'s `pool`. With `keep`, the answer a timed-out call of this cluster,
        pool and op gave since (at most `seconds` ago) is taken instead of asking again, and this
        call's answer, should it come late, is kept so."""
        key = (cluster, pool, op)
        if keep:
            with self._mutex:
                kept = self._late.pop(key, None)
            if kept is not None and time.monotonic() - kept[0] <= self.seconds:
                return kept[1]
        with self._mutex:
            if self._abandoned[cluster]:
                raise ProviderTimeout(
                    f"provider {self.provider!r}: {self._abandoned[cluster]} earlier call(s) for cluster {cluster!r} "
                    f"timed out and have not returned yet; not calling it again until they do",
                    retry_after=self.seconds, held=True)
        done = threading.Event()
        box: dict[str, Any] = {}
        state = {"abandoned": False, "beat": time.monotonic()}

        def beat() -> None:
            state["beat"] = time.monotonic()

        def target() -> None:
            _beacon.beat = beat
            late = False
            try:
                box["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller as it is
                box["error"] = exc
            finally:
                with self._mutex:
                    done.set()
                    if state["abandoned"]:
                        self._abandoned[cluster] -= 1
                        if "value" in box:  # it answered after all: slow, not gone
                            late = not self._abandoned[cluster]
                            if keep:
                                self._late[key] = (time.monotonic(), box["value"])
            if late and self.on_late is not None:
                try:
                    self.on_late(cluster, pool)
                except Exception as exc:  # noqa: BLE001 - the hold then ends on its own
                    log.warning("cannot lift the unresponsive hold of %s: %s", cluster, exc)

        threading.Thread(target=target, name=f"fleet-{self.provider}-{op}", daemon=True).start()
        while not done.wait(max(float(state["beat"]) + self.seconds - time.monotonic(), 0.0)):
            if time.monotonic() >= float(state["beat"]) + self.seconds:
                break  # no answer, nor a page of one, within `seconds`
        if not done.is_set():
            with self._mutex:
                if not done.is_set():  # (it may have returned just now)
                    state["abandoned"] = True
                    self._abandoned[cluster] += 1
            if state["abandoned"]:
                raise ProviderTimeout(f"provider {self.provider!r} did not answer {op} for cluster {cluster!r} "
                                      f"within {self.seconds:g} s (call_timeout)", retry_after=self.seconds)
        if "error" in box:
            raise box["error"]
        return box["value"]
