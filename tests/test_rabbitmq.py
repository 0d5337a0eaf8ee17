"""A cluster whose workers consume from RabbitMQ (`broker_url = "amqp://..."`): it autoscales from
ready + prefetched (unacked) + active work, and drains before a kill without losing a job, on a
classic and on a quorum queue, through a node restart too.

Real parts: a private `rabbitmq-server` node started by this module (free ports, its own folder;
fleet.testing.backends.rabbitmq), a vhost of its own per test, the session's Redis (the control
plane's own broker, and the jobs' results), real `celery worker` processes (tests/rabbit_jobs.py:
acks_late, prefetch 4, concurrency 1) started by the local provider, and a Manager in this
process whose work runs inline (every sweep is one the test makes)."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from fleet.amqp_management import Depth
from fleet.probe import tally
from fleet.provider import Cluster, ProviderContext
from fleet.store import per_handle
from fleet.testing.backends.rabbitmq import Rabbit, rabbitmq_node
from providers.local import LocalProvider
from tests.conftest import REDIS_URL, inline, wait_for, work
from tests.rabbit_jobs import make_app
from tests.test_drain_silent import pids, signal_group

REPO = Path(__file__).resolve().parent.parent
PREFETCH = 4  # the job app's worker_prefetch_multiplier, at concurrency 1


@pytest.fixture(scope="module")
def rabbit() -> Iterator[Rabbit]:
    """One private node for the module (it takes seconds to start); each test has its own vhost."""
    with rabbitmq_node() as node:
        yield node


@contextmanager
def rabbit_cluster(fid: str, tmp_path: Path, rabbit: Rabbit, queue_type: str = "classic",
                   management: bool = False, **spec: Any) -> Iterator[tuple[Any, Any, Any, str]]:
    """(manager, dispatcher, job app, bookkeeping prefix) of a cluster `c` of real Celery workers
    that consume queue `jobs` of a vhost of their own; every worker process is killed afterwards."""
    queue = "jobs"
    with rabbit.vhost() as vhost:
        env = {"JOBS_BROKER": rabbit.url(vhost), "JOBS_REDIS": REDIS_URL, "JOBS_QUEUE": queue,
               "JOBS_QUEUE_TYPE": queue_type}
        command = [sys.executable, "-m", "celery", "-A", "tests.rabbit_jobs", "worker", "--queues", queue, "--pool",
                   "threads", "--concurrency", "1", "--hostname", "${FLEET_HANDLE}@%h", "--loglevel", "WARNING",
                   "--without-gossip", "--without-mingle"]
        cluster = {"provider": "local", "provider_options": {"kill_grace": 2, "cwd": str(REPO)}, "max_workers": 4,
                   "queues": [queue], "broker_url": rabbit.url(vhost), "drain_timeout": 120,
                   "container": {"command": command, "env": env}, **spec}
        if management:
            cluster["broker_management_url"] = rabbit.management_url
        m, d = inline(fid, {"c": cluster}, tmp_path)
        app = make_app(rabbit.url(vhost), REDIS_URL, queue, queue_type)
        lp = LocalProvider(ProviderContext(fid, tmp_path))
        ref = Cluster(fid, "c", 1, lp.options_model())
        try:
            yield m, d, app, f"{fid}:jobs"
        finally:
            redis.Redis.from_url(REDIS_URL).set(f"{fid}:jobs:release", 1)
            left = lp.list_workers(ref)
            if left:
                lp.kill_workers(ref, list(left))
            app.close()
            redis.Redis.from_url(REDIS_URL).delete(*(f"{fid}:jobs:{key}" for key in ("release", "runs", "done", "log")))


def answering(m: Any, n: int) -> list[str]:
    """Wait until the cluster's `n` workers all answer an inspect; their handles."""
    work_once(m)
    handles = sorted(m.store.read("c").handles)
    assert len(handles) == n, handles
    probe = m.celery.probe(m.config.spec("c"))
    wait_for(lambda: set(probe.activity(handles).hostnames) == set(handles), timeout=60,
             what=f"{n} workers answer")
    return handles


def work_once(m: Any) -> None:
    work(m.celery.dispatcher)


def send(app: Any, prefix: str, n: int) -> list[Any]:
    return [app.send_task("rabbit.block", args=[prefix, f"j{i}"]) for i in range(n)]


def holding(m: Any, handles: list[str], want: dict[str, int]) -> None:
    """Wait until each handle's workers hold (active + reserved) what `want` says."""
    probe = m.celery.probe(m.config.spec("c"))
    wait_for(lambda: {h: probe.activity(handles).of(h) for h in want} == want, timeout=30,
             what=f"workers holding {want}")


def settled(probe: Any, depth: Depth) -> None:
    """Wait until the queue's figures are `depth` (the management API's lag a little)."""
    wait_for(lambda: probe.depth(["jobs"]) == depth, timeout=15, what=f"the queue at {depth}")


