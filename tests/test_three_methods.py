"""The seeds' promise, end to end: a provider of exactly the three contract methods (run_workers,
worker_status, kill_workers, nothing else overridden) is enough for the control plane to scale a
cluster up, replace a worker killed behind its back, scale down, and live through a loss of
Redis' data without a crash or a double launch.

What three methods cannot give (see docs/provider-guide.md): without `list_workers`, workers
Fleet forgot (Redis lost its data) cannot be found, so they are never adopted: they run on as
orphans, outside Fleet's count, until someone kills them by hand. This module asserts exactly that.

Real parts: a Redis server of this module's own (it is FLUSHALLed), real `sleep` processes as the
workers, a Manager in this process whose work runs inline (every sweep is one the test makes)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fleet import registry
from fleet.config import parse_config
from fleet.embedded import EmbeddedRedis
from fleet.model import LaunchState
from fleet.provider import Cluster, ContainerSpec, Hardware, NoOptions, Provider, ProviderContext, WorkerStatus
from fleet.testing.contract import ProviderContract
from fleet.testing.inline import inline_manager
from fleet.testing.kits import Kit, clusters
from tests.conftest import wait_for, work


class ThreeMethods(Provider[NoOptions]):
    """Exactly the seed contract. Each worker is a real process running the container's command;
    the "cloud" is this class's memory, which outlives the control plane and Redis' data."""

    procs: ClassVar[dict[str, subprocess.Popen[bytes]]] = {}
    launches: ClassVar[dict[str, list[str]]] = {}
    lock: ClassVar[threading.Lock] = threading.Lock()
    #: the test's hook, called as a launch starts (what happens while the cloud call is under way)
    during_launch: ClassVar[Callable[[], None] | None] = None

    def run_workers(self, cluster: Cluster[NoOptions], container: ContainerSpec, hardware: Hardware, count: int,
                    *, launch_id: str) -> list[str]:
        if ThreeMethods.during_launch is not None:
            ThreeMethods.during_launch()
        with self.lock:
            if launch_id not in self.launches:  # idempotent by launch id
                handles = []
                for i, workers in enumerate(cluster.containers_for(count)):
                    handle = f"{launch_id[:12]}-{i}"
                    env = {**os.environ, **container.env, **cluster.identity_env(handle, workers)}
                    self.procs[handle] = subprocess.Popen(list(container.command), env=env, start_new_session=True)
                    handles += [handle] * workers
                self.launches[launch_id] = handles
            return list(self.launches[launch_id])

    def worker_status(self, cluster: Cluster[NoOptions], handles: Sequence[str]) -> dict[str, WorkerStatus]:
        with self.lock:
            return {h: WorkerStatus.RUNNING if h in self.procs and self.procs[h].poll() is None
                    else WorkerStatus.STOPPED for h in handles}

    def kill_workers(self, cluster: Cluster[NoOptions], handles: Sequence[str]) -> dict[str, bool]:
        with self.lock:
            for h in handles:
                proc = self.procs.get(h)
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
            return dict.fromkeys(handles, True)

    @classmethod
    def alive(cls) -> set[str]:
        with cls.lock:
            return {h for h, p in cls.procs.items() if p.poll() is None}

    @classmethod
    def forget(cls) -> None:
        """Kill every process this "cloud" ever started, and forget them."""
        with cls.lock:
            for proc in cls.procs.values():
                if proc.poll() is None:
                    proc.kill()
                proc.wait(10)
            cls.procs.clear()
            cls.launches.clear()
        cls.during_launch = None


class TestThreeMethodsContract(ProviderContract):
    """The provider contract suite holds for it (what needs a list is skipped)."""

    @pytest.fixture
    def kit(self, tmp_path: Path) -> Iterator[Kit]:
        cluster, other = clusters(NoOptions())
        try:
            yield Kit(ThreeMethods(ProviderContext(cluster.fleet_id, tmp_path)), cluster, other,
                      ContainerSpec(command=("sleep", "3600")), {"nope": 1}, "nope")
        finally:
            ThreeMethods.forget()  # it cannot list: its kit kills what it made


def test_the_provider_overrides_the_three_methods_only() -> None:
    mine = {name for name, value in vars(ThreeMethods).items()
            if callable(value) and not name.startswith("__") and name not in ("alive", "forget")}
    assert mine == {"run_workers", "worker_status", "kill_workers"}
    assert all(getattr(ThreeMethods, name) is getattr(Provider, name)
               for name in ("list_workers", "find_launch", "observe", "interruptions", "acknowledge",
                            "launch_batch", "first_check", "listing_grace", "call_timeout"))


@pytest.fixture
def three(tmp_path: Path) -> Iterator[tuple[Any, Any, Any]]:
    """(manager, dispatcher, redis client) of a fleet whose cluster `c` runs on ThreeMethods, on
    a Redis server of its own; every worker process is killed afterwards."""
    registry.register("three", ThreeMethods)
    server = EmbeddedRedis(tmp_path / "redis", persist=False, die_with_parent=True)
    url = server.start()
    config = parse_config({
        "fleet": {"id": "t" + uuid.uuid4().hex[:9], "launch_timeout": 3, "state_dir": str(tmp_path / "state")},
        "providers": {"three": {"ops_per_second": 10000}},
        "clusters": {"c": {"provider": "three", "max_workers": 4, "container": {"command": ["sleep", "3600"]}}},
    }, "<test>")
    m, d = inline_manager(config, url)
    try:
        yield m, d, m.store.r
    finally:
        ThreeMethods.forget()
        server.stop()
        registry.unregister("three")


def sweep(m: Any, d: Any) -> dict[str, Any]:
    report: dict[str, Any] = m.sweeper.sweep_cluster("c")
    work(d)
    return report


def known(m: Any) -> dict[str, str]:
    return {h: r.status.value for h, r in m.store.read("c").handles.items()}


def test_a_three_method_provider_runs_a_cluster_end_to_end(three: tuple[Any, Any, Any]) -> None:
    m, d, r = three
    # scale up: launched, then seen running by the sweep (no follow-up: first_check is 30 s)
    m.api.scale("c", 3)
    work(d)
    sweep(m, d)
    assert list(known(m).values()) == ["running"] * 3
    assert ThreeMethods.alive() == set(known(m)) and len(ThreeMethods.launches) == 1

    # a worker killed behind Fleet's back: seen stopped by its status, pruned, replaced
    victim = sorted(known(m))[0]
    ThreeMethods.procs[victim].send_signal(signal.SIGKILL)
    ThreeMethods.procs[victim].wait(10)
    assert sweep(m, d)["pruned"] == 1
    sweep(m, d)
    assert victim not in known(m) and list(known(m).values()) == ["running"] * 3
    assert ThreeMethods.alive() == set(known(m)) and len(ThreeMethods.launches) == 2  # one launch more, no more

    # scale down: killed through kill_workers, confirmed by worker_status
    m.api.scale("c", 1)
    work(d)
    sweep(m, d)
    assert list(known(m).values()) == ["running"]
    (survivor,) = known(m)
    assert ThreeMethods.alive() == {survivor}

    # Redis loses its data under the running control plane
    r.flushall()
    for _ in range(3):
        report = sweep(m, d)
        assert report["adopted"] == 0 and report["unknown"] == 0, report  # nothing can be listed, nothing found
    assert known(m) == {} and m.store.get_desired("c") is None
    assert len(ThreeMethods.launches) == 2  # nothing launched: the desired number went with the data
    assert m.holds.recovering() > 0  # the sweep saw the epoch change: launches are held
    assert ThreeMethods.alive() == {survivor}  # the forgotten worker runs on, an orphan nobody kills

    # the operator asks again: Fleet launches what it is asked (after the recovery hold), once
    m.api.scale("c", 1)
    work(d)

    def launched() -> bool:
        sweep(m, d)
        return len(ThreeMethods.launches) == 3

    wait_for(launched, timeout=30, what="a launch once the recovery hold is over")
    sweep(m, d)
    assert list(known(m).values()) == ["running"] and survivor not in known(m)
    assert ThreeMethods.alive() == {survivor, *known(m)}  # the orphan beside its replacement
    for _ in range(3):
        sweep(m, d)
    assert len(ThreeMethods.launches) == 3 and survivor not in known(m)  # never adopted, nothing more

    # scale to 0: Fleet kills what it knows; the orphan is left for the operator
    m.api.scale("c", 0)
    work(d)
    sweep(m, d)
    assert known(m) == {} and ThreeMethods.alive() == {survivor}


def test_redis_lost_during_a_launch_keeps_what_the_launch_made(three: tuple[Any, Any, Any]) -> None:
    """The data goes while a run task is in the provider's call: the launch still records its
    handles (and holds launches off), so what it made is known, not an orphan, and nothing is
    launched twice; only the worker from before the loss is forgotten."""
    m, d, r = three
    m.api.scale("c", 1)
    work(d)
    (before,) = known(m)
    first = set(ThreeMethods.launches)
    m.api.scale("c", 2)
    ThreeMethods.during_launch = r.flushall  # under the provider's call
    work(d)
    ThreeMethods.during_launch = None
    (second,) = set(ThreeMethods.launches) - first
    (made,) = ThreeMethods.launches[second]
    for _ in range(3):
        report = sweep(m, d)
        assert report["adopted"] == 0, report
    assert known(m) == {made: "running"}
    assert m.store.get_desired("c").n == 1  # what it knows: the desired number came back from its handles
    assert len(ThreeMethods.launches) == 2  # no launch more
    assert ThreeMethods.alive() == {before, made}  # the one from before the loss: an orphan


def test_a_cancelled_launch_whose_answer_was_lost_is_launched_again_and_killed(three: tuple[Any, Any, Any]) -> None:
    """Without find_launch, Fleet settles a launch cancelled after a run task took it by calling
    run_workers again with the same launch id (idempotent: it makes nothing new) and killing
    what that returns: nothing is left behind."""
    m, d, _ = three
    m.api.scale("c", 2)
    kind, args = d.jobs.popleft()
    assert kind == "reconcile"
    d.do(kind, args)
    kind, (_, launch_id) = d.jobs.popleft()
    assert kind == "run"
    # a run task takes the launch, makes the workers, and dies before it could record them
    assert m.store.claim_launch("c", launch_id).state == "claimed"
    ref = m.pool.cluster("c")
    spec = m.config.spec("c")
    made = set(ThreeMethods(m.pool.raw("three").context).run_workers(ref, spec.container, spec.hardware, 2,
                                                                      launch_id=launch_id))
    assert ThreeMethods.alive() == made
    m.api.scale("c", 0)  # cancelled while claimed: it waits to be settled
    work(d)
    assert m.store.read("c").pending[launch_id].state is LaunchState.CANCELLED

    def settled() -> bool:
        sweep(m, d)  # after launch_timeout the sweep sends the run again: it settles
        return not m.store.read("c").pending and not ThreeMethods.alive()

    wait_for(settled, timeout=30, what="the cancelled launch settled")
    assert len(ThreeMethods.launches) == 1 and known(m) == {}
    kinds = [e["kind"] for e in m.store.events("c", 200)]
    assert "kill" in kinds or "killed" in kinds, kinds


def test_registering_a_provider_in_process() -> None:
    from fleet.errors import ProviderNotFound

    with pytest.raises(TypeError, match="not a fleet Provider"):
        registry.register("nope", object)  # type: ignore[arg-type]
    with pytest.raises(ProviderNotFound):
        registry.provider_class("three")
    registry.register("three", ThreeMethods)
    try:
        assert registry.provider_class("three") is ThreeMethods
        assert registry.available()["three"].value == "tests.test_three_methods:ThreeMethods"
    finally:
        registry.unregister("three")
    with pytest.raises(ProviderNotFound):
        registry.provider_class("three")
