"""`fleet bench` section 3, `throughput`: `fleet.scale` requests per second one and two
control worker processes absorb, beside no-op tasks per second through a Celery app with
Celery's defaults (`fleet.testing.bare`) in the same run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fleet.embedded import die_with_parent
from fleet.testing.bench.controlplane import control_plane, memory_clusters
from fleet.testing.bench.measure import commandstats, delta


def _worker_rate(results: list[Any]) -> float:
    """Tasks per second the worker finished them at: (n - 1) / (last done - first done), from the
    `date_done` the worker stores with each result (the client's own pace does not count)."""
    from datetime import datetime

    done = []
    for res in results:
        d = res.date_done
        done.append(datetime.fromisoformat(d) if isinstance(d, str) else d)
    span = (max(done) - min(done)).total_seconds()
    return (len(done) - 1) / span if span > 0 else float("inf")


def _burst(client: Any, task: str, args: Callable[[int], list[Any]], m: int, **options: Any) -> tuple[float, float]:
    """Send `m` tasks at once, wait for every result: (the worker's rate, the client's rate)."""
    started = time.perf_counter()
    results = [client.send_task(task, args=args(i), **options) for i in range(m)]
    for res in results:
        res.get(timeout=600)
    return _worker_rate(results), m / (time.perf_counter() - started)


@contextmanager
def bare_worker(url: str, log: Path) -> Iterator[Any]:
    """`celery -A fleet.testing.bare worker` (Celery's defaults: its default pool and concurrency)
    on `url`; yields a client app."""
    from celery import Celery

    env = {**os.environ, "BARE_REDIS_URL": url}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "fleet.testing.bare", "worker",
                                 "--loglevel", "WARNING"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=die_with_parent)
    client = Celery("bare-client", broker=url, backend=url, set_as_current=False)
    client.conf.broker_connection_retry_on_startup = True
    try:
        client.send_task("bare.noop", queue="bare").get(timeout=60)
        yield client
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def section_throughput(work: Path, m: int, say: Callable[[str], None]) -> dict[str, Any]:
    """`m` fleet.scale requests (values 0..4 in turn, so each may change the plan) against one
    cluster, absorbed by one control worker process and then by two; beside them, in the same
    run, `m` no-op tasks through a Celery app with Celery's defaults, and through Fleet's worker."""
    out: dict[str, Any] = {"requests": m}
    clusters = memory_clusters({"burst": 8})
    for processes in (1, 2):
        with control_plane(work / f"throughput-{processes}", clusters, control_workers=processes) as cp:
            say(f"throughput: {m} fleet.scale requests, {processes} control worker(s) ...")
            before = commandstats(cp.r)
            rate, client_rate = _burst(cp.client, "fleet.scale", lambda i: ["burst", i % 5], m)
            cmds = delta(commandstats(cp.r), before)
            row: dict[str, Any] = {"scale_per_second": round(rate, 1), "client_scale_per_second": round(client_rate, 1),
                                   "redis_commands_per_request": round(sum(cmds.values()) / m, 1),
                                   "launch_events": int(cp.r.hget(cp.p.keys.metrics, "events|burst|launch") or 0)}
            if processes == 1:
                say(f"throughput: {m} no-op tasks through Fleet's control worker ...")
                row["fleet_noop_per_second"] = round(_burst(cp.client, "fleet.noop", lambda i: [], m)[0], 1)
                say(f"throughput: {m} no-op tasks through a Celery app with Celery's defaults ...")
                with bare_worker(cp.p.stack.url, work / "bare.log") as bare:
                    out["celery_defaults_noop_per_second"] = round(
                        _burst(bare, "bare.noop", lambda i: [], m, queue="bare")[0], 1)
            out[f"processes_{processes}"] = row
    one = out["processes_1"]["scale_per_second"]
    out["ratio"] = round(one / out["celery_defaults_noop_per_second"], 2)
    out["scale_out"] = round(out["processes_2"]["scale_per_second"] / one, 2)
    return out
