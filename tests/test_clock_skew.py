"""Clock skew between control-plane hosts changes nothing (real processes, real local workers).

The control-plane worker and the provider worker run under libfaketime (Debian `faketime`,
installed by the test run), one 90 s ahead of the real time and one 90 s behind, both ways round;
beat and Redis keep the real time. A cluster of local workers is scaled up, one of its workers is
SIGKILLed behind Fleet's back and replaced, and it is scaled down: each step must take as long
as it does without skew (the third case), no worker may ever be launched twice (processes are
counted from /proc/<pid>/environ), and `fleet status` must name both skewed processes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from fleet.testing.plane import Plane, plane
from fleet.testing.system import ensure_debian_packages
from tests.conftest import wait_for

LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
NEEDS = {"faketime": lambda: Path(LIBFAKETIME).exists() and shutil.which("faketime") is not None}
SKEW = 90.0
#: Each step's bound; without skew they take 0.2-1.5 s (sweep_interval 1 s). Before the fix the
#: replacement never came (every sweep dropped), or scale steps waited minutes on held reconciles.
STEP_BOUND = 8.0

CLUSTERS = """
[clusters.web]
provider = "local"
max_workers = 6
[clusters.web.container]
command = ["sh", "-c", "exec sleep 600"]
[clusters.web.provider_options]
kill_grace = 1
"""


def faked(offset: str) -> dict[str, str]:
    return {"LD_PRELOAD": LIBFAKETIME, "FAKETIME": offset}


def processes(fleet_id: str) -> dict[str, list[int]]:
    """handle -> PIDs of the live (not zombie) processes of cluster `web` of fleet `fleet_id`."""
    found: dict[str, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            env = dict(v.split(b"=", 1) for v in Path(entry.path, "environ").read_bytes().split(b"\0") if b"=" in v)
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and env.get(b"FLEET_ID") == fleet_id.encode() and env.get(b"FLEET_CLUSTER") == b"web" \
                and b"FLEET_HANDLE" in env:
            found.setdefault(env[b"FLEET_HANDLE"].decode(), []).append(int(entry.name))
    return found


class Census:
    """Counts the cluster's processes every 20 ms in a thread: the most seen at once, and every
    handle ever seen (a double launch shows as one too many of either)."""

    def __init__(self, fleet_id: str) -> None:
        self.fleet_id = fleet_id
        self.most = 0
        self.doubled: list[str] = []
        self.handles: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            seen = processes(self.fleet_id)
            self.most = max(self.most, len(seen))
            self.doubled += [h for h, pids in seen.items() if len(pids) > 1]
            self.handles |= set(seen)

    @contextmanager
    def running(self) -> Iterator[Census]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=5)


def converge(p: Plane, n: int, what: str) -> float:
    """Seconds until `web` has `n` running workers, as Fleet and /proc both see them."""
    started = time.monotonic()

    def done() -> bool:
        s = p.call("fleet.status", "web")
        return s["desired"] == n and s["running"] == n and s["initializing"] == 0 and s["pending"] == 0 \
            and len(processes(p.fleet_id)) == n

    wait_for(done, timeout=60, interval=0.05, what=what)
    return time.monotonic() - started


def fleet_cli(p: Plane, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleet.cli", *args], env=p.stack.env(), capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("control, provider", [("+90s", "-90s"), ("-90s", "+90s"), (None, None)],
                         ids=["control-ahead", "control-behind", "no-skew"])
def test_a_skew_of_minutes_changes_nothing(tmp_path: Path, control: str | None, provider: str | None) -> None:
    role_env: dict[str, dict[str, str]] = {}
    if control and provider:
        ensure_debian_packages(NEEDS, "the clock-skew tests")
        now = float(subprocess.run([sys.executable, "-c", "import time; print(time.time())"], env={
            **os.environ, **faked(control)}, capture_output=True, text=True, check=True).stdout)
        assert abs(now - time.time() - SKEW * (1 if control.startswith("+") else -1)) < 5, "libfaketime did not work"
        role_env = {"control": faked(control), "worker": faked(provider)}
    with plane(tmp_path, CLUSTERS, fleet="sweep_interval = 1\n", prefix="k", role_env=role_env) as p:
        try:
            with Census(p.fleet_id).running() as census:
                p.call("fleet.scale", "web", 4)
                up = converge(p, 4, "4 running")
                victim = sorted(processes(p.fleet_id))[0]
                (pid,) = processes(p.fleet_id)[victim]
                os.killpg(pid, signal.SIGKILL)  # a managed worker dies behind Fleet's back
                died = time.monotonic()
                wait_for(lambda: victim not in processes(p.fleet_id), timeout=10, what="the victim gone")
                converge(p, 4, "a replacement running")
                replaced = time.monotonic() - died
                p.call("fleet.scale", "web", 1)
                down = converge(p, 1, "1 running")
            print(f"clock skew (control {control or 0}, provider worker {provider or 0}): scale 0 -> 4 in {up:.2f} s, "
                  f"a SIGKILLed worker replaced in {replaced:.2f} s, 4 -> 1 in {down:.2f} s")
            assert census.doubled == [] and census.most <= 4, f"launched twice: {census.doubled}, {census.most} at once"
            assert len(census.handles) == 5, f"4 launched and 1 replacement, not {sorted(census.handles)}"
            for step, took in (("scale up", up), ("replacement", replaced), ("scale down", down)):
                assert took < STEP_BOUND, f"{step} took {took:.1f} s with the clocks {control} / {provider}"
            assert p.stack.check() == []
            check_status(p, control, provider)
        finally:
            for pids in processes(p.fleet_id).values():
                for pid in pids:
                    os.killpg(pid, signal.SIGKILL)


def check_status(p: Plane, control: str | None, provider: str | None) -> None:
    """`fleet status` (and its JSON) names each skewed process, with its offset, measured inside it."""
    shown = json.loads(fleet_cli(p, "status", "web", "--json").stdout)["clock_skew"]
    text = fleet_cli(p, "status", "web")
    if control is None or provider is None:
        assert shown == [] and "clock" not in text.stderr
        return
    offsets = {e["role"]: e["offset"] for e in shown}
    # offset = Redis - host: a host ahead by 90 s is 90 s ahead of Redis's clock
    assert offsets.keys() == {"control", "provider"}, shown
    for role, skew in (("control", control), ("provider", provider)):
        assert abs(offsets[role] + float(skew.rstrip("s"))) < 3, f"{role} measured {offsets[role]} s off, not {skew}"
    assert text.returncode == 0 and text.stderr.count("control-plane process") == 2, text.stderr
    for way in ("ahead of", "behind"):
        assert re.search(rf"\b(89|90|91)\.\d s {way} Redis's", text.stderr), text.stderr




TAKE_OPS = """
import sys, time
import redis
from fleet.limits import Limits
url, fid = sys.argv[1], sys.argv[2]
r = redis.Redis.from_url(url)
limits = Limits(r, url, fid)
for _ in range(10):  # this second's calls, at once
    limits.take_op("p", 10, max_wait=10)
