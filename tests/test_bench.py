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
    assert {"machine", "convergence", "sweep", "throughput", "cloud", "containers", "targets"} <= set(printed)
    row = printed["convergence"]["rows"][0]
    assert {"n", "baseline_seconds", "up", "down", "ratio_up", "ratio_down"} <= set(row)
    assert row["up"]["converged"] and row["down"]["converged"]
    assert {"seconds", "redis_commands", "celery_messages", "provider_calls"} <= set(row["up"])
    assert {"VmHWM", "handles"} <= set(printed["convergence"]["memory"])
    sweeps = printed["sweep"]["rows"]
    assert sweeps and all({"handles", "clusters", "first", "steady", "running"} <= set(r) for r in sweeps)
    assert all(r["running"] == r["handles"] for r in sweeps)
    assert {"requests", "scale_per_second", "noop_per_second"} <= set(printed["throughput"])
    assert "skipped" in printed["cloud"] and "skipped" in printed["containers"]  # heavy: not with --quick