def ran_once(prefix: str, n: int) -> dict[str, int]:
    r = redis.Redis.from_url(REDIS_URL)
    wait_for(lambda: len(r.hgetall(f"{prefix}:done")) == n, timeout=90, what=f"{n} jobs done")
    return {k.decode(): int(v) for k, v in r.hgetall(f"{prefix}:runs").items()}


def ran_on(prefix: str, handle: str) -> list[str]:
    """The jobs (tags) that `handle`'s workers ran, a tag per run."""
    log = redis.Redis.from_url(REDIS_URL).lrange(f"{prefix}:log", 0, -1)
    return [tag for tag, by in (entry.decode().split(" ") for entry in log) if by == handle]


def sweep(m: Any, d: Any) -> dict[str, Any]:
    report: dict[str, Any] = m.sweeper.sweep_cluster("c")
    work(d)
    return report


@pytest.mark.parametrize("management", [False, True], ids=["inspect", "management-api"])
def test_autoscaling_counts_prefetched_and_unacked_work(fid: str, tmp_path: Path, rabbit: Rabbit,
                                                        management: bool) -> None:
    autoscale = {"tasks_per_worker": 2, "scale_down_delay": 3600, "agreeing_sweeps": 3}
    with rabbit_cluster(fid, tmp_path, rabbit, management=management, autoscale=autoscale) as (m, d, app, prefix):
        m.api.scale("c", 1)  # a floor of 1
        (handle,) = answering(m, 1)
        send(app, prefix, 8)
        # the one worker holds 1 active + 3 prefetched (unacked); 4 are ready in the queue
        holding(m, [handle], {handle: PREFETCH})
        probe = m.celery.probe(m.config.spec("c"))
        settled(probe, Depth(4, 4) if management else Depth(4))
        report = sweep(m, d)
        # ready 4 + prefetched 3 + active 1 = 8 tasks, 2 a worker: 4 workers (the queue alone: 2)
        assert (report["load"], report["wanted"]) == (8, 4), report
        assert m.store.get_desired("c").n == 4
        assert m.store.read("c").handles[handle].busy == PREFETCH  # a worker holding prefetched work is busy
        handles = answering(m, 4)
        # the ready work moves into the new workers' prefetch: the load stays 8, nothing undercounted
        wait_for(lambda: sum(probe.activity(handles).busy.values()) == 8, timeout=30, what="all 8 held")
        settled(probe, Depth(0, 8) if management else Depth(0))
        report = sweep(m, d)
        assert (report["load"], report["wanted"], m.store.get_desired("c").n) == (8, 4, 4), report
        redis.Redis.from_url(REDIS_URL).set(f"{prefix}:release", 1)
        assert ran_once(prefix, 8) == {f"j{i}": 1 for i in range(8)}


def test_the_management_api_counts_the_prefetched_work_of_a_worker_that_does_not_answer(
        fid: str, tmp_path: Path, rabbit: Rabbit) -> None:
    autoscale = {"tasks_per_worker": 2, "scale_down_delay": 3600, "agreeing_sweeps": 3}
    with rabbit_cluster(fid, tmp_path, rabbit, management=True, autoscale=autoscale) as (m, d, app, prefix):
        m.api.scale("c", 1)
        (handle,) = answering(m, 1)
        (pid,) = pids(fid, [handle])
        os.killpg(pid, signal.SIGSTOP)  # it cannot answer (a loaded host); the broker still delivers
        try:
            send(app, prefix, 8)
            probe = m.celery.probe(m.config.spec("c"))
            settled(probe, Depth(4, 4))  # 4 prefetched into its socket, unacked; 4 ready
            report = sweep(m, d)
            # inspect hears nothing from it (the queue alone says 4): the broker's unacked count does
            assert (report["load"], report["wanted"]) == (8, 4), report
        finally:
            signal_group(pid, signal.SIGCONT)
        redis.Redis.from_url(REDIS_URL).set(f"{prefix}:release", 1)
        assert ran_once(prefix, 8) == {f"j{i}": 1 for i in range(8)}


def status(m: Any, handle: str) -> str | None:
    rec = m.store.read("c").handles.get(handle)
    return None if rec is None else rec.status.value


def draining_with_work(m: Any, d: Any, app: Any, prefix: str) -> tuple[str, list[Any]]:
    """Two workers each holding 1 active + 3 prefetched jobs (2 more ready), then scaled to 1:
    (the draining handle, the 10 jobs' results)."""
    m.api.scale("c", 2)
    handles = answering(m, 2)
    results = send(app, prefix, 10)
    holding(m, handles, dict.fromkeys(handles, PREFETCH))
    sweep(m, d)  # heard busy
    m.api.scale("c", 1)
    work(d)
    (gone,) = [h for h in handles if status(m, h) == "draining"]
    assert m.celery.start_drain("c", [gone]) == {"handles": 1}
    return gone, results


