"""The cost of what runs, on a real control plane (real processes, real local workers, a price in
the config): the run rate and the accumulated cost live in Redis, so they survive a restart of
every control-plane process, and a handle's cost is its price x (confirmed stop - launch), which
the confirmed stop puts within one sweep interval (and the kill's grace) of the kill."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleet.cli import main
from fleet.model import HandleRecord
from fleet.testing.plane import plane
from tests.conftest import wait_for

PRICE = 3600.0  # one dollar a second
SWEEP = 0.5


def test_cost_is_price_times_life_across_a_restart_of_the_control_plane(tmp_path: Path,
                                                                        local_fleets: set[str]) -> None:
    with plane(tmp_path, f"""
        [clusters.web]
        provider = "local"
        max_workers = 4
        price_per_hour = {PRICE}
        group = "team-a"
        [clusters.web.container]
        command = ["sh", "-c", "exec sleep 600"]
        [clusters.web.provider_options]
        kill_grace = 1
        """, fleet=f"""
        sweep_interval = {SWEEP}
        """) as p:
        local_fleets.add(p.fleet_id)
        k = p.keys.cluster("web")

        def status() -> dict[str, float]:
            return p.call("fleet.status", "web")  # type: ignore[no-any-return]

        p.call("fleet.scale", "web", 2)
        wait_for(lambda: status()["running"] == 2, timeout=60, what="2 running")
        records = {h.decode(): HandleRecord.decode(v) for h, v in p.r.hgetall(k.handles).items()}
        assert {r.price for r in records.values()} == {PRICE}
        born = [r.born for r in records.values() if r.born is not None]
        assert len(born) == 2
        s = status()
        assert s["hourly_cost"] == 2 * PRICE and s["group"] == "team-a"

        roles = list(p.stack.procs)
        for role in roles:
            p.stack.kill(role, signal.SIGTERM)
        for role in roles:
            p.stack.start_role(role)
        for role in roles:
            if role != "beat":
                p.wait_ready(role, count=2)
        assert status()["hourly_cost"] == 2 * PRICE  # the rate is in Redis: the restart kept it

        asked = float(p.r.time()[0]) + p.r.time()[1] / 1e6
        p.call("fleet.scale", "web", 0)
        wait_for(lambda: p.r.hlen(k.handles) == 0, timeout=60, what="both handles confirmed stopped")
        gone = float(p.r.time()[0]) + p.r.time()[1] / 1e6
        s = status()
        assert s["hourly_cost"] == 0
        least = sum(PRICE * (asked - b) / 3600 for b in born)
        most = sum(PRICE * (gone - b) / 3600 for b in born)
        assert least <= s["cost_total"] <= most, (least, s["cost_total"], most)
        # the confirmed stop comes within a sweep interval of the kill's grace (1 s) after the ask
        assert s["cost_total"] - least <= 2 * PRICE * (1 + 2 * SWEEP + 1) / 3600, (least, s["cost_total"])

        def cli(*args: str) -> str:
            result = CliRunner(env={"FLEET_REDIS_URL": p.stack.url}).invoke(
                main, ["--config", str(p.stack.config_path), *args])
            assert result.exit_code == 0, result.output
            return result.output

        rows = json.loads(cli("cost", "--by", "group", "--json"))["rows"]
        assert [(r["group"], r["hourly_cost"]) for r in rows] == [("team-a", 0)]
        assert rows[0]["cost_total"] == round(s["cost_total"], 6)
        recent = json.loads(cli("cost", "--since", "1h", "--by", "pool", "--json"))["rows"]
        assert sum(r["cost_total"] for r in recent) == pytest.approx(s["cost_total"], abs=1e-5)
        assert "web" in cli("cost") and "so far" in cli("status", "web")
        bad = CliRunner(env={"FLEET_REDIS_URL": p.stack.url}).invoke(
            main, ["--config", str(p.stack.config_path), "cost", "--since", "forever"])
        assert bad.exit_code != 0 and "--since takes a duration" in bad.output
