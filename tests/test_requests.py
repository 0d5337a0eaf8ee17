"""A request its sender was told had failed never happens (fleet.requests): with no control plane
answering, `fleet scale` (CLI), `fleet.client` and a plain Celery client give up on their request;
a control plane started later refuses it (RequestExpired, a `request_expired` event), whatever
its own clock says; and a request a control plane took just before its caller gave up is never
reported "not applied". Real redis-server, real Celery worker processes, libfaketime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout

from fleet.client import PublicTasks, give_up, request_headers
from fleet.config import load_config
from fleet.errors import NoAnswer, NotApplied
from fleet.requests import Gate
from fleet.store import Store
from fleet.testing import wait_for
from fleet.testing.fleets import clock_offset, control_plane, redis_server, skewed, write_config

CLUSTERS = """
[providers.memory]
ops_per_second = 1000

[clusters.web]
provider = "memory"
max_workers = 40
[clusters.web.container]
command = ["worker"]
"""


def fleet(tmp: Path) -> tuple[str, Path]:
    fid = "rq" + uuid.uuid4().hex[:8]
    return fid, write_config(tmp / "fleet", fid, CLUSTERS)


def events(r: redis.Redis, fid: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in Store(r, fid).events("web", 1000) if e["kind"] == kind]


def desired(r: redis.Redis, fid: str) -> int | None:
    d = Store(r, fid).get_desired("web")
    return None if d is None else d.n


def launched(r: redis.Redis, fid: str) -> int:
    """Handles and pending launches of `web`: anything a scale-up started."""
    k = Store(r, fid).of("web")
    return int(r.hlen(k.handles)) + int(r.hlen(k.pending))


def cli_scale(path: Path, url: str, n: int, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLEET_CONFIG": str(path), "FLEET_REDIS_URL": url, "FLEET_REQUEST_TIMEOUT": str(timeout),
           "FLEET_STATE_DIR": str(path.parent / "state")}
    return subprocess.run([sys.executable, "-m", "fleet.cli", "scale", "web", str(n)], env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_a_request_nobody_answered_in_time_is_never_applied(tmp_path: Path) -> None:
    fid, path = fleet(tmp_path)
    config = load_config(path)
    with redis_server(tmp_path / "redis") as url:
        r = redis.Redis.from_url(url)
        # the CLI: exit 2, and it says so
        cli = cli_scale(path, url, 3, timeout=1)
        assert cli.returncode == 2 and "not applied" in cli.stderr, cli.stdout + cli.stderr
        # fleet.client, as the console uses it
        with pytest.raises(NotApplied, match="not applied"):
            PublicTasks.of(config, url, timeout=1).call("fleet.scale", "web", 5)
        # a plain Celery client, as docs/operations.md shows
        app = Celery("plain", broker=url, backend=url, set_as_current=False)
        headers = request_headers(url, fid, timeout=1)
        plain = app.send_task("fleet.scale", args=["web", 7], headers=headers)
        with pytest.raises(CeleryTimeout):
            plain.get(timeout=1)
        assert give_up(url, fid, plain.id, headers)
        assert r.llen("celery") == 3  # all three wait on the queue for a control plane

        with control_plane(path, url):
            wait_for(lambda: len(events(r, fid, "request_expired")) == 3, timeout=60, what="three refusals")
            with pytest.raises(Exception) as refused:  # Celery rebuilds the control plane's class
                plain.get(timeout=30)
            assert type(refused.value).__name__ == "RequestExpired", refused.value
            assert r.llen("celery") == 0
            assert desired(r, fid) is None and launched(r, fid) == 0 and not events(r, fid, "desired")
            assert {e["fate"] for e in events(r, fid, "request_expired")} == {"abandoned"}
            # and the control plane serves a request in time
            reply = PublicTasks.of(config, url, timeout=30).call("fleet.scale", "web", 1)
            assert reply["desired"] == 1
            wait_for(lambda: launched(r, fid) == 1, timeout=60, what="the one worker asked for in time")
            assert [e["n"] for e in events(r, fid, "desired")] == ["1"]


@pytest.mark.parametrize("offset", ["-10m", "+10m"])
def test_expiry_holds_whatever_the_control_planes_clock_says(tmp_path: Path, offset: str) -> None:
    """The control plane's clock 10 minutes behind (it would take an expired request for a fresh
    one by its own clock) or ahead (a fresh one for expired): Redis's time decides, not its."""
    env = skewed(offset)
    seen = clock_offset(env)
    assert abs(abs(seen) - 600) < 60 and (seen < 0) == offset.startswith("-"), f"libfaketime moved the clock by {seen}"
    fid, path = fleet(tmp_path)
    config = load_config(path)
    with redis_server(tmp_path / "redis") as url:
        r = redis.Redis.from_url(url)
        with pytest.raises(NotApplied):
            PublicTasks.of(config, url, timeout=1).call("fleet.scale", "web", 5)
        with control_plane(path, url, env):
            wait_for(lambda: events(r, fid, "request_expired"), timeout=60, what="the expired request's refusal")
            assert desired(r, fid) is None and launched(r, fid) == 0
            reply = PublicTasks.of(config, url, timeout=30).call("fleet.scale", "web", 2)
            assert reply["desired"] == 2
            assert [e["n"] for e in events(r, fid, "desired")] == ["2"]
            assert len(events(r, fid, "request_expired")) == 1


def test_a_request_taken_just_before_its_caller_gave_up_is_not_reported_unapplied(tmp_path: Path) -> None:
    """The control plane's admission step (lua/admit.lua, as a worker runs it on taking the
    message) happens while the caller still waits; the answer does not come in time. The caller
    must not say "not applied": the request is applied once the control plane runs."""
    fid, path = fleet(tmp_path)
    config = load_config(path)
    with redis_server(tmp_path / "redis") as url:
        r = redis.Redis.from_url(url)
        outcome: list[BaseException] = []

        def caller() -> None:
            try:
                PublicTasks.of(config, url, timeout=3).call("fleet.scale", "web", 4)
            except BaseException as exc:  # noqa: BLE001 - examined below
                outcome.append(exc)

        thread = threading.Thread(target=caller)
        thread.start()
        raw = wait_for(lambda: r.lindex("celery", 0), timeout=10, what="the request on the queue")
        headers = json.loads(raw)["headers"]
        Gate(config, Store(r, fid)).admit(headers["task"], headers["id"], headers, ("web", 4))
        thread.join(timeout=30)
        assert not thread.is_alive() and outcome, "the caller neither answered nor gave up"
        assert isinstance(outcome[0], NoAnswer), outcome[0]
        assert "not applied" not in str(outcome[0]) and "may have been applied" in str(outcome[0])
        with control_plane(path, url):
            wait_for(lambda: desired(r, fid) == 4, timeout=60, what="the request taken before to be applied")
            assert not events(r, fid, "request_expired")
