"""The seed's provider semantics, as one suite run against every provider."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from pydantic import ValidationError

from fleet.provider import Cluster, ContainerSpec, Hardware, Provider, ProviderContext, WorkerStatus
from fleet.registry import provider_class
from tests.conftest import wait_for
from tests.kits import Kit

PROVIDERS = ["memory", "local", "docker", "aws_ec2", "aws_ecs", "gce"]


@pytest.fixture(params=PROVIDERS)
def kit(request: Any) -> Kit:
    """The kit of one provider (see tests/kits/), with its real backend running."""
    return request.getfixturevalue(f"{request.param}_kit")


def test_run_returns_one_handle_per_worker_shared_by_container(kit: Any) -> None:
    provider, cluster, container = kit.provider, kit.cluster, kit.container
    handles = provider.run_workers(cluster, container, kit.hardware, 7, launch_id=uuid.uuid4().hex)
    assert len(handles) == 7
    counts = sorted(handles.count(h) for h in set(handles))
    assert counts == [1, 3, 3]  # full containers and at most one partial one


def test_status_is_keyed_by_unique_handle_and_unknown_is_stopped(kit: Any) -> None:
    provider, cluster, container = kit.provider, kit.cluster, kit.container
    handles = provider.run_workers(cluster, container, kit.hardware, 4, launch_id=uuid.uuid4().hex)
    unique = list(dict.fromkeys(handles))
    asked = ["nope-0"] + unique[::-1]
    status = provider.worker_status(cluster, asked)
    assert set(status) == set(asked)
    assert status["nope-0"] == WorkerStatus.STOPPED
    assert all(status[h] in (WorkerStatus.INITIALIZING, WorkerStatus.RUNNING) for h in unique)


def test_is_defaults_follow_worker_status(kit: Any) -> None:
    provider, cluster, container = kit.provider, kit.cluster, kit.container
    handles = list(dict.fromkeys(provider.run_workers(cluster, container, kit.hardware, 2, launch_id=uuid.uuid4().hex)))
    asked = handles + ["nope-1"]
    running, stopped, init = (provider.is_running(cluster, asked), provider.is_stopped(cluster, asked),
                              provider.is_initializing(cluster, asked))
    status = provider.worker_status(cluster, asked)
    for h in asked:
        assert running[h] == (status[h] == WorkerStatus.RUNNING)
        assert stopped[h] == (status[h] == WorkerStatus.STOPPED)
        assert init[h] == (status[h] == WorkerStatus.INITIALIZING)
    assert stopped["nope-1"] and not stopped[handles[0]]


def test_kill_is_idempotent_and_accepts_unknown_handles(kit: Any) -> None:
    provider, cluster, container = kit.provider, kit.cluster, kit.container
    handles = list(dict.fromkeys(provider.run_workers(cluster, container, kit.hardware, 6, launch_id=uuid.uuid4().hex)))
    assert provider.kill_workers(cluster, handles[:1] + ["nope-2"]) == {handles[0]: True, "nope-2": True}
    live = (WorkerStatus.INITIALIZING, WorkerStatus.RUNNING)
    wait_for(lambda: provider.worker_status(cluster, handles[:1]) == {handles[0]: WorkerStatus.STOPPED},
             timeout=15, what="the killed handle to stop")
    assert provider.worker_status(cluster, handles[1:])[handles[1]] in live  # its neighbour lives on
    assert provider.kill_workers(cluster, handles) == {h: True for h in handles}  # again: still a success
    wait_for(lambda: set(provider.worker_status(cluster, handles).values()) == {WorkerStatus.STOPPED},
             timeout=15, what="every handle to stop")


def test_find_launch_finds_what_a_launch_made_and_never_launches(kit: Any) -> None:
    provider, cluster, container = kit.provider, kit.cluster, kit.container
    launch_id = uuid.uuid4().hex
    made = provider.run_workers(cluster, container, kit.hardware, 4, launch_id=launch_id)
    wait_for(lambda: sorted(provider.find_launch(cluster, launch_id) or []) == sorted(made), timeout=15,
             what="the launch found by its launch id")
    before = provider.list_workers(cluster)
    assert provider.find_launch(cluster, uuid.uuid4().hex) == []  # a launch that made nothing
    assert provider.find_launch(kit.other, launch_id) == []  # another fleet's cluster of that name
    assert provider.list_workers(cluster) == before  # and asking launched nothing


def test_same_launch_id_launches_nothing_new(kit: Any) -> None:
    provider, cluster, container = kit.provider, kit.cluster, kit.container
    launch_id = uuid.uuid4().hex
    first = provider.run_workers(cluster, container, kit.hardware, 5, launch_id=launch_id)
    second = provider.run_workers(cluster, container, kit.hardware, 5, launch_id=launch_id)
    assert sorted(first) == sorted(second)
    assert provider.list_workers(cluster) == {h: first.count(h) for h in set(first)}


def test_list_workers_finds_exactly_this_fleet_and_cluster(kit: Any) -> None:
    provider, cluster, container, other = kit.provider, kit.cluster, kit.container, kit.other
    mine = provider.run_workers(cluster, container, kit.hardware, 4, launch_id=uuid.uuid4().hex)
    theirs = provider.run_workers(other, container, kit.hardware, 2, launch_id=uuid.uuid4().hex)
    # a fresh instance (a restarted control plane) must find them from the provider's side
    fresh = type(provider)(provider.context)
    assert fresh.list_workers(cluster) == {h: mine.count(h) for h in set(mine)}
    assert fresh.list_workers(other) == {h: theirs.count(h) for h in set(theirs)}
    # killing one fleet's workers leaves the other's alone
    fresh.kill_workers(cluster, list(set(mine)))
    wait_for(lambda: fresh.list_workers(cluster) == {}, timeout=15, what="an empty list")
    assert set(fresh.list_workers(other) or {}) == set(theirs)


def test_bad_provider_options_are_rejected_clearly(kit: Any) -> None:
    with pytest.raises(ValidationError) as info:
        type(kit.provider).validate_options({**kit.bad_options})
    assert kit.bad_field in str(info.value)
    with pytest.raises(ValidationError, match="no_such_option"):
        type(kit.provider).validate_options({"no_such_option": 1})


# -- local provider specifics -------------------------------------------------------------

def local(tmp_path: Path, grace: float = 2.0) -> tuple[Provider, Cluster]:
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
