"""`fleet bench` sections 1 and 2: `convergence` (0 -> N -> 0, time per worker beside the
smallest N's, peak memory) and `running` (from `fleet.scale` to every worker running, with
Fleet's default sweep interval, local and memory providers)."""

from __future__ import annotations

import statistics
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleet.testing.bench.controlplane import ControlPlane, control_plane, memory_clusters


def section_convergence(cp: ControlPlane, sizes: tuple[int, ...], say: Callable[[str], None]) -> dict[str, Any]:
    """0 -> N -> 0 for each N, and the time per worker of each, beside the smallest N's."""
    rows = []
    memory: dict[str, Any] = {}
    for n in sizes:
        timeout = 120 + n / 20
        say(f"convergence: N = {n}: scale 0 -> {n} ...")
        up = cp.scale_to("bench", n, timeout)
        if n == max(sizes):
            memory = {"handles": n, "processes": cp.memory()}
        say(f"convergence: N = {n}: scale {n} -> 0 ...")
        down = cp.scale_to("bench", 0, timeout)
        rows.append({"n": n, "up": up, "down": down,
                     "us_per_worker_up": round(up["seconds"] / n * 1e6, 1),
                     "us_per_worker_down": round(down["seconds"] / n * 1e6, 1)})
    first = rows[0]
    for r in rows:
        r["per_worker_ratio_up"] = round(r["us_per_worker_up"] / first["us_per_worker_up"], 2)
        r["per_worker_ratio_down"] = round(r["us_per_worker_down"] / first["us_per_worker_down"], 2)
    memory["peak_kib"] = {role: m.get("VmHWM", 0) for role, m in cp.memory().items()}
    return {"workers": "a control worker (solo pool) and a provider worker (threads pool, the memory provider "
                       "lives in it), one `celery -A tasks worker` subprocess each",
            "sweep_interval": cp.sweep_interval, "rows": rows, "memory": memory}


def section_running(work: Path, local: int, memory: int, repeats: int, say: Callable[[str], None]) -> dict[str, Any]:
    """From `fleet.scale` to every worker running in Redis, with Fleet's default sweep interval:
    `local` workers of the local provider (real processes) and `memory` of the memory provider,
    `repeats` times each (scaled back to 0 in between)."""
    clusters = memory_clusters({"mem": max(memory, 1)}) + textwrap.dedent(f"""
        [clusters.loc]
        provider = "local"
        max_workers = {local}
        [clusters.loc.container]
        command = ["sh", "-c", "exec sleep 600"]
        [clusters.loc.provider_options]
        kill_grace = 1
        """)
    out: dict[str, Any] = {}
    with control_plane(work, clusters, providers=("memory", "local"), sweep_interval=None) as cp:
        for cluster, n in (("loc", local), ("mem", memory)):
            times = []
            for i in range(repeats):
                say(f"running: {cluster} N = {n}: run {i + 1} of {repeats} ...")
                up = cp.scale_to(cluster, n, timeout=60, every=0.005)
                times.append(up["seconds"])
                cp.scale_to(cluster, 0, timeout=60)
            out[cluster] = {"n": n, "seconds": times, "median": round(statistics.median(times), 3),
                            "max": round(max(times), 3)}
        out["sweep_interval"] = cp.sweep_interval
    return out
