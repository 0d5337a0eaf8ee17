"""`fleet bench`'s run: the sizes (full or `--quick`), each section wanted in turn (one
broken section does not hide the others), the targets, the tables, the figures as JSON."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.testing.bench.cloud import section_cloud
from fleet.testing.bench.containers import section_containers
from fleet.testing.bench.controlplane import control_plane, memory_clusters
from fleet.testing.bench.measure import machine
from fleet.testing.bench.report import SECTIONS, failed_targets, render, targets
from fleet.testing.bench.scaling import section_convergence, section_running
from fleet.testing.bench.sweep import section_sweep
from fleet.testing.bench.throughput import section_throughput


@dataclass
class Sizes:
    converge: tuple[int, ...] = (5000, 50_000)
    running: tuple[int, int, int] = (4, 1000, 5)  # local workers, memory workers, runs of each
    sweep: tuple[tuple[int, int], ...] = ((1000, 10), (10_000, 10), (100_000, 10), (100_000, 100))
    scale_requests: int = 3000
    cloud: int = 1000
    containers: int = 20
    skip: dict[str, str] = field(default_factory=dict)

    @classmethod
    def quick(cls, only: tuple[str, ...]) -> Sizes:
        skip = {} if only else {"cloud": "--quick without --only cloud",
                                "containers": "--quick without --only containers"}
        return cls(converge=(20, 100), running=(2, 20, 2), sweep=((200, 2), (400, 2), (400, 4)),
                   scale_requests=100, cloud=20, containers=3, skip=skip)


def run_bench(*, quick: bool = False, only: tuple[str, ...] = (), json_path: str | None = None,
              console: Any = None) -> int:
    from rich.console import Console

    console = console or Console()
    err = Console(stderr=True)

    def say(text: str) -> None:
        err.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {text}", highlight=False)

    sizes = Sizes.quick(only) if quick else Sizes()
    wanted = [s for s in SECTIONS if not only or s in only]
    results: dict[str, Any] = {"machine": machine(), "quick": quick, "sections": wanted}
    failed = False
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))

    def guarded(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        nonlocal failed
        if name in sizes.skip:
            results[name] = {"skipped": sizes.skip[name]}
            return
        started = time.perf_counter()
        try:
            results[name] = fn()
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
            failed = True
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            err.print(traceback.format_exc(), highlight=False)
        results[name]["section_seconds"] = round(time.perf_counter() - started, 1)

    def convergence() -> dict[str, Any]:
        with control_plane(work / "cp", memory_clusters({"bench": max(sizes.converge)})) as cp:
            return section_convergence(cp, sizes.converge, say)

    try:
        if "convergence" in wanted:
            guarded("convergence", convergence)
        if "running" in wanted:
            guarded("running", lambda: section_running(work / "running", *sizes.running, say))
        if "throughput" in wanted:
            guarded("throughput", lambda: section_throughput(work, sizes.scale_requests, say))
        if "sweep" in wanted:
            guarded("sweep", lambda: section_sweep(work, sizes.sweep, say))
        if "cloud" in wanted:
            guarded("cloud", lambda: section_cloud(work, sizes.cloud, say))
        if "containers" in wanted:
            guarded("containers", lambda: section_containers(work, sizes.containers, say))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["targets"] = targets(results)
    stuck = failed_targets(results["targets"])
    if stuck:
        failed = True
        err.print("[red]did not converge:[/red] " + "; ".join(t["target"] for t in stuck), highlight=False)
    render(results, console)
    text = json.dumps(results, separators=(",", ":"), default=str)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(text, flush=True)
    return 1 if failed else 0
