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
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from fleet.errors import ProviderTimeout

T = TypeVar("T")


class Deadline:
    """Runs one provider's calls, each under a deadline of `seconds`."""

    def __init__(self, provider: str, seconds: float) -> None:
        self.provider = provider
        self.seconds = seconds
        self._abandoned: Counter[str] = Counter()
        self._mutex = threading.Lock()

    def abandoned(self, cluster: str) -> int:
        """Calls of `cluster` that timed out and are still running in this process."""
        with self._mutex:
            return self._abandoned[cluster]

    def call(self, cluster: str, op: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)`, or ProviderTimeout if it has not returned within the deadline."""
        with self._mutex:
            if self._abandoned[cluster]:
                raise ProviderTimeout(
                    f"provider {self.provider!r}: {self._abandoned[cluster]} earlier call(s) for cluster {cluster!r} "
                    f"timed out and have not returned yet; not calling it again until they do",
                    retry_after=self.seconds, held=True)
        done = threading.Event()
        box: dict[str, Any] = {}
        state = {"abandoned": False}

        def target() -> None:
            try:
                box["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller as it is
                box["error"] = exc
            finally:
                with self._mutex:
                    done.set()
                    if state["abandoned"]:
                        self._abandoned[cluster] -= 1

        threading.Thread(target=target, name=f"fleet-{self.provider}-{op}", daemon=True).start()
        if not done.wait(self.seconds):
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
