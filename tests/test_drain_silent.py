"""A draining Celery worker that does not answer the sweep's inspect in time (busy on a loaded
host; here, deterministically, SIGSTOPped) is not taken for idle: it is killed only once it
answered idle, once its process is gone, or at its drain deadline.

Real parts: the session's Redis, real `celery worker` processes of the demo job app started by
the local provider, a Manager in this process whose work runs inline (fleet.testing.inline), so
every sweep is one the test makes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import Celery

from fleet.provider import Cluster, ProviderContext, WorkerStatus
from fleet.store import per_handle
from providers.local import LocalProvider
from tests.conftest import CELERY_CMD, REDIS_URL, inline, wait_for, work


@contextmanager
def celery_cluster(fid: str, tmp_path: Path, drain_timeout: float) -> Iterator[tuple[Any, Any, str, Celery]]:
    """(manager, dispatcher, queue, job client) of a cluster `c` of real Celery workers that
    consume a queue of their own; every worker process is killed (continued first) afterwards."""
    queue = f"{fid}-jobs"
    command = [queue if arg == "auto-jobs" else arg for arg in CELERY_CMD]
    m, d = inline(fid, {"c": {"provider": "local", "provider_options": {"kill_grace": 1}, "max_workers": 2,
                              "queues": [queue], "drain_timeout": drain_timeout,
                              "container": {"command": command}}}, tmp_path)
    jobs = Celery("test-jobs", broker=REDIS_URL, backend=REDIS_URL, set_as_current=False)
    lp = LocalProvider(ProviderContext(fid, tmp_path))
    ref = Cluster(fid, "c", 1, lp.options_model())
    try:
        yield m, d, queue, jobs
    finally:
        left = lp.list_workers(ref)
        for pid in pids(fid, left):
            signal_group(pid, signal.SIGCONT)
        if left:
            lp.kill_workers(ref, list(left))
        jobs.close()


def pids(fid: str, handles: Any) -> list[int]:
    """The process-group leaders of `handles` (the local provider's processes), from /proc."""
    wanted = {f"FLEET_HANDLE={h}".encode() for h in handles}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = set(Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"))
            leader = os.getpgid(int(entry)) == int(entry)
        except OSError:
            continue
        if leader and f"FLEET_ID={fid}".encode() in env and env & wanted:
            found.append(int(entry))
    return found


def signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def status(m: Any, handle: str) -> str | None:
    rec = m.store.read("c").handles.get(handle)
    return None if rec is None else rec.status.value


def busy_draining_worker(fid: str, m: Any, d: Any, queue: str, jobs: Celery, seconds: float,
                         stop_first: bool = False) -> tuple[str, int, Any]:
    """One worker, answering, with a job of `seconds` in hand, then draining (scaled to 0, told
    to stop consuming): (handle, its pid, the job's result). `stop_first`: SIGSTOPped before
    its drain starts (it cannot answer the drain either); else after."""
    m.api.scale("c", 1)
    work(d)
    (handle,) = m.store.read("c").handles
    probe = m.celery.probe(m.config.spec("c"))
    wait_for(lambda: handle in probe.activity([handle]).hostnames, timeout=60, what="the worker answers")
    job = jobs.send_task("demo.sleep", args=[seconds, "long"], queue=queue)
    wait_for(lambda: probe.activity([handle]).of(handle) == 1, timeout=30, what="the job in hand")
    m.sweeper.sweep_cluster("c")
    work(d)
    assert m.store.read("c").handles[handle].busy == 1  # heard: it holds one
    (pid,) = pids(fid, [handle])
    if stop_first:
        os.killpg(pid, signal.SIGSTOP)
    m.api.scale("c", 0)
    work(d)
    assert status(m, handle) == "draining"
    assert m.celery.start_drain("c", [handle]) == {"handles": 1}
    if not stop_first:
        os.killpg(pid, signal.SIGSTOP)
    return handle, pid, job


def alive(m: Any, handle: str) -> bool:
    provider = m.pool.raw("local")
    return provider.worker_status(m.pool.cluster("c"), [handle])[handle] is WorkerStatus.RUNNING


def test_a_silent_busy_draining_worker_is_not_killed_until_it_answers_idle(fid: str, tmp_path: Path, r: Any) -> None:
    with celery_cluster(fid, tmp_path, drain_timeout=300) as (m, d, queue, jobs):
        # stopped before its drain starts: it can answer neither the drain nor the sweeps
        handle, pid, job = busy_draining_worker(fid, m, d, queue, jobs, seconds=15.0, stop_first=True)
        stopped = time.monotonic()
        later = jobs.send_task("demo.sleep", args=[0.1, "later"], queue=queue)
        for sweep in range(3):
            report = m.sweeper.sweep_cluster("c")
            work(d)
            assert report["drained"] == 0, (sweep, report)
            assert status(m, handle) == "draining", sweep  # not taken for idle
            assert alive(m, handle)
            assert m.store.read("c").handles[handle].busy == 1  # it keeps what it was last heard holding
        silent = time.monotonic() - stopped
        os.killpg(pid, signal.SIGCONT)  # it reads the drain's cancel now, while its job still runs
        assert job.get(timeout=60)["handle"] == handle  # the job finished on that worker
        resumed = time.monotonic()

        def gone() -> bool:
            m.sweeper.sweep_cluster("c")
            work(d)
            return handle not in m.store.read("c").handles

        wait_for(gone, timeout=60, what="killed once it answered idle")
        print(f"silent for 3 sweeps ({silent:.1f} s) without a kill; killed {time.monotonic() - resumed:.1f} s "
              "after its job ended")
        kinds = [e["kind"] for e in per_handle(m.store.events("c", 1000)) if e.get("handle") == handle]
        assert "drained" in kinds and "drain_timeout" not in kinds, kinds
        assert not pids(fid, [handle])
        # it took no new job while draining, though it had missed the drain's own inspect
        assert not later.ready() and r.llen(queue) == 1
        r.delete(queue)


def test_a_silent_draining_worker_whose_process_is_gone_is_cleaned_up(fid: str, tmp_path: Path) -> None:
    with celery_cluster(fid, tmp_path, drain_timeout=300) as (m, d, queue, jobs):
        handle, pid, _ = busy_draining_worker(fid, m, d, queue, jobs, seconds=30.0)
        m.sweeper.sweep_cluster("c")
        work(d)
        assert status(m, handle) == "draining"
        os.killpg(pid, signal.SIGKILL)  # its process dies (a crash, the host lost)
        report = m.sweeper.sweep_cluster("c")  # the provider says stopped: it leaves at once
        work(d)
        assert report["pruned"] == 1, report
        assert handle not in m.store.read("c").handles
        assert not pids(fid, [handle])


def test_a_silent_draining_worker_is_killed_at_its_drain_deadline(fid: str, tmp_path: Path) -> None:
    with celery_cluster(fid, tmp_path, drain_timeout=6) as (m, d, queue, jobs):
        handle, _, _ = busy_draining_worker(fid, m, d, queue, jobs, seconds=60.0)
        until = m.store.read("c").handles[handle].drain_until
        sweeps = 0

        def stopping() -> bool:
            nonlocal sweeps
            sweeps += 1
            m.sweeper.sweep_cluster("c")
            if status(m, handle) == "draining":
                assert time.time() < until + 3, "past its deadline, still draining"
                return False
            return True

        wait_for(stopping, timeout=60, what="killed at its deadline")
        assert time.time() >= until  # not before
        assert sweeps > 1
        events = [e for e in per_handle(m.store.events("c", 1000)) if e.get("handle") == handle]
        assert [e["kind"] for e in events if e["kind"] in ("drained", "drain_timeout")] == ["drain_timeout"]
        work(d)  # the kill: SIGTERM, then SIGKILL after kill_grace (a stopped process ignores SIGTERM)
        m.sweeper.sweep_cluster("c")
        assert handle not in m.store.read("c").handles
        assert not pids(fid, [handle])
