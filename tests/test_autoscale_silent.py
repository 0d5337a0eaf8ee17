"""A worker that does not answer the sweep's inspect in time keeps the load it had: the
autoscaler must not read a late answer as an idle worker and scale down (then up again).

In this process: a Manager over the session's real Redis, the memory provider, and a real
broadcast to the cluster's workers, of which there are none (every one is silent)."""

from __future__ import annotations

import uuid
from typing import Any

from fleet.config import parse_config
from fleet.manager import Manager
from fleet.model import HandleStatus, LaunchRecord, LaunchState
from providers.memory import MemoryProvider
from tests.conftest import REDIS_URL


class Quiet:
    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


def test_a_silent_worker_keeps_its_load_and_is_not_scaled_away() -> None:
    import redis

    fid = "as" + uuid.uuid4().hex[:8]
    config = parse_config({
        "fleet": {"id": fid, "launch_timeout": 600},
        "providers": {"memory": {"ops_per_second": 10000}},
        "clusters": {"auto": {"provider": "memory", "max_workers": 4, "queues": [f"{fid}-jobs"],
                              "autoscale": {"tasks_per_worker": 1, "scale_down_delay": 0, "agreeing_sweeps": 1},
                              "container": {"command": ["worker"]}}},
    }, "<test>")
    client = redis.Redis.from_url(REDIS_URL)
    MemoryProvider.reset()
    manager = Manager(config, client, Quiet(), url=REDIS_URL)  # type: ignore[arg-type]
    store = manager.store
    try:
        spec, ref = config.spec("auto"), manager.pool.cluster("auto")
        lid = uuid.uuid4().hex
        store.r.hset(store.of("auto").pending, lid, LaunchRecord(2, LaunchState.IN_FLIGHT).encode())
        handles = manager.pool.raw("memory").run_workers(ref, spec.container, spec.hardware, 2, launch_id=lid)
        store.record_launch("auto", lid, handles)
        store.set_desired("auto", 2)
        manager.sweeper.sweep_cluster("auto")  # both running; nobody answers: never heard from, 0
        assert store.counts("auto").of(HandleStatus.RUNNING) == 2
        store.set_busy("auto", dict.fromkeys(handles, 1))  # what an earlier sweep heard
        manager.sweeper.sweep_cluster("auto")
        assert {h: r.busy for h, r in store.read("auto").handles.items()} == dict.fromkeys(handles, 1)
        assert store.get_desired("auto").n == 2  # type: ignore[union-attr]  # load 2: no scale-down
    finally:
        MemoryProvider.reset()
        keys = list(client.scan_iter(match=f"fleet:{fid}:*"))
        if keys:
            client.delete(*keys)
