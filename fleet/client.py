"""The public tasks, sent as a plain Celery client, exactly what any other service would send:
what the CLI and the console use. A failure is a FleetError with a short message: the control
plane's own typed error (its class name and message), no answer in time, or no broker."""

from __future__ import annotations

import threading
from typing import Any

from fleet.errors import FleetError


def refused(exc: BaseException) -> str:
    """What to tell a person when Redis refused a command (its disk full, its memory full, ...)."""
    text = str(exc)[:300]
    if "MISCONF" in text:
        return f"Redis refuses writes: {text} (is the disk of its data folder full? it serves again once there is room)"
    if text.startswith("OOM"):
        return f"Redis refuses writes: {text} (its maxmemory is reached)"
    return f"Redis refused the request: {text}"


def masked(url: str) -> str:
    """A Redis URL fit to print: its password, if any, replaced by ***."""
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url, mask="***"))


class PublicTasks:
    """One Celery client for `url`, built on first use. `call` is safe from several threads: the
    calls take turns, because Celery's Redis result consumer is not thread-safe."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url
        self.timeout = timeout
        self._app: Any = None
        self._lock = threading.Lock()

    @property
    def app(self) -> Any:
        if self._app is None:
            from celery import Celery

            self._app = Celery("fleet-client", broker=self.url, backend=self.url, set_as_current=False)
        return self._app

    def call(self, task: str, *args: Any) -> Any:
        """Send `task` with `args` and wait for its reply."""
        from celery.exceptions import TimeoutError as CeleryTimeout
        from kombu.exceptions import OperationalError

        with self._lock:
            try:
                return self.app.send_task(task, args=list(args)).get(timeout=self.timeout)
            except CeleryTimeout:
                raise FleetError(f"no control plane answered within {self.timeout:g} s: is `fleet up` running?") \
                    from None
            except OperationalError as exc:
                if "MISCONF" in str(exc) or str(exc).startswith("OOM"):
                    raise FleetError(refused(exc)) from None
                raise FleetError(f"cannot reach the broker at {masked(self.url)}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - the control plane's typed error, rebuilt by Celery
                raise FleetError(f"{type(exc).__name__}: {exc}") from None
