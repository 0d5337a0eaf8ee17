"""`fleet bench --quick` runs end to end and prints its figures as JSON (no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_prints_json_with_every_section(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}  # its own Redis and config
    proc = subprocess.run([sys.executable, "-m", "fleet.cli", "bench", "--quick", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])  # the last line is the JSON
    assert printed == json.loads(out.read_text())
    assert {"machine", "convergence", "running", "sweep", "throughput", "cloud", "containers", "targets"} <= set(printed)
    rows = printed["convergence"]["rows"]
    assert [r["n"] for r in rows] == [20, 100]
    for row in rows:
        assert {"n", "up", "down", "us_per_worker_up", "per_worker_ratio_up", "per_worker_ratio_down"} <= set(row)
        assert row["up"]["converged"] and row["down"]["converged"]
        assert {"seconds", "redis_commands", "celery_messages", "provider_calls"} <= set(row["up"])
    assert set(printed["convergence"]["memory"]["peak_kib"]) == {"control", "worker"}
    running = printed["running"]
    assert running["loc"]["n"] == 2 and len(running["loc"]["seconds"]) == 2 and running["mem"]["median"] > 0
    assert running["sweep_interval"] == 5.0  # Fleet's default: what users get
    sweeps = printed["sweep"]["rows"]
    assert sweeps and all({"handles", "clusters", "first", "steady", "running"} <= set(r) for r in sweeps)
    assert all(r["running"] == r["handles"] for r in sweeps)
    thr = printed["throughput"]
    assert thr["processes_1"]["scale_per_second"] > 0 and thr["processes_2"]["scale_per_second"] > 0
    assert thr["celery_defaults_noop_per_second"] > 0 and thr["ratio"] > 0
    assert "skipped" in printed["cloud"] and "skipped" in printed["containers"]  # heavy: not with --quick
    assert {t["target"].split(":")[0] for t in printed["targets"]} >= {
        ">= 500 fleet.scale/s by one control-plane worker process"}
