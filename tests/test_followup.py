"""Workers seen running at once (fleet.control.followup): with a sweep interval far longer than
the test, new workers are running in Redis within seconds of `fleet.scale`, and no sweep did it
(the provider was never asked to list); a slow boot is followed with back-off, not a call per
sweep interval's worth of polling. Real processes, real local workers."""

from __future__ import annotations

import time
from pathlib import Path

from fleet.provider import Cluster, ProviderContext
from fleet.testing.plane import Plane, plane
from providers.local import LocalOptions, LocalProvider
from tests.conftest import wait_for

FLEET = """
    sweep_interval = 60             # no sweep during the test: only the follow-ups can see them running
    """


def ops(p: Plane, provider: str) -> dict[str, int]:
    raw = p.r.hgetall(p.keys.metrics)
    prefix = f"op_count|{provider}|"
    return {k.decode()[len(prefix):]: int(v) for k, v in raw.items() if k.decode().startswith(prefix)}


def running(p: Plane, cluster: str) -> int:
    return int(p.call("fleet.status", cluster)["running"])


def test_new_workers_are_running_in_redis_without_a_sweep(tmp_path: Path) -> None:
    with plane(tmp_path, """
        [clusters.web]
        provider = "local"
        max_workers = 4
        [clusters.web.container]
        command = ["sh", "-c", "exec sleep 600"]
        [clusters.web.provider_options]
        kill_grace = 1
        """, fleet=FLEET) as p:
        local = LocalProvider(ProviderContext(p.fleet_id, p.stack.state_dir))
        ref = Cluster(p.fleet_id, "web", 1, LocalOptions(kill_grace=1))
        try:
            started = time.monotonic()
            p.call("fleet.scale", "web", 4)
            wait_for(lambda: running(p, "web") == 4, timeout=20, interval=0.05, what="4 running")
            took = time.monotonic() - started
            print(f"follow-up: 4 local workers running in Redis {took:.2f} s after fleet.scale")
            assert took < 10, took  # the sweep would have taken 60 s
            assert not {"observe", "list"} & set(ops(p, "local"))  # no sweep ran: the follow-up saw them
            assert ops(p, "local")["status"] <= 2
            assert p.r.exists(p.keys.cluster("web").check) == 0  # nothing more to follow
        finally:
            local.kill_workers(ref, list(local.list_workers(ref)))


def test_a_slow_boot_is_followed_with_back_off(tmp_path: Path) -> None:
    with plane(tmp_path, """
        [clusters.slow]
        provider = "memory"
        max_workers = 3
        [clusters.slow.container]
        command = ["worker"]
        [clusters.slow.provider_options]
        boot_seconds = 1.5
        """, fleet=FLEET) as p:
        p.call("fleet.scale", "slow", 3)
        wait_for(lambda: running(p, "slow") == 3, timeout=20, interval=0.05, what="3 running")
        calls = ops(p, "memory")
        # 0.05, 0.1, 0.2, 0.4, 0.8 and 1.6 s later: six checks, the last one sees them running
        assert 4 <= calls["status"] <= 8, calls
        assert not {"observe", "list"} & set(calls)
