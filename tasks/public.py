"""Public tasks, sent by name from any service: `send_task("fleet.scale", args=["demo", 4])`.

They take and return JSON only. Bad input raises a typed `fleet.errors.InvalidRequest` (the caller
sees an exception of that name and message) and changes nothing. The logic is
`fleet.control.api.FleetAPI`.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from fleet.errors import FleetError
from tasks.app import app, manager


class Public(Task):
    """A public task: admitted first (`fleet.requests`: its fleet, its deadline), then run."""

    mutating = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        manager().api.admit(self.name, request.id, request.__dict__, args, self.mutating)
        answer = super().__call__(*args, **kwargs)
        if self.mutating:  # answer only once a replica has the change (none: nothing to wait for)
            manager().api.confirm_replicated()
        return answer


@app.task(name="fleet.scale", base=Public, throws=(FleetError,))
def scale(cluster: Any, workers: Any) -> dict[str, Any]:
    """Set the desired number of workers of `cluster`; returns {cluster, desired, version}."""
    return manager().api.scale(cluster, workers)


@app.task(name="fleet.clear", base=Public, throws=(FleetError,))
def clear(cluster: Any) -> dict[str, Any]:
    """Forget `cluster`'s permanent provider error and quota hold, so that it launches again."""
    return manager().api.clear(cluster)


@app.task(name="fleet.hold", base=Public, throws=(FleetError,))
def hold(cluster: Any, handle: Any, hold: Any = True) -> dict[str, Any]:
    """Never kill `handle` automatically (hold=False releases it)."""
    return manager().api.hold(cluster, handle, hold)


@app.task(name="fleet.drain_handle", base=Public, throws=(FleetError,))
def drain_handle(cluster: Any, handle: Any) -> dict[str, Any]:
    """Drain `handle` (stop consuming, finish its tasks, then go); it is replaced."""
    return manager().api.drain_handle(cluster, handle)


@app.task(name="fleet.kill_handle", base=Public, throws=(FleetError,))
def kill_handle(cluster: Any, handle: Any) -> dict[str, Any]:
    """Kill `handle` now, held or not; it is replaced."""
    return manager().api.kill_handle(cluster, handle)


@app.task(name="fleet.rollout", base=Public, throws=(FleetError,))
def rollout(cluster: Any, action: Any = "start") -> dict[str, Any]:
    """The rollout of `cluster`'s outdated workers: `start`, `pause`, `resume` or `status`."""
    return manager().api.rollout(cluster, action)


@app.task(name="fleet.status", base=Public, mutating=False, throws=(FleetError,))
def status(cluster: Any) -> dict[str, Any]:
    """{cluster, desired, initializing, running, stopping, pending, handles, ...} of `cluster`."""
    return manager().api.status(cluster)
