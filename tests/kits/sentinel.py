"""A real Redis Sentinel topology on loopback: a primary, one replica (`--replicaof`) and three
`redis-server --sentinel` processes (quorum 2, `down-after-milliseconds 1000`, `failover-timeout
5000`), all on free ports, all stopped when the context ends (and with the test process).

Optionally with passwords: `password` is the data nodes' `requirepass` (and `masterauth`, given to
the sentinels as `sentinel auth-pass`), `sentinel_password` the sentinels' own `requirepass`."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from fleet.embedded import die_with_parent, free_port
from fleet.testing.system import ensure_debian_packages

SERVER = "/usr/bin/redis-server"
MASTER = "fleetmaster"


@dataclass
class Topology:
    """The running processes; `primary`/`replica` are the ports they started as."""

    primary: int
    replica: int
    sentinels: list[int]
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: the data nodes' `requirepass` and the sentinels' (None: none)
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)

    def url(self, db: int = 0) -> str:
        """The `sentinel://` URL naming every sentinel."""
        return ";".join(f"sentinel://127.0.0.1:{port}/{db}" for port in self.sentinels)

    def master_port(self) -> int | None:
        """The port the sentinels name for the master now (None if none answers)."""
        for port in self.sentinels:
            try:
                addr: Any = self.sentinel(port).sentinel_get_master_addr_by_name(MASTER)
            except redis.RedisError:
                continue
            if addr:
                return int(addr[1])
        return None

    def node(self, port: int) -> redis.Redis:
        """A client of the data node on `port` (with its password, if it has one)."""
        return redis.Redis(port=port, password=self.password, socket_timeout=1)

    def sentinel(self, port: int) -> redis.Redis:
        """A client of the sentinel on `port` (with its password, if it has one)."""
        return redis.Redis(port=port, password=self.sentinel_password, socket_timeout=1)

    def kill_primary(self) -> float:
        """SIGKILL the primary; the monotonic time it was sent."""
        proc = self.procs[self.primary]
        proc.send_signal(signal.SIGKILL)
        at = time.monotonic()
        proc.wait(timeout=10)
        return at

    def stall_replica(self, padding: int = 64 * 2**20) -> None:
        """SIGSTOP the replica, then write `padding` bytes (one key) to the primary: more than the
        loopback socket buffers hold, so that every write after it waits in the primary's own
        output buffer (no limit on it here) and dies with the primary if it is killed first."""
        primary = redis.Redis(port=self.primary, password=self.password, socket_timeout=30)
        primary.config_set("client-output-buffer-limit", "replica 0 0 0")
        self.procs[self.replica].send_signal(signal.SIGSTOP)
        primary.set("sentinel-kit:padding", b"x" * padding)

    def resume_replica(self) -> None:
        """SIGCONT the replica (stopped by `stall_replica`)."""
        self.procs[self.replica].send_signal(signal.SIGCONT)

    def wait_promoted(self, timeout: float = 30.0) -> float:
        """Wait until the replica is the master the sentinels name and accepts writes; the time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.master_port() == self.replica:
                try:
                    if self.node(self.replica).info("replication")["role"] == "master":
                        return time.monotonic()
                except redis.RedisError:
                    pass
            time.sleep(0.05)
        raise AssertionError("Sentinel did not promote the replica")


def _wait(client: redis.Redis, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{what} did not start") from None
            time.sleep(0.05)


@contextmanager
def sentinel_topology(tmp_path: Path, *, password: str | None = None,
                      sentinel_password: str | None = None) -> Iterator[Topology]:
    """Start the topology; wait until the replica is in sync and every sentinel knows the others.
    `password`: the data nodes' `requirepass`; `sentinel_password`: the sentinels'."""
    ensure_debian_packages({"redis-server": lambda: shutil.which("redis-server", path="/usr/bin") is not None},
                           "the Sentinel tests")
    procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(port: int, args: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([SERVER, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent)
        procs[port] = proc
        return proc

    def server(port: int, *extra: str) -> list[str]:
        data = tmp_path / f"redis-{port}"
        data.mkdir()
        auth = ["--requirepass", password, "--masterauth", password] if password else []
        return ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(data), *auth, *extra]

    try:
        primary, replica = free_port(), free_port()
        topology = Topology(primary, replica, [], procs, password, sentinel_password)
        _wait(topology.node(primary), start(primary, server(primary)), "the primary")
        _wait(topology.node(replica), start(replica, server(replica, "--replicaof", "127.0.0.1", str(primary))),
              "the replica")
        sentinels = topology.sentinels
        for _ in range(3):
            port = free_port()
            conf = tmp_path / f"sentinel-{port}.conf"  # Sentinel rewrites its file: one each
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                            f"sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n"
                            f"sentinel down-after-milliseconds {MASTER} 1000\n"
                            f"sentinel failover-timeout {MASTER} 5000\n"
                            + (f"sentinel auth-pass {MASTER} {password}\n" if password else "")
                            + (f"requirepass {sentinel_password}\n" if sentinel_password else ""))
            _wait(topology.sentinel(port), start(port, [str(conf), "--sentinel"]), "a sentinel")
            sentinels.append(port)
        deadline = time.monotonic() + 30
        while True:  # the replica in sync, each sentinel aware of the replica and of two others
            try:
                synced = topology.node(replica).info("replication").get("master_link_status") == "up"
                views: list[Any] = [topology.sentinel(p).sentinel_master(MASTER) for p in sentinels]
                ready = all(int(v["num-other-sentinels"]) >= 2 and int(v["num-slaves"]) >= 1 for v in views)
            except redis.RedisError:
                synced = ready = False
            if synced and ready:
                break
            if time.monotonic() > deadline:
                raise AssertionError("the Sentinel topology did not settle")
            time.sleep(0.1)
        yield topology
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a stopped replica handles SIGTERM only once resumed
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