r.rpush(f"fleet:{fid}:burst", 1)
for _ in range(8):  # then 2 a second, well below the rate, for 4 s
    time.sleep(0.5)
    limits.take_op("p", 10, max_wait=10)
print(time.time())
"""


@pytest.mark.parametrize("skew", ["+90s", "-90s"], ids=["ahead", "behind"])
def test_the_shared_call_rate_holds_across_skewed_hosts(skew: str) -> None:
    """A host 90 s off makes a provider's 10 calls of this second (the rate, shared), then 2 a
    second: this host's next 5 calls wait for that second to pass, and no longer. Before, a host
    ahead kept this one waiting for as long as it went on calling (its calls, stamped with its
    clock, stayed "within the last second"), and one behind did not hold this one back at all."""
    from fleet.limits import Limits
    from tests.conftest import REDIS_URL

    ensure_debian_packages(NEEDS, "the clock-skew tests")
    fid = "skew" + os.urandom(4).hex()
    r = redis.Redis.from_url(REDIS_URL)
    with subprocess.Popen([sys.executable, "-c", TAKE_OPS, REDIS_URL, fid], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env={**os.environ, **faked(skew)}) as other:
        try:
            assert r.blpop(f"fleet:{fid}:burst", timeout=60), "the other host made no calls"
            started = time.monotonic()
            limits = Limits(r, REDIS_URL, fid)
            for _ in range(5):
                limits.take_op("p", 10, max_wait=10)
            waited = time.monotonic() - started
            out, err = other.communicate(timeout=30)
        finally:
            other.kill()
            r.delete(f"fleet:{fid}:burst", f"fleet:{fid}:limits:p")
    assert other.returncode == 0, err
    assert abs(float(out) - time.time() - SKEW * (1 if skew.startswith("+") else -1)) < 5  # really skewed
    print(f"5 calls after a host {skew} off made this second's 10: they waited {waited:.2f} s")
    assert 0.5 < waited < 2.0, f"5 calls waited {waited:.2f} s after 10 from a host {skew} off, not about 1 s"


def test_redis_time_and_the_published_offsets() -> None:
    """`fleet.clock.now` is Redis's TIME; a process's report is listed while fresh and dropped
    once stale; a garbled one is dropped too."""
    from fleet import clock
    from tests.conftest import REDIS_URL

    # a database of its own: this process's report target stays the in-process control plane's
    r = redis.Redis.from_url(REDIS_URL, db=14)
    seconds, micros = r.time()
    assert abs(clock.now(r) - (seconds + micros / 1e6)) < 0.05
    fid = "clock" + os.urandom(4).hex()
    key = f"fleet:{fid}:clocks"
    try:
        clock.report(r, fid, "control")
        assert clock.skewed(r, fid) == []  # this host is on time
        (mine,) = clock.skewed(r, fid, limit=-1)
        assert mine["role"] == "control" and abs(mine["offset"]) < 1 and r.ttl(key) > 0
        r.hset(key, mapping={"old/1": json.dumps({"offset": 120.0, "at": clock.now(r) - clock.REPORT_TTL - 1}),
                             "new/2": json.dumps({"offset": -120.0, "at": clock.now(r), "role": "provider"}),
                             "bad/3": "{"})
        assert clock.skewed(r, fid) == [{"process": "new/2", "role": "provider", "offset": -120.0}]
        assert not r.hexists(key, "old/1") and not r.hexists(key, "bad/3")
        assert "120.0 s ahead of Redis's" in clock.describe(clock.skewed(r, fid)[0])
    finally:
        r.delete(key)
