"""A fleet-wide hourly cap holds across control-plane processes: two clusters scale at once on a
real control plane with two provider worker processes, and the committed run rate of the two
(read from Redis ten times a second) never passes the cap, because the check and the claim are
one script; both clusters end "at budget"."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.store import Store
from fleet.testing.plane import plane
from tests.conftest import wait_for

CAP = 5.0
PRICE = 1.0
SLEEPER = json.dumps(["sh", "-c", "exec sleep 600"])


@pytest.fixture
def fleets() -> Iterator[set[str]]:
    """Fleet ids whose local workers, of any cluster (they outlive a failed test's control plane),
    are SIGKILLed at the end."""
    ids: set[str] = set()
    yield ids
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                env = Path(entry.path, "environ").read_bytes().split(b"\0")
                if any(v.startswith(b"FLEET_HANDLE=") for v in env) and \
                        any(v == b"FLEET_ID=" + i.encode() for i in ids for v in env):
                    os.kill(int(entry.name), signal.SIGKILL)


def test_a_fleet_cap_holds_when_two_clusters_scale_at_once(tmp_path: Path, fleets: set[str]) -> None:
    clusters = "".join(f"""
        [clusters.{name}]
        provider = "faulty"
        max_workers = 8
        price_per_hour = {PRICE}
        [clusters.{name}.container]
        command = {SLEEPER}
        [clusters.{name}.provider_options]
        inner = "local"
        inner_options = {{ kill_grace = 1 }}
        slow_seconds = 1.0            # launches stay in flight long enough to overlap
        """ for name in ("a", "b"))
    with plane(tmp_path, clusters, workers=2, fleet=f"""
        sweep_interval = 0.5
        max_hourly_cost = {CAP}
        """) as p:
        fleets.add(p.fleet_id)
        p.wait_ready("worker-2")
        store = Store(p.r, p.fleet_id)
        rates: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                rates.append(sum(c.hourly for c in store.costs(["a", "b"]).values()))
                stop.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            client = p.client()
            sent = [client.send_task("fleet.scale", args=[name, 6]) for name in ("a", "b")]  # at once
            for result in sent:
                assert result.get(timeout=20)["desired"] == 6
            wait_for(lambda: all(p.call("fleet.status", c)["at_budget"] > 0 for c in ("a", "b")), timeout=60,
                     interval=0.2, what="both clusters at budget")
            wait_for(lambda: sum(p.call("fleet.status", c)["running"] for c in ("a", "b")) == 5, timeout=60,
                     interval=0.2, what="five running")
            time.sleep(1.0)  # a few more samples at the cap
        finally:
            stop.set()
            sampler.join()
        assert len(rates) >= 10 and max(rates) <= CAP + 1e-6, max(rates)
        assert rates[-1] == CAP  # the cut filled the cap, no more
        for name in ("a", "b"):
            status = p.call("fleet.status", name)
            assert status["desired"] == 6 and status["budget"]["cap"] == "fleet", status
        events = [{k.decode(): v.decode() for k, v in f.items()}
                  for c in ("a", "b") for _, f in p.r.xrange(p.keys.cluster(c).events)]
        # one launch was cut to the five that fit, the other refused
        assert sorted(e["launched"] for e in events if e["kind"] == "at_budget") == ["0", "5"], events
        for name in ("a", "b"):
            p.call("fleet.scale", name, 0)
        wait_for(lambda: all(p.call("fleet.status", c)["handles"] == 0 for c in ("a", "b")), timeout=120,
                 interval=0.5, what="every cluster at 0")
