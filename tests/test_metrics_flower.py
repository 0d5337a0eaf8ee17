"""Metrics counted by the running control plane, and Flower working out of the box with the app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fleet.embedded import free_port
from fleet.metrics import registry_for
from tests.conftest import converged, wait_for


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    raise AssertionError(f"no sample {name}{labels}")


def test_metrics_count_what_the_control_plane_did(fleet: Any, control_plane: Any) -> None:
    registry = registry_for(fleet.config, fleet.redis)
    before = generate_latest(registry).decode()
    launches = sample(before, "fleet_launches_total", cluster="shared")
    runs = sample(before, "fleet_provider_operation_seconds_count", provider="memory", op="run")
    control_plane.send_task("fleet.scale", args=["shared", 6]).get(timeout=20)
    wait_for(converged(fleet, "shared", 6), what="6")
    text = generate_latest(registry).decode()
    assert sample(text, "fleet_workers", cluster="shared", state="running") == 6
    assert sample(text, "fleet_handles", cluster="shared", state="running") == 2  # 4 + 2
    assert sample(text, "fleet_desired_workers", cluster="shared") == 6
    assert sample(text, "fleet_launches_total", cluster="shared") == launches + 1
    assert sample(text, "fleet_provider_operation_seconds_count", provider="memory", op="run") >= runs + 1
    assert sample(text, "fleet_time_to_running_seconds_count", cluster="shared") >= 6
    control_plane.send_task("fleet.scale", args=["shared", 0]).get(timeout=20)
    wait_for(converged(fleet, "shared", 0), what="0")
    text = generate_latest(registry).decode()
    assert sample(text, "fleet_kills_total", cluster="shared") >= 2
    assert sample(text, "fleet_workers", cluster="shared", state="running") == 0


def test_flower_shows_fleet_tasks_by_name(fleet: Any, control_plane: Any, tmp_path: Any) -> None:
    port = free_port()
    env = {**os.environ, "FLOWER_UNAUTHENTICATED_API": "true"}
    flower = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasks", "flower", f"--port={port}",
                               "--address=127.0.0.1", f"--db={tmp_path / 'flower.db'}"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def api(path: str) -> Any:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
                    return json.loads(resp.read())
            except OSError:
                return None

        wait_for(lambda: api("/api/workers?refresh=1") is not None, timeout=30, what="flower up")
        time.sleep(1)  # let it subscribe to the events
        control_plane.send_task("fleet.status", args=["single"]).get(timeout=20)
        tasks = wait_for(lambda: [t for t in (api("/api/tasks") or {}).values() if t.get("name") == "fleet.status"],
                         timeout=30, what="fleet.status in flower")
        assert tasks[0]["args"] == "['single']"  # readable, and nothing secret travels in arguments
    finally:
        flower.terminate()
        flower.wait(timeout=20)