def drained(m: Any, d: Any, handle: str) -> None:
    """Sweep until `handle` is gone, and check it left drained, not at its deadline."""
    def gone() -> bool:
        sweep(m, d)
        return handle not in m.store.read("c").handles

    started = time.monotonic()
    wait_for(gone, timeout=90, what="the drain done")
    print(f"drained {time.monotonic() - started:.1f} s after its jobs were released")
    kinds = [e["kind"] for e in per_handle(m.store.events("c", 1000)) if e.get("handle") == handle]
    assert "drained" in kinds and "drain_timeout" not in kinds, kinds


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_drain_before_kill_loses_no_job(fid: str, tmp_path: Path, rabbit: Rabbit, queue_type: str) -> None:
    with rabbit_cluster(fid, tmp_path, rabbit, queue_type) as (m, d, app, prefix):
        gone, results = draining_with_work(m, d, app, prefix)
        for _ in range(3):  # it holds prefetched work: never idle, never killed
            sweep(m, d)
            assert status(m, gone) == "draining"
            assert m.store.read("c").handles[gone].busy == PREFETCH
        redis.Redis.from_url(REDIS_URL).set(f"{prefix}:release", 1)
        drained(m, d, gone)
        assert ran_once(prefix, 10) == {f"j{i}": 1 for i in range(10)}
        by = [res.get(timeout=30)["handle"] for res in results]
        assert by.count(gone) == PREFETCH  # what it had prefetched, it ran itself; it took nothing more
        assert len(ran_on(prefix, gone)) == PREFETCH


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_a_node_restart_during_a_drain_loses_no_job(fid: str, tmp_path: Path, rabbit: Rabbit,
                                                    queue_type: str) -> None:
    with rabbit_cluster(fid, tmp_path, rabbit, queue_type) as (m, d, app, prefix):
        gone, results = draining_with_work(m, d, app, prefix)
        rabbit.stop()
        started = time.monotonic()
        report = sweep(m, d)  # the workers' broker is down: the sweep goes on, and kills nothing
        print(f"sweep while down: {time.monotonic() - started:.1f} s, {report}")
        assert status(m, gone) == "draining"
        rabbit.start()
        down = time.monotonic() - started
        sweeps = 0

        def heard_again() -> bool:
            """One sweep while the workers reconnect: the draining worker is never killed. Its
            control consumer comes back at some point of a sweep's two questions (active, then
            reserved): answering only the second, with nothing reserved, is not being idle."""
            nonlocal sweeps
            sweep(m, d)
            sweeps += 1
            assert status(m, gone) == "draining", f"killed at sweep {sweeps} after the restart, its job running"
            # heard after its reconnect: its job still runs; what it had prefetched went back to the queue
            return m.store.read("c").handles[gone].busy == 1

        wait_for(heard_again, timeout=60, what="the draining worker heard again")
        sweep(m, d)
        assert status(m, gone) == "draining"  # its job still runs
        redis.Redis.from_url(REDIS_URL).set(f"{prefix}:release", 1)
        drained(m, d, gone)
        runs = ran_once(prefix, 10)
        print(f"{queue_type}: node down {down:.1f} s, {sweeps} sweeps until the draining worker was heard again; "
              f"runs per job: {dict(sorted(runs.items()))}")
        assert set(runs) == {f"j{i}" for i in range(10)}  # no job lost
        # j8 and j9 waited in the queue: exactly once. The 8 the workers held went back to the queue
        # at the restart while Celery still ran (or had queued in its pool) its copies: at most twice.
        assert runs["j8"] == runs["j9"] == 1 and max(runs.values()) <= 2, runs
        assert len(ran_on(prefix, gone)) <= PREFETCH  # after the restart it took no new job
        assert {res.get(timeout=60)["tag"] for res in results} == set(runs)


def test_a_worker_that_answers_one_of_the_two_questions_is_not_heard() -> None:
    """A worker answers `inspect active` and `inspect reserved`, two broadcasts; one that answered
    only one of them is not heard (it would look idle: what it holds is in the other answer)."""
    job = [{"id": "t"}]
    found = tally({"a@h": job, "b@h": [], "c@h": []}, {"a@h": job, "b@h": job, "d@h": []})
    assert (found.busy, found.hostnames) == ({"a": 2, "b": 1}, {"a": ["a@h"], "b": ["b@h"]})
    # a handle one of whose workers answered half is not heard either, even if another answered both
    found = tally({"e@1": [], "e@2": job}, {"e@1": [], "f@1": None})
    assert (found.busy, found.hostnames) == ({}, {})
    assert tally({}, {}).hostnames == {}


@pytest.mark.parametrize(("broker", "management", "says"), [
    (None, "http://mq:15672/", "needs an amqp:// broker_url"),
    ("redis://jobs:6379/0", "http://mq:15672/", "needs an amqp:// broker_url"),
    ("amqp://mq//", "ftp://mq/", "http:// or https://"),
])
def test_a_bad_management_url_is_refused(broker: str | None, management: str, says: str) -> None:
    from fleet.config import parse_config
    from fleet.errors import ConfigError

    cluster = {"provider": "memory", "queues": ["jobs"], "broker_management_url": management,
               "container": {"command": ["worker"]}, **({"broker_url": broker} if broker else {})}
    with pytest.raises(ConfigError, match=says):
        parse_config({"fleet": {"id": "x"}, "clusters": {"c": cluster}})
