"""Two fleets on one Redis server never act on each other's requests (fleet.owner, fleet.requests):
a second fleet's control plane on the same public queue of the same database refuses to start;
a request named for one fleet is refused by any other and changes nothing; and the documented
ways to share a server (a database each, or a public queue each) work, the CLI included. Both
fleets declare the same cluster name. Real redis-server, real Celery worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

from fleet.client import PublicTasks
from fleet.config import load_config
from fleet.errors import FleetError
from fleet.owner import owner_of
from fleet.store import Store
from fleet.testing.fleets import control_plane, redis_server, stack, write_config

CLUSTERS = """
[providers.memory]
ops_per_second = 1000

[clusters.web]
provider = "memory"
max_workers = 10
[clusters.web.container]
command = ["worker"]
"""


def new_fleet(tmp: Path, name: str, fleet: str = "") -> tuple[str, Path]:
    fid = name + uuid.uuid4().hex[:8]
    return fid, write_config(tmp / name, fid, CLUSTERS, fleet)


def on_db(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


def desired(url: str, fid: str) -> int | None:
    d = Store(redis.Redis.from_url(url), fid).get_desired("web")
    return None if d is None else d.n


def run(argv: list[str], env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Run a command in a session of its own; on timeout SIGTERM (a `fleet up` stops what it
    started), then SIGKILL the group: nothing is left behind."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"{argv[2:]} still ran after {timeout} s: {err[-2000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def fleet_cli(path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLEET_CONFIG": str(path), "FLEET_REDIS_URL": url, "FLEET_STATE_DIR": str(path.parent / "state")}
    return run([sys.executable, "-m", "fleet.cli", *args], env)


def test_a_second_fleet_on_the_same_public_queue_refuses_to_start(tmp_path: Path) -> None:
    a_id, a_path = new_fleet(tmp_path, "a")
    _, b_path = new_fleet(tmp_path, "b")
    with redis_server(tmp_path / "redis") as url, control_plane(a_path, url):
        up = fleet_cli(b_path, url, "up")
        lines = [line for line in up.stderr.splitlines() if line.strip()]
        assert up.returncode != 0 and len(lines) == 1, up.stdout + up.stderr
        assert lines[0].startswith("error: ") and repr(a_id) in lines[0] and "'celery'" in lines[0], lines
        # a control-plane worker of B started by hand, as compose starts one: the same line, exit 2
        b = stack(b_path, url)
        worker = run(b.argv("control"), b.env("control"))
        assert worker.returncode == 2, worker.stderr[-2000:]
        last = worker.stderr.strip().splitlines()[-1]
        assert last.startswith("error: fleet") and repr(a_id) in last, worker.stderr[-2000:]
        # A keeps its queue and serves
        assert owner_of(redis.Redis.from_url(url), "celery") == a_id
        scaled = fleet_cli(a_path, url, "scale", "web", "1")
        assert scaled.returncode == 0, scaled.stderr
        assert desired(url, a_id) == 1


def test_a_request_named_for_another_fleet_changes_nothing(tmp_path: Path) -> None:
    """Fleet B on its own database; a request for fleet A reaches it (a client pointed at the
    wrong database). B refuses it, typed, and none of B's keys changes."""
    a_id, _ = new_fleet(tmp_path, "a")
    b_id, b_path = new_fleet(tmp_path, "b")
    with redis_server(tmp_path / "redis") as url:
        url_b = on_db(url, 1)
        r = redis.Redis.from_url(url_b)
        with control_plane(b_path, url_b):
            def snapshot() -> dict[bytes, bytes | None]:
                return {k: r.dump(k) for k in r.scan_iter(f"fleet:{b_id}:*") if not k.endswith(b":clocks")}

            before = snapshot()
            with pytest.raises(FleetError, match="WrongFleet"):
                PublicTasks(url_b, a_id, timeout=30).call("fleet.scale", "web", 3)
            with pytest.raises(FleetError, match="WrongFleet"):
                PublicTasks(url_b, a_id, timeout=30).call("fleet.status", "web")
            assert snapshot() == before
            assert desired(url_b, b_id) is None
            # B serves requests named for it
            assert PublicTasks.of(load_config(b_path), url_b, timeout=30).call("fleet.scale", "web", 2)["desired"] == 2


def test_two_fleets_share_one_redis_server_as_documented(tmp_path: Path) -> None:
    """A on database 0 (queue "celery"); B on database 1; C on database 0 with its own
    `public_queue`. Each serves what its own CLI sends, and a request for A pushed onto C's
    queue is refused by C."""
    a_id, a_path = new_fleet(tmp_path, "a")
    b_id, b_path = new_fleet(tmp_path, "b")
    c_id, c_path = new_fleet(tmp_path, "c", 'public_queue = "fleet-c-requests"\n')
    with redis_server(tmp_path / "redis") as url, control_plane(a_path, url):
        url_b = on_db(url, 1)
        with control_plane(b_path, url_b):
            for path, where, n in ((a_path, url, 2), (b_path, url_b, 3)):
                done = fleet_cli(path, where, "scale", "web", str(n))
                assert done.returncode == 0, done.stderr
            assert (desired(url, a_id), desired(url_b, b_id)) == (2, 3)
            assert desired(url, b_id) is None and desired(url_b, a_id) is None
        with control_plane(c_path, url):
            done = fleet_cli(c_path, url, "scale", "web", "4")
            assert done.returncode == 0, done.stderr
            assert (desired(url, a_id), desired(url, c_id)) == (2, 4)
            with pytest.raises(FleetError, match="WrongFleet"):
                PublicTasks(url, a_id, timeout=30, queue="fleet-c-requests").call("fleet.scale", "web", 5)
            assert (desired(url, a_id), desired(url, c_id)) == (2, 4)
            r = redis.Redis.from_url(url)
            assert (owner_of(r, "celery"), owner_of(r, "fleet-c-requests")) == (a_id, c_id)
