"""The console when what it depends on is down, with real parts: a control plane of Celery
worker processes and beat on an embedded redis-server, and the console served by waitress.
Redis is killed (SIGKILL) and started again on the same port; the control-plane processes are
killed. Every answer is timed and read: it says what is down (503), /healthz says it too,
actions fail within seconds with the true reason, a slow action never holds up a page, and the
log gets one line per outage, not a traceback per request."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from fleet.client import masked
from fleet.console.app import ConsoleSettings
from fleet.errors import FleetError
from fleet.testing.plane import Plane, plane
from tests.test_console import Console

TOKEN = "outage-token-3b7"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "s3cr3t-outage-5e1"
CLUSTERS = f"""
[clusters.web]
provider = "memory"
max_workers = 8
[clusters.web.container]
command = ["worker"]
env = {{API_KEY = "{SECRET}"}}
"""
READS = ["/", "/?format=json", "/?partial=1", "/clusters/web", "/clusters/web?format=json",
         "/clusters/web?partial=1", "/clusters/web/events"]


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[Plane]:
    with plane(tmp_path, CLUSTERS, fleet="sweep_interval = 0.5\n") as running:
        yield running


@pytest.fixture
def con(cp: Plane) -> Iterator[Console]:
    c = Console(cp, ConsoleSettings(token=TOKEN))
    yield c
    c.server.close()
    # the replies the actions gave up on are let go now, while Redis still runs (their finalizers
    # unsubscribe; later, with Redis gone, each would fail and log Celery's retry errors)
    gc.collect()


def timed(call: Any, *args: Any, **kw: Any) -> tuple[float, requests.Response]:
    start = time.monotonic()
    answer = call(*args, **kw)
    return time.monotonic() - start, answer


def until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def scale(con: Console, n: int) -> requests.Response:
    return con.post(f"/clusters/web/scale?workers={n}", headers={**BEARER, "Accept": "application/json"})


def test_redis_down_is_said_fast_and_actions_work_again_once_it_is_back(
        cp: Plane, con: Console, caplog: pytest.LogCaptureFixture) -> None:
    until(lambda: con.get("/healthz").status_code == 200, 15, "the console is healthy")
    assert cp.stack.redis is not None and cp.stack.redis.proc is not None
    where = f"Redis at {masked(cp.stack.url)} unreachable"
    caplog.set_level(logging.INFO)
    cp.stack.redis.proc.kill()
    cp.stack.redis.proc.wait(timeout=10)

    slowest = 0.0
    for path in READS:
        took, answer = timed(con.get, path, headers=BEARER)
        slowest = max(slowest, took)
        assert answer.status_code == 503, (path, answer.status_code, answer.text[:300])
        assert where in answer.text and "internal error" not in answer.text, (path, answer.text[:300])
        assert SECRET not in answer.text and took < 3, (path, took)
    page = con.get("/clusters/web", headers=BEARER)
    assert 'id="live"' in page.text  # the outage page tries again by itself
    took, health = timed(con.get, "/healthz")
    assert health.status_code == 503 and where in health.text and took < 3, (health.status_code, health.text, took)
    took, action = timed(scale, con, 3)
    assert action.status_code == 503 and action.json()["error"].startswith(where) and took < 3, (action.text, took)
    print(f"console, Redis down: slowest of {len(READS)} reads {slowest:.2f} s (503), an action {took:.2f} s")

    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in records if r.exc_info], "no traceback in the log"
    assert len([r for r in records if "unreachable" in r.getMessage()]) == 1, [r.getMessage() for r in records]

    cp.stack.redis.restart()
    # actions work again once Redis is back (the control plane reconnects on its own)
    started = time.monotonic()
    while True:
        answer = scale(con, 3)
        if answer.status_code == 200:
            break
        assert "must be restarted" not in answer.text and time.monotonic() - started < 30, answer.text
        time.sleep(0.2)
    assert answer.json()["reply"]["desired"] == 3
    print(f"console, Redis back: an action succeeded {time.monotonic() - started:.1f} s after the restart")
    until(lambda: con.get("/", headers=BEARER).status_code == 200, 15, "the overview answers again")
    until(lambda: con.get("/healthz").status_code == 200, 15, "healthy again")
    assert any("answering again" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.exc_info]


def test_control_plane_down_is_said_and_actions_neither_hang_nor_hold_up_pages(cp: Plane, con: Console) -> None:
    until(lambda: con.get("/healthz").status_code == 200, 15, "the console is healthy")
    for role in list(cp.stack.procs):
        cp.stack.kill(role)
    health = until(lambda: (h := con.get("/healthz")).status_code == 503 and h.text, 15, "/healthz says it")
    assert "no control plane answered" in health
    page = con.get("/", headers=BEARER)
    assert page.status_code == 503 and "no control plane answered" in page.text
    assert 'id="cluster-web"' in page.text  # what Redis holds is still shown, below the message
    as_json = con.get("/?format=json", headers=BEARER)
    assert as_json.status_code == 503 and "no control plane answered" in as_json.json()["error"]
    assert [row["cluster"] for row in as_json.json()["stale"]] == ["web"]

    answers: list[tuple[float, requests.Response]] = []
    threads = [threading.Thread(target=lambda: answers.append(timed(scale, con, 1))) for _ in range(4)]
    for t in threads:
        t.start()
    slowest_read = 0.0
    while any(t.is_alive() for t in threads):  # the pages answer fast while the actions wait
        for path in ("/healthz", "/"):
            took, _ = timed(con.get, path, headers=BEARER)
            slowest_read = max(slowest_read, took)
        time.sleep(0.1)
    for t in threads:
        t.join(timeout=60)
    assert slowest_read < 2, slowest_read
    assert len(answers) == 4
    busy = [(took, a) for took, a in answers if "busy" in a.json()["error"]]
    waited = [(took, a) for took, a in answers if "busy" not in a.json()["error"]]
    assert busy and all(a.status_code == 503 and took < 2 for took, a in busy), [(t, a.text) for t, a in busy]
    for took, a in waited:
        assert a.status_code == 503 and "no control plane answered" in a.json()["error"], a.text
        assert took < 8 + 3, took
    print(f"console, control plane down: {len(busy)} of 4 actions busy in <= {max(t for t, _ in busy):.2f} s, "
          f"{len(waited)} failed in <= {max((t for t, _ in waited), default=0):.1f} s; "
          f"slowest read meanwhile {slowest_read:.2f} s")

    # Redis lost while an action waits: the answer says so, not Celery's "must be restarted"
    queue, queued = cp.config.fleet.public_queue, cp.r.llen(cp.config.fleet.public_queue)
    lost: list[tuple[float, requests.Response]] = []
    waiting = threading.Thread(target=lambda: lost.append(timed(scale, con, 1)))
    waiting.start()
    until(lambda: cp.r.llen(queue) > queued, 10, "the action is sent")
    assert cp.stack.redis is not None and cp.stack.redis.proc is not None
    cp.stack.redis.proc.kill()
    cp.stack.redis.proc.wait(timeout=10)
    waiting.join(timeout=30)
    took, answer = lost[0]
    assert answer.status_code == 503 and answer.json()["error"].startswith(f"Redis at {masked(cp.stack.url)} "
                                                                           "unreachable"), answer.text
    assert took < 8 + 3, took
    cp.stack.redis.restart()  # the console's clients let go of their replies while Redis runs


def test_the_action_timeout_is_configurable_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_CONSOLE_ACTION_TIMEOUT", "3")
    assert ConsoleSettings().action_timeout == 3.0
    for bad in ("soon", "0", "1e9", "nan"):
        monkeypatch.setenv("FLEET_CONSOLE_ACTION_TIMEOUT", bad)
        with pytest.raises(FleetError, match="FLEET_CONSOLE_ACTION_TIMEOUT must be a number of seconds"):
            ConsoleSettings()
