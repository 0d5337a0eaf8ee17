"""The local provider under the real control plane, the CLI, the embedded Redis and `fleet demo`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis
from click.testing import CliRunner

from fleet.cli import main
from fleet.embedded import EmbeddedRedis, running_url
from tests.conftest import ROOT, converged, wait_for


def test_a_local_worker_killed_with_sigkill_is_replaced_by_the_sweep(fleet: Any, control_plane: Any) -> None:
    control_plane.send_task("fleet.scale", args=["local", 4]).get(timeout=20)
    wait_for(converged(fleet, "local", 4), what="4 local workers")
    out = ROOT / "local-out"
    handles = set(fleet.store.read("local").handles)
    envs = {h: json.loads(wait_for(lambda h=h: (out / f"{h}.json").exists() and (out / f"{h}.json").read_text(),
                                     what="env file")) for h in handles}
    assert {e["FLEET_WORKERS"] for e in envs.values()} == {"2"}
    provider = fleet.pool.raw("local")
    ref = fleet.pool.cluster("local")
    victim = sorted(handles)[0]
    pid = provider._pid(ref, victim)
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: victim not in fleet.store.read("local").handles and converged(fleet, "local", 4)(),
             timeout=30, what="a replacement")
    assert len(provider.list_workers(ref)) == 2 and victim not in provider.list_workers(ref)
    control_plane.send_task("fleet.scale", args=["local", 0]).get(timeout=20)
    wait_for(converged(fleet, "local", 0), timeout=30, what="0 local workers")
    assert provider.list_workers(ref) == {}


def test_cli_status_clusters_providers_events(fleet: Any, control_plane: Any) -> None:
    runner = CliRunner()
    control_plane.send_task("fleet.scale", args=["single", 2]).get(timeout=20)
    wait_for(converged(fleet, "single", 2), what="2")
    result = runner.invoke(main, ["status", "single", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["cluster"], data["desired"], data["running"], data["handles"], len(data["workers"])) == (
        "single", 2, 2, 2, 2)
    assert {w["status"] for w in data["workers"]} == {"running"}
    assert {w["workers"] for w in data["workers"]} == {1}  # readable names, not the stored w / s
    result = runner.invoke(main, ["status"])
    assert result.exit_code == 0 and "shared" in result.output and "single" in result.output
    assert "memory" in runner.invoke(main, ["clusters"]).output
    providers = runner.invoke(main, ["providers"]).output
    assert "local" in providers and "providers.local:LocalProvider" in providers
    events = runner.invoke(main, ["events", "single"]).output
    assert "desired" in events and "launched" in events
    result = runner.invoke(main, ["status", "nope"])
    assert result.exit_code == 2 and "unknown cluster 'nope'" in result.output
    # a cluster removed from the config while it still had workers: said, since nothing sweeps it
    assert fleet.queries.forgotten_clusters() == {}
    fleet.redis.hset(fleet.store.of("retired").handles, mapping={"h1": "{}", "h2": "{}"})
    try:
        assert fleet.queries.forgotten_clusters() == {"retired": 2}
        result = runner.invoke(main, ["status"])
        assert result.exit_code == 0 and "cluster 'retired' is not in the config" in result.output, result.output
        assert "2 of its handles" in result.output
        assert "retired" not in runner.invoke(main, ["status", "single"]).output
        # dead handles' remains still to kill count too: nothing works them off either
        fleet.redis.hset(fleet.store.of("retired").cleanup, "h3", "{}")
        fleet.redis.hset(fleet.store.of("gone").cleanup, "h4", "{}")
        assert fleet.queries.forgotten_clusters() == {"retired": 3, "gone": 1}
    finally:
        fleet.redis.delete(*(getattr(fleet.store.of(c), k) for c in ("retired", "gone") for k in ("handles", "cleanup")))


def test_cli_scale_waits_until_converged(fleet: Any, control_plane: Any) -> None:
    result = CliRunner().invoke(main, ["scale", "shared", "5", "--wait", "--timeout", "30"])
    assert result.exit_code == 0, result.output
    assert "desired 5" in result.output and "running 5/5" in result.output
    assert converged(fleet, "shared", 5)()
    result = CliRunner().invoke(main, ["scale", "shared", "99"])
    assert result.exit_code == 2 and "ScaleRefused" in result.output


def test_embedded_redis_keeps_its_data_and_stops(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        assert running_url(tmp_path) == server.url
        redis.Redis.from_url(server.url).set("k", "v")
        port = server.port
    assert running_url(tmp_path) is None
    with EmbeddedRedis(tmp_path, port=port) as server:
        assert redis.Redis.from_url(server.url).get("k") == b"v"


def test_fleet_demo_runs_to_success(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    # its own session: on a timeout, its control plane and workers are killed with it
    proc = subprocess.Popen([sys.executable, "-m", "fleet.cli", "demo"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 0, stdout + stderr
    assert "20 jobs processed (0 wrong)" in stdout and "demo succeeded" in stdout
