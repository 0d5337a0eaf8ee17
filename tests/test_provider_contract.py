"""The provider contract suite against every built-in provider, and the local provider's own
guarantees."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from fleet.provider import Cluster, ContainerSpec, Hardware, Provider, ProviderContext, WorkerStatus
from fleet.registry import provider_class
from fleet.testing import Kit, ProviderContract, wait_for

PROVIDERS = ["memory", "local", "docker", "aws_ec2", "aws_ecs", "gce"]


class TestEveryProvider(ProviderContract):
    """The installed contract suite (`fleet.testing.contract`), run against every built-in
    provider with its kit (`tests/kits/`), as a third-party provider's tests run it."""

    @pytest.fixture(params=PROVIDERS)
    def kit(self, request: Any) -> Kit:
        """The kit of one provider, with its real backend running."""
        return request.getfixturevalue(f"{request.param}_kit")


# -- local provider specifics -------------------------------------------------------------

def local(tmp_path: Path, grace: float = 2.0) -> tuple[Provider[Any], Cluster[Any]]:
    cls = provider_class("local")
    return cls(ProviderContext("lp" + uuid.uuid4().hex[:6], tmp_path)), Cluster(
        "lp" + uuid.uuid4().hex[:6], "c", 2, cls.validate_options({"kill_grace": grace}))


def test_local_worker_gets_identity_env_and_expanded_command(tmp_path: Path) -> None:
    provider, cluster = local(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    container = ContainerSpec(command=(sys.executable, "-c",
        "import os,json,sys,time; open(os.environ['OUT']+'/'+os.environ['FLEET_HANDLE'],'w').write(json.dumps([dict(os.environ), sys.argv])); time.sleep(60)",
        "${FLEET_WORKERS}"), env={"OUT": str(out), "EXTRA": "yes"})
    try:
        handles = provider.run_workers(cluster, container, Hardware(), 3, launch_id=uuid.uuid4().hex)
        for h in set(handles):
            env, argv = json.loads(wait_for(lambda h=h: (out / h).exists() and (out / h).read_text(), what="env file"))
            assert env["FLEET_ID"] == cluster.fleet_id and env["FLEET_CLUSTER"] == "c"
            assert env["FLEET_HANDLE"] == h and env["EXTRA"] == "yes"
            assert env["FLEET_WORKERS"] == str(handles.count(h)) == argv[-1]
    finally:
        provider.kill_workers(cluster, list(set(handles)))


def test_local_kill_escalates_to_sigkill_after_grace(tmp_path: Path) -> None:
    provider, cluster = local(tmp_path, grace=0.5)
    container = ContainerSpec(command=(sys.executable, "-c",
        "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"))
    (h,) = set(provider.run_workers(cluster, container, Hardware(), 1, launch_id=uuid.uuid4().hex))
    time.sleep(0.3)  # let it install its handler
    started = time.monotonic()
    assert provider.kill_workers(cluster, [h]) == {h: True}
    assert time.monotonic() - started >= 0.5
    assert provider.worker_status(cluster, [h]) == {h: WorkerStatus.STOPPED}


def test_local_status_guards_against_pid_reuse(tmp_path: Path) -> None:
    provider, cluster = local(tmp_path)
    container = ContainerSpec(command=(sys.executable, "-c", "import time; time.sleep(60)"))
    (h,) = set(provider.run_workers(cluster, container, Hardware(), 1, launch_id=uuid.uuid4().hex))
    provider._pids[h] = os.getpid()  # as if the PID now belonged to an unrelated process
    assert provider.worker_status(cluster, [h]) == {h: WorkerStatus.RUNNING}  # found again by its env
    os.killpg(provider._pids[h], signal.SIGKILL)
    wait_for(lambda: provider.worker_status(cluster, [h]) == {h: WorkerStatus.STOPPED}, what="stopped")
    provider._pids[h] = os.getpid()
    assert provider.worker_status(cluster, [h]) == {h: WorkerStatus.STOPPED}


def test_local_redelivered_launch_does_not_restart_a_dead_worker(tmp_path: Path) -> None:
    provider, cluster = local(tmp_path)
    container = ContainerSpec(command=(sys.executable, "-c", "import time; time.sleep(60)"))
    launch_id = uuid.uuid4().hex
    (h,) = set(provider.run_workers(cluster, container, Hardware(), 1, launch_id=launch_id))
    os.killpg(provider._pid(cluster, h), signal.SIGKILL)
    wait_for(lambda: provider.worker_status(cluster, [h]) == {h: WorkerStatus.STOPPED}, what="stopped")
    assert set(provider.run_workers(cluster, container, Hardware(), 1, launch_id=launch_id)) == {h}
    assert provider.worker_status(cluster, [h]) == {h: WorkerStatus.STOPPED}
    assert provider.list_workers(cluster) == {}
