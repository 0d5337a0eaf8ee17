"""`fleet up` as a person runs it, in a process of its own: it starts Redis, its workers and a beat,
serves scale requests, brings its embedded Redis back after a SIGKILL (or exits with a clear
error when it cannot), prints no password, refuses requests clearly while its disk is full and
serves again when there is room, and Ctrl-C stops everything it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from fleet.embedded import free_port, redis_server_binary
from fleet.provider import Cluster, ProviderContext
from providers.local import LocalOptions, LocalProvider


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    out: Path
    folder: Path
    state: Path
    fleet_id: str
    env: dict[str, str]

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_for_output(self, needle: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert self.proc.poll() is None, f"fleet up exited ({self.proc.returncode}):\n{self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {needle!r} from fleet up:\n{self.text()[-3000:]}"
            time.sleep(0.1)

    def url(self) -> str:
        return (self.state / "redis.url").read_text().strip()

    def fleet(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run the `fleet` CLI in the same folder, as a person's second terminal does."""
        return subprocess.run([sys.executable, "-m", "fleet.cli", *args], cwd=self.folder, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def ours(self) -> list[int]:
        """PIDs of the control-plane processes this `fleet up` started (Redis, workers, beat)."""
        port = (self.state / "redis.port").read_text().strip() if (self.state / "redis.port").exists() else "-"
        redis_title = f"127.0.0.1:{port}".encode()  # redis-server shows its address as its title
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == self.proc.pid:
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                environ = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            redis_of_ours = b"redis-server" in cmdline.split(b" ")[0] and redis_title in cmdline
            plane_of_ours = f"FLEET_STATE_DIR={self.state}".encode() in environ and b"FLEET_HANDLE=" not in environ
            if redis_of_ours or (plane_of_ours and b"celery" in cmdline):
                pids.append(int(entry))
        return pids


@contextmanager
def fleet_up(tmp: Path, *, redis_url: str | None = None, state: Path | None = None) -> Iterator[Up]:
    fleet_id = "u" + uuid.uuid4().hex[:8]
    folder = tmp / "work"
    folder.mkdir()
    state = state or tmp / "state"
    (folder / "fleet.toml").write_text(textwrap.dedent(f"""
        [fleet]
        id = "{fleet_id}"
        sweep_interval = 0.5
        [clusters.web]
        provider = "local"
        max_workers = 3
        boot_timeout = 60
        [clusters.web.container]
        command = ["sh", "-c", "exec sleep 600"]
        [clusters.web.provider_options]
        kill_grace = 1
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(FLEET_STATE_DIR=str(state), PYTHONUNBUFFERED="1")
    if redis_url:
        env["FLEET_REDIS_URL"] = redis_url
    out = tmp / "fleet-up.out"
    with open(out, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "fleet.cli", "up"], cwd=folder, env=env, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
    up = Up(proc, out, folder, state, fleet_id, env)
    try:
        up.wait_for_output("control plane up")
        up.wait_for_output("ready.")
        yield up
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in up.ours():
            os.kill(pid, signal.SIGKILL)
        local = LocalProvider(ProviderContext(fleet_id, state))
        ref = Cluster(fleet_id, "web", 1, LocalOptions(kill_grace=1))
        local.kill_workers(ref, list(local.list_workers(ref)))


def ctrl_c(up: Up) -> int:
    up.proc.send_signal(signal.SIGINT)
    return up.proc.wait(timeout=60)


def test_fleet_up_serves_keeps_its_redis_alive_and_ctrl_c_stops_what_it_started(tmp_path: Path) -> None:
    with fleet_up(tmp_path) as up:
        scaled = up.fleet("scale", "web", "2", "--wait", "--timeout", "60")
        assert scaled.returncode == 0, scaled.stdout + scaled.stderr
        started = up.ours()
        assert len(started) == 4  # redis-server, the control worker, the provider worker, beat
        # SIGKILL its embedded Redis: fleet up says so, starts it again with the same data
        (redis_pid,) = [pid for pid in started if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        time.sleep(1.5)  # the append-only file has the desired number (fsync every second)
        os.kill(redis_pid, signal.SIGKILL)
        up.wait_for_output("restarted it on port")
        shown = up.fleet("status", "web", "--json")
        assert shown.returncode == 0, shown.stderr
        assert '"desired": 2' in shown.stdout  # kept in the append-only file
        scaled = up.fleet("scale", "web", "1", "--wait", "--timeout", "60")
        assert scaled.returncode == 0, scaled.stdout + scaled.stderr  # and it serves again
        assert up.proc.poll() is None
        assert ctrl_c(up) == 0
        assert "stopped" in up.text()
        deadline = time.monotonic() + 10
        while up.ours():
            assert time.monotonic() < deadline, f"left running after Ctrl-C: {up.ours()}"
            time.sleep(0.1)
        assert not (up.state / "redis.url").exists()


def test_fleet_up_exits_with_a_clear_error_when_its_redis_cannot_come_back(tmp_path: Path) -> None:
    with fleet_up(tmp_path) as up:
        port = int(up.url().rsplit(":", 1)[1].split("/")[0])
        (redis_pid,) = [pid for pid in up.ours() if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        import socket

        thief = socket.socket()
        thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        os.kill(redis_pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while True:  # take its port before fleet up can restart it there
            try:
                thief.bind(("127.0.0.1", port))
                thief.listen(1)
                break
            except OSError:
                assert time.monotonic() < deadline
        try:
            assert up.proc.wait(timeout=60) == 2
        finally:
            thief.close()
        assert "could not be restarted" in up.text() and f"port {port}" in up.text()
        deadline = time.monotonic() + 10
        while up.ours():
            assert time.monotonic() < deadline, f"left running: {up.ours()}"
            time.sleep(0.1)


def test_fleet_up_prints_no_password(tmp_path: Path) -> None:
    secret = "s3cret-" + uuid.uuid4().hex
    port = free_port()
    server = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--requirepass", secret], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"redis://:{secret}@127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        with fleet_up(tmp_path, redis_url=url) as up:
            scaled = up.fleet("scale", "web", "1", "--wait", "--timeout", "60")
            assert scaled.returncode == 0, scaled.stdout + scaled.stderr
            for args in (("status",), ("status", "web", "--json"), ("events", "web"), ("clusters",)):
                shown = up.fleet(*args)
                assert shown.returncode == 0 and secret not in shown.stdout + shown.stderr, args
            up.fleet("scale", "web", "0", "--wait", "--timeout", "60")
            assert ctrl_c(up) == 0
            assert "redis://:***@127.0.0.1" in up.text()
            assert secret not in up.text()  # banner, worker and beat logs alike
    finally:
        server.kill()
        server.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs as the full disk needs root")
def test_a_full_disk_refuses_requests_clearly_and_service_resumes_when_freed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(state)], check=True)
    try:
        with fleet_up(tmp_path, state=state) as up:
            assert up.fleet("scale", "web", "1", "--wait", "--timeout", "60").returncode == 0
            filler = state / "filler"
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=64"], capture_output=True)
            refused = None
            deadline = time.monotonic() + 30
            while refused is None:  # Redis refuses writes once its append-only file cannot grow
                result = up.fleet("scale", "web", "2", timeout=60)
                if result.returncode != 0:
                    refused = result
                assert time.monotonic() < deadline, "Redis never refused a write on a full disk"
            assert refused.returncode == 2 and "Redis refuses writes" in refused.stderr, refused.stderr
            assert "disk" in refused.stderr and "Traceback" not in refused.stderr
            time.sleep(3.0)
            assert up.proc.poll() is None and len(up.ours()) == 4  # nothing died
            filler.unlink()
            deadline = time.monotonic() + 60
            while (result := up.fleet("scale", "web", "2", "--wait", "--timeout", "60")).returncode != 0:
                assert time.monotonic() < deadline, f"no service after the disk was freed: {result.stderr}"
                time.sleep(1.0)
            assert up.proc.poll() is None
            assert up.fleet("scale", "web", "0", "--wait", "--timeout", "60").returncode == 0
            assert ctrl_c(up) == 0
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)
