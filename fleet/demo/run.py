"""What `fleet demo` does, step by step, on a fresh machine with nothing else running."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter
from importlib.resources import as_file, files
from pathlib import Path

from rich.console import Console

from fleet.config import FleetConfig, load_config
from fleet.connection import connect
from fleet.progress import wait_converged
from fleet.provider import Cluster, ProviderContext
from fleet.registry import provider_class
from fleet.stack import Stack
from fleet.store import Store

CLUSTER = "demo"


def run_demo(*, workers: int = 4, jobs: int = 20, keep: bool = False, console: Console) -> int:
    import os

    from celery import Celery

    started = time.monotonic()
    state_dir = Path(tempfile.mkdtemp(prefix="fleet-demo-"))
    os.environ["FLEET_STATE_DIR"] = str(state_dir)
    os.environ.pop("FLEET_REDIS_URL", None)
    with as_file(files("fleet.demo") / "fleet.toml") as path:
        config_file = state_dir / "fleet.toml"
        shutil.copy(path, config_file)
    config = load_config(config_file)
    log_path = state_dir / "control-plane.log"
    console.rule("[bold]Fleet demo")
    console.print(f"state folder {state_dir}; control-plane log {log_path}")
    ok = False
    with open(log_path, "ab") as log, Stack(config, config_file, log=log) as stack:
        console.print(f"1. embedded Redis at [cyan]{stack.url}[/cyan]; control-plane worker and beat started")
        client = Celery("demo-client", broker=stack.url, backend=stack.url, set_as_current=False)
        state = Store(connect(stack.url), config.fleet.id)
        try:
            reply = client.send_task("fleet.scale", args=[CLUSTER, workers]).get(timeout=60)
            console.print(f"2. send_task('fleet.scale', ['{CLUSTER}', {workers}]) -> {reply}")
            if not wait_converged(state, CLUSTER, 120, console, check=stack.check):
                return 1
            summary = client.send_task("fleet.status", args=[CLUSTER]).get(timeout=30)
            console.print(f"   fleet.status -> desired {summary['desired']}, running {summary['running']}, "
                          f"{summary['handles']} processes of {config.clusters[CLUSTER].workers_per_container} workers")
            console.print(f"3. pushing {jobs} jobs to the queue 'demo-jobs' ...")
            results = [client.send_task("demo.square", args=[i], queue="demo-jobs") for i in range(jobs)]
            done = [r.get(timeout=120) for r in results]
            wrong = [d for d in done if d["result"] != d["x"] ** 2]
            by_handle = Counter(d["handle"] for d in done)
            console.print(f"   {len(done)} jobs processed ({len(wrong)} wrong), by worker process:")
            for handle, n in sorted(by_handle.items()):
                console.print(f"     {handle}: {n} jobs")
            reply = client.send_task("fleet.scale", args=[CLUSTER, 0]).get(timeout=30)
            console.print(f"4. send_task('fleet.scale', ['{CLUSTER}', 0]) -> {reply}")
            if not wait_converged(state, CLUSTER, 120, console, check=stack.check):
                return 1
            launched = sum(1 for e in state.events(CLUSTER, 1000) if e["kind"] == "launched")
            killed = sum(1 for e in state.events(CLUSTER, 1000) if e["kind"] == "killed")
            ok = not wrong and len(done) == jobs
            console.rule("[bold]summary")
            console.print(f"scaled {CLUSTER} 0 -> {workers} -> 0 with {launched} launches and {killed} kills; "
                          f"{len(done)}/{jobs} jobs processed by {len(by_handle)} worker processes; "
                          f"{time.monotonic() - started:.1f} s in all")
        finally:
            _kill_leftovers(config, state_dir)
    if not keep:
        shutil.rmtree(state_dir, ignore_errors=True)
    console.print("[green]demo succeeded[/green]" if ok else "[red]demo failed[/red]")
    return 0 if ok else 1


def _kill_leftovers(config: FleetConfig, state_dir: Path) -> None:
    """Whatever happened, leave no demo worker process behind (through the registry, as the
    control plane finds its providers)."""
    spec = config.spec(CLUSTER)
    cls = provider_class(spec.provider)
    provider = cls(ProviderContext(config.fleet.id, state_dir))
    ref = Cluster(config.fleet.id, CLUSTER, spec.workers_per_container, cls.validate_options(spec.provider_options))
    left = provider.list_workers(ref)
    if left:
        provider.kill_workers(ref, list(left))
