"""Metrics counted by the running control plane, and Flower working out of the box with the app."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fleet.embedded import free_port
from fleet.metrics import registry_for
from fleet.testing.plane import plane
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


def listening(port: int) -> set[str]:
    """The local addresses with a socket listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_flower_listens_on_loopback_with_basic_auth_and_shows_fleet_tasks(tmp_path: Path) -> None:
    """Flower as the README runs it (no --address) against a control plane as `fleet up` runs it:
    loopback only, as its log says. Its REST API takes basic auth (`--basic-auth`, curl -u): 401
    without, the tasks by name with. Task events are off by default (`fleet.task_events`), and
    Flower switches them on in the workers it sees."""
    import base64
    import secrets

    with plane(tmp_path, """
        [clusters.single]
        provider = "memory"
        max_workers = 2
        [clusters.single.container]
        command = ["worker"]
        """) as p:
        port = free_port()
        password = secrets.token_hex(8)
        env = {k: v for k, v in p.stack.env().items() if not k.startswith("FLOWER_")}
        flower = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasks", "flower", f"--port={port}",
                                   f"--basic-auth=fleet:{password}", f"--db={tmp_path / 'flower.db'}"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        auth = {"Authorization": "Basic " + base64.b64encode(f"fleet:{password}".encode()).decode()}
        try:
            def api(path: str, headers: dict[str, str] = auth) -> Any:
                request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
                try:
                    with urllib.request.urlopen(request, timeout=5) as resp:
                        return json.loads(resp.read())
                except urllib.error.HTTPError as exc:
                    return exc.code
                except OSError:
                    return None

            wait_for(lambda: isinstance(api("/api/workers?refresh=1"), dict), timeout=30, what="flower up")
            assert listening(port) == {"0100007F"}  # 127.0.0.1 only: not 0.0.0.0, not [::]
            assert api("/api/tasks", headers={}) == 401

            def shown() -> list[Any]:  # until Flower has switched the workers' task events on
                p.call("fleet.status", "single")
                time.sleep(0.5)
                return [t for t in (api("/api/tasks") or {}).values() if t.get("name") == "fleet.status"]

            tasks = wait_for(shown, timeout=45, interval=0.5, what="fleet.status in flower")
            assert tasks[0]["args"] == "['single']"  # readable, and nothing secret travels in arguments
        finally:
            os.killpg(flower.pid, signal.SIGKILL)  # its whole process group (its own session), stuck or not
            flower.wait(timeout=20)
