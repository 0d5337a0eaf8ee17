"""The embedded stack behind `fleet up` and `fleet demo`: Redis (embedded unless a URL is
configured), one control-plane worker and one beat, as child processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from fleet.config import FleetConfig
from fleet.embedded import EmbeddedRedis, free_port
from fleet.errors import FleetError


def _stable_port(state_dir: Path) -> int:
    """The embedded Redis keeps its port across restarts, so running workers reconnect."""
    path = state_dir / "redis.port"
    try:
        port = int(path.read_text())
        with socket.socket() as s:
            # as redis-server binds: a port in TIME_WAIT after our last stop is still ours
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
        return port
    except (OSError, ValueError):
        port = free_port()
        state_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(str(port))
        return port


class Stack:
    """Start with `start()`, stop with `stop()` (or use as a context manager)."""

    def __init__(self, config: FleetConfig, config_path: Path, *, log: IO[bytes] | None = None,
                 concurrency: int = 8) -> None:
        self.config = config
        self.config_path = config_path.resolve()
        self.state_dir = config.state_dir.resolve()
        self.log = log
        self.concurrency = concurrency
        self.redis: EmbeddedRedis | None = None
        self.url = config.redis_url or ""
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def env(self) -> dict[str, str]:
        return {**os.environ, "FLEET_CONFIG": str(self.config_path), "FLEET_REDIS_URL": self.url,
                "FLEET_STATE_DIR": str(self.state_dir)}

    def start(self) -> "Stack":
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.url:
            self.redis = EmbeddedRedis(self.state_dir, port=_stable_port(self.state_dir))
            self.url = self.redis.start()
        celery = [sys.executable, "-m", "celery", "-A", "tasks"]
        name = f"fleet-{self.config.fleet.id}-{os.getpid()}@%h"
        self._spawn("worker", celery + ["worker", "--pool", "threads", "--concurrency", str(self.concurrency),
                                        "--hostname", name, "--loglevel", "INFO", "--without-gossip", "--without-mingle"])
        self._spawn("beat", celery + ["beat", "--loglevel", "INFO", "--schedule",
                                      str(self.state_dir / "beat-schedule")])
        return self

    def _spawn(self, role: str, argv: list[str]) -> None:
        out = self.log if self.log is not None else None
        self.procs[role] = subprocess.Popen(argv, env=self.env(), stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT if out is not None else None,
                                            start_new_session=True)

    def check(self) -> None:
        """Raise if a child process has died."""
        for role, proc in self.procs.items():
            if proc.poll() is not None:
                raise FleetError(f"the control-plane {role} exited with code {proc.returncode}")

    def stop(self, timeout: float = 20.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
        if self.redis:
            self.redis.stop()
            self.redis = None

    def __enter__(self) -> "Stack":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
