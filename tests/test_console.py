"""The web console over HTTP, against a real control plane (Celery worker processes, beat, an
embedded Redis) and the console served by waitress on a free port: every route and action,
bad input answered with a clear error and no state change, authentication, read-only mode, CSRF,
security headers, and no container env value in any answer."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from fleet.cli import main
from fleet.console.app import ConsoleSettings, create_app, serve
from fleet.model import HandleStatus
from fleet.store import Store
from fleet.testing.plane import Plane, plane

SECRET = "s3cr3t-env-value-7f1c"  # a container env value: must never be rendered
CLUSTERS = f"""
[clusters.web]
provider = "memory"
max_workers = 8
[clusters.web.container]
command = ["worker", "--flag"]
env = {{API_KEY = "{SECRET}"}}

[clusters.q]
provider = "memory"
max_workers = 4
queues = ["console-jobs"]
drain_timeout = 30
[clusters.q.container]
command = ["worker"]

[clusters.auto]
provider = "memory"
max_workers = 4
queues = ["console-auto"]
[clusters.auto.autoscale]
scale_down_delay = 0
agreeing_sweeps = 1
[clusters.auto.container]
command = ["worker"]
"""


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    with plane(tmp_path_factory.mktemp("console"), CLUSTERS, fleet="sweep_interval = 0.5\n") as running:
        yield running


class Console:
    """A console app on a free port, and a browser-like session (cookies kept)."""

    def __init__(self, cp: Plane, settings: ConsoleSettings | None = None) -> None:
        self.server = serve(create_app(cp.config, cp.stack.url, settings or ConsoleSettings()), "127.0.0.1", 0)
        threading.Thread(target=self.server.run, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.effective_port}"
        self.s = requests.Session()

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.s.get(self.base + path, timeout=30, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.s.post(self.base + path, timeout=60, **kw)

    def token(self, cluster: str = "web") -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', self.get(f"/clusters/{cluster}").text)
        assert found, "a cluster page carries a CSRF token in its forms"
        return found.group(1)

    def act(self, path: str, **form: Any) -> requests.Response:
        """POST a form as the page does (with its CSRF token), following the redirect back."""
        cluster = path.split("/")[2]
        return self.post(path, data={"csrf_token": self.token(cluster), **form})


@pytest.fixture(scope="module")
def con(cp: Plane) -> Iterator[Console]:
    c = Console(cp)
    yield c
    c.server.close()


def flashes(page: str) -> list[str]:
    return [re.sub(r"&#39;", "'", m) for m in re.findall(r'class="flash[^"]*"[^>]*>([^<]*)<', page)]


def wait_running(cp: Plane, cluster: str, n: int, timeout: float = 30.0) -> None:
    store = Store(cp.r, cp.fleet_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store.summary(cluster).converged_at(n):
            return
        time.sleep(0.1)
    raise AssertionError(f"{cluster} did not reach {n} running: {store.summary(cluster)}")


def state(cp: Plane, cluster: str) -> dict[str, Any]:
    k = cp.keys.cluster(cluster)
    return {key: cp.r.dump(key) for key in (k.desired, k.handles, k.pending)}


def test_pages_and_their_json_agree_with_fleet_status(cp: Plane, con: Console) -> None:
    con.act("/clusters/web/scale", workers="2")
    wait_running(cp, "web", 2)
    page = con.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert 'href="/clusters/web"' in page.text and 'href="/clusters/q"' in page.text
    overview = con.get("/", headers={"Accept": "application/json"})
    assert overview.headers["Content-Type"] == "application/json"
    cli = CliRunner().invoke(main, ["--config", str(cp.stack.config_path), "status", "--json"],
                             env={"FLEET_REDIS_URL": cp.stack.url})
    assert cli.exit_code == 0, cli.output

    def stable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k not in ("rate_limited", "recovering")} for r in rows]
    assert stable(overview.json()) == stable(json.loads(cli.output))
    one = con.get("/clusters/web?format=json").json()
    assert one["cluster"] == "web" and one["running"] == 2 and len(one["workers"]) == 2
    events = con.get("/clusters/web/events?kind=desired").json()
    assert events and {e["kind"] for e in events} == {"desired"}
    filtered = con.get("/clusters/web?kind=launch").text
    table = filtered.split('<table class="events">')[1]
    assert "<td>launch</td>" in table and "<td>desired</td>" not in table  # filtered by kind


def test_scale_hold_drain_and_kill_from_the_console(cp: Plane, con: Console) -> None:
    page = con.act("/clusters/q/scale", workers="3")
    assert page.status_code == 200 and "desired 3 (version" in " ".join(flashes(page.text))
    wait_running(cp, "q", 3)
    store = Store(cp.r, cp.fleet_id)
    a, b, c = sorted(store.read("q").handles)
    assert any("held" in f for f in flashes(con.act(f"/clusters/q/handles/{a}/hold", hold="1").text))
    assert store.read("q").handles[a].hold
    assert 'class="badge">held<' in con.get("/clusters/q").text
    assert any("draining" in f for f in flashes(con.act(f"/clusters/q/handles/{b}/drain").text))
    assert store.read("q").handles[b].status in (HandleStatus.DRAINING, HandleStatus.STOPPING) or \
        b not in store.read("q").handles
    asked = con.act(f"/clusters/q/handles/{c}/kill")  # no confirm=1: a page that asks, nothing killed
    assert "Kill <code>" in asked.text and 'name="confirm" value="1"' in asked.text
    assert not any("killed" in f for f in flashes(asked.text))
    assert store.read("q").handles[c].status is HandleStatus.RUNNING
    as_json = con.post(f"/clusters/q/handles/{c}/kill?format=json", data={"csrf_token": con.token("q")})
    assert as_json.status_code == 400 and "confirm=1" in as_json.json()["error"]
    assert store.read("q").handles[c].status is HandleStatus.RUNNING
    assert any("killed" in f for f in flashes(con.act(f"/clusters/q/handles/{c}/kill", confirm="1").text))
    assert c not in store.read("q").handles or store.read("q").handles[c].status is HandleStatus.STOPPING
    wait_running(cp, "q", 3, timeout=45)  # both replaced (the drained one after its drain_timeout, 30 s)
    assert a in store.read("q").handles and store.read("q").handles[a].hold
    con.act(f"/clusters/q/handles/{a}/hold", hold="0")
    assert not store.read("q").handles[a].hold
    page = con.act("/clusters/q/clear")
    assert "nothing to clear" in " ".join(flashes(page.text))


def test_bad_requests_get_a_clear_error_and_change_nothing(cp: Plane, con: Console) -> None:
    con.act("/clusters/web/scale", workers="2")
    wait_running(cp, "web", 2)
    before = state(cp, "web")
    too_many = con.act("/clusters/web/scale", workers=str(10**9))
    assert too_many.status_code == 200  # the page, shown again, with the error
    assert any("ScaleRefused" in f and "between 0 and 8" in f for f in flashes(too_many.text))
    for odd in ("lots", "²", "٣", "9" * 5000, "-1", "1e3"):
        answer = con.post("/clusters/web/scale?format=json", data={"workers": odd, "csrf_token": con.token()})
        assert answer.status_code == 400 and "whole number" in answer.json()["error"], odd
    word = con.act("/clusters/web/scale", workers="lots")
    assert any("whole number" in f for f in flashes(word.text))
    handle = next(iter(Store(cp.r, cp.fleet_id).read("web").handles))
    odd_hold = con.act(f"/clusters/web/handles/{handle}/hold", hold="banana")
    assert any("hold must be 1" in f for f in flashes(odd_hold.text))
    wrong_method = con.get("/clusters/web/scale?format=json")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    no_csrf = con.post("/clusters/web/scale", data={"workers": "5"})
    assert no_csrf.status_code == 400 and "CSRF token is missing" in no_csrf.text
    forged = con.post("/clusters/web/scale", data={"workers": "5", "csrf_token": "forged"})
    assert forged.status_code == 400 and "CSRF" in forged.text
    unknown_handle = con.act("/clusters/web/handles/nope/kill", confirm="1")
    assert any("no live handle" in f for f in flashes(unknown_handle.text))
    as_json = con.post("/clusters/web/scale?format=json", data={"workers": "-1", "csrf_token": con.token()})
    assert as_json.status_code == 400 and "whole number" in as_json.json()["error"]
    assert state(cp, "web") == before
    for method, path in (("get", "/clusters/nope"), ("get", "/clusters/nope/events"),
                         ("post", "/clusters/nope/scale")):
        answer = getattr(con, method)(path, data={"workers": "1", "csrf_token": con.token()})
        assert answer.status_code == 404 and "unknown cluster" in answer.text
    assert con.get("/nowhere").status_code == 404


def test_authentication_bearer_scripts_and_read_only(cp: Plane) -> None:
    locked = Console(cp, ConsoleSettings(token="let-me-in-42"))
    try:
        assert locked.get("/").status_code == 401
        assert locked.get("/?format=json").json() == {"error": "authentication required"}
        assert locked.get("/static/console.js").status_code == 401
        assert locked.get("/", auth=("fleet", "wrong")).status_code == 401
        assert locked.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert locked.get("/healthz").status_code == 200
        assert locked.get("/", auth=("anyone", "let-me-in-42")).status_code == 200
        before = state(cp, "web")
        assert locked.post("/clusters/web/scale", data={"workers": "3"}).status_code == 401
        assert state(cp, "web") == before
        # a script: the bearer token, no CSRF token (no browser sends that header on its own)
        script = locked.post("/clusters/web/scale", data={"workers": "3"},
                             headers={"Authorization": "Bearer let-me-in-42", "Accept": "application/json"})
        assert script.status_code == 200 and script.json()["reply"]["desired"] == 3
        # basic auth is what a browser resends by itself: it still needs the CSRF token
        browser = locked.post("/clusters/web/scale", data={"workers": "2"}, auth=("x", "let-me-in-42"))
        assert browser.status_code == 400 and "CSRF" in browser.text
    finally:
        locked.server.close()
    wait_running(cp, "web", 3)
    ro = Console(cp, ConsoleSettings(read_only=True))
    try:
        page = ro.get("/clusters/web").text
        assert "read-only" in page and "<form" not in page
        before = state(cp, "web")
        refused = ro.post("/clusters/web/scale?format=json", data={"workers": "1"})
        assert refused.status_code == 403 and "read-only" in refused.json()["error"]
        assert state(cp, "web") == before
    finally:
        ro.server.close()


def test_no_container_env_value_and_security_headers_everywhere(cp: Plane, con: Console) -> None:
    paths = ["/", "/?format=json", "/?partial=1", "/clusters/web", "/clusters/web?format=json",
             "/clusters/web?partial=1", "/clusters/web/events", "/clusters/q", "/clusters/nope"]
    seen = 0
    for path in paths:
        answer = con.get(path)
        assert SECRET not in answer.text, path
        assert answer.headers["X-Frame-Options"] == "DENY" and answer.headers["X-Content-Type-Options"] == "nosniff"
        assert "default-src 'self'" in answer.headers["Content-Security-Policy"]
        seen += 1
    assert "API_KEY=•••" in con.get("/clusters/web").text  # the name is shown, the value is not
    assert 'class="drain"' not in con.get("/clusters/web").text  # no queues: nothing to drain
    assert seen == len(paths)


def test_the_sweep_samples_workers_for_the_chart(cp: Plane, con: Console) -> None:
    store = Store(cp.r, cp.fleet_id)
    deadline = time.monotonic() + 10
    while not store.series("web") and time.monotonic() < deadline:
        time.sleep(0.2)
    samples = store.series("web")
    assert samples and samples[-1][0] <= time.time()
    assert len(samples) == 1 or samples[-1][0] - samples[-2][0] >= 29  # one per 30 s at most
    page = con.get("/").text
    assert "<polyline points=" in page
    # the chart says what it spans: since the first sample (younger than an hour), with its scale
    row = page.split('id="cluster-web"')[1].split("</tr>")[0]
    since = re.search(r'class="since">since (\d\d:\d\d) \((\d+) (s|min)\)<', row)
    first = store.series("web")[0][0]
    assert since and since.group(1) in {time.strftime("%H:%M", time.localtime(first + d)) for d in (0, 1)}, row
    assert 'class="now">now<' in row and 'class="y zero">0<' in row
    running = int(re.search(r'data-field="running">(\d+)<', row).group(1))  # type: ignore[union-attr]
    top = int(re.search(r'class="y top"[^>]*>(\d+)<', row).group(1))  # type: ignore[union-attr]
    assert top >= max(running, 1)


def test_the_autoscaler_line_and_a_request_after_it_are_both_shown(cp: Plane, con: Console) -> None:
    store = Store(cp.r, cp.fleet_id)

    def desired(n: int, what: str) -> None:
        deadline = time.monotonic() + 30
        while (d := store.get_desired("auto")) is None or d.n != n:
            assert time.monotonic() < deadline, f"{what}: desired {d}"
            time.sleep(0.1)

    cp.r.lpush("console-auto", "waiting-1")  # load 1: the autoscaler asks for one worker
    desired(1, "the autoscaler scales up")
    cp.r.delete("console-auto")  # no load: it scales down to 0 at the next sweep
    desired(0, "the autoscaler scales down")
    cp.call("fleet.scale", "auto", 2)  # an operator's request: desired 2, a floor the autoscaler keeps
    try:
        line = re.sub(r"\s+", " ", con.get("/clusters/auto").text.split('class="autoscale">')[1].split("</p>")[0])
        assert "last set desired to 0 (autoscale load=0)" in line, line
        assert "since then desired set to 2 by request" in line and "never goes below 2" in line, line
        assert "Desired now: <b>2</b>" in line, line
    finally:
        cp.call("fleet.scale", "auto", 0)  # no workers left to ask what they hold at each sweep


def test_fleet_console_refuses_a_public_address_without_a_token(cp: Plane, tmp_path: Path) -> None:
    out = CliRunner().invoke(main, ["--config", str(cp.stack.config_path), "console", "--host", "0.0.0.0"],
                             env={"FLEET_REDIS_URL": cp.stack.url, "FLEET_CONSOLE_TOKEN": ""})
    assert out.exit_code == 2 and "FLEET_CONSOLE_TOKEN" in out.output
