"""A provider endpoint that accepts connections and never answers, behind three EC2 clusters, beside
a healthy cluster, against a real control plane (processes: one worker of 8 threads, as `fleet
up` runs it, and a beat): the healthy cluster's public tasks keep answering at once for more
than a minute (without deadlines they stopped after about 60 s, when the hung sweeps and launches
had taken every thread), and the hung calls surface as typed `ProviderTimeout`s with events."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fleet.testing.plane import plane
from tests.kits.aws import FAKE_ENV

HUNG = ("h1", "h2", "h3")
RUN_FOR = 70.0  # seconds: past the 60 s after which the old control plane ran out of threads


@contextmanager
def hung_endpoint() -> Iterator[int]:
    """A loopback port that accepts every connection and never reads or writes."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(256)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def test_a_hung_provider_never_stalls_other_clusters_or_public_tasks(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in FAKE_ENV.items():
        monkeypatch.setenv(k, v)
    with hung_endpoint() as port:
        hung = "".join(f"""
            [clusters.{name}]
            provider = "aws_ec2"
            max_workers = 4
            [clusters.{name}.container]
            command = ["worker"]
            [clusters.{name}.provider_options]
            ami = "ami-12c6146b"
            region = "us-east-1"
            endpoint_url = "http://127.0.0.1:{port}"
            """ for name in HUNG)
        with plane(tmp_path, hung + """
            [clusters.ok]
            provider = "memory"
            max_workers = 3
            [clusters.ok.container]
            command = ["worker"]
            """, fleet="""
            sweep_interval = 0.5
            [providers.aws_ec2]
            call_timeout = 2
            unresponsive_hold = 5
            [providers.memory]
            ops_per_second = 1000
            """) as p:
            for name in HUNG:  # their launches hang too, not only their sweeps
                assert p.call("fleet.scale", name, 2)["desired"] == 2
            slowest, n, started = 0.0, 0, time.monotonic()
            while time.monotonic() - started < RUN_FOR:
                t0 = time.monotonic()
                assert p.call("fleet.scale", "ok", n % 4, timeout=30)["desired"] == n % 4
                status = p.call("fleet.status", "ok", timeout=30)
                slowest = max(slowest, time.monotonic() - t0)
                n += 1
                time.sleep(0.5)
            print(f"hung provider: {n} scale+status pairs of the healthy cluster in {RUN_FOR:.0f} s, "
                  f"slowest pair {slowest:.2f} s")
            assert slowest < 2.0, f"a public task of the healthy cluster took {slowest:.1f} s"
            p.call("fleet.scale", "ok", 3)
            deadline = time.monotonic() + 20
            while (status := p.call("fleet.status", "ok"))["running"] != 3:
                assert time.monotonic() < deadline, status
                time.sleep(0.2)
            for name in HUNG:
                events = p.r.xrange(p.keys.cluster(name).events)
                timeouts = [e for _, e in events if e[b"kind"] == b"timeout"]
                assert timeouts, f"no timeout event for {name}"
                assert b"within 2 s" in timeouts[0][b"message"]
                # after a timeout its calls are held off, not made again on every sweep
                assert len(timeouts) <= 2 * (RUN_FOR / 5 + 2), len(timeouts)
                shown = p.call("fleet.status", name)
                assert shown["pending"] == 2 and shown["running"] == 0
            assert p.stack.check() == []
    assert os.environ.get("AWS_ACCESS_KEY_ID") == FAKE_ENV["AWS_ACCESS_KEY_ID"]
