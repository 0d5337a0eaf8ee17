"""The one way Fleet starts a control plane: Redis (embedded unless a URL is configured),
control-plane workers and one beat. `fleet up` and `fleet demo` run one as child processes; so do
`fleet bench` and the tests that need real processes (to SIGKILL a worker, restart Redis, fill its
disk). The tests that reach into the workers' memory (the `memory` provider's records, the
`faulty` provider's scripted errors) run one in their own process (`in_process=True`: a real
Celery worker and beat in threads).

The stack watches what it started: `check()` restarts an embedded Redis that died (same port,
same data folder, so workers reconnect and an append-only file keeps the state) and says so, and
raises `FleetError` when a control-plane process died or Redis cannot be brought back.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import redis

from fleet.config import FleetConfig
from fleet.embedded import EmbeddedRedis, die_with_parent, free_port
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
    """Start with `start()`, stop with `stop()` (or use as a context manager).

    `control_workers` processes for the public and control queues (roles `control`, `control-2`,
    ...; a solo pool each: these tasks are short, and threads would only contend for the GIL),
    `workers` processes for the provider queues (roles `worker`, `worker-2`, ...; a threads pool
    of `concurrency` each, for slow cloud calls), and (with `beat`) one beat. `persist=False` runs the embedded Redis
    without an append-only file (what a Redis without persistence loses on a restart).
    `redis_url` and `state_dir` override the configuration's (and so FLEET_REDIS_URL and
    FLEET_STATE_DIR); `redis_url=""` asks for an embedded Redis whatever the environment says.
    `in_process=True` runs one worker and the beat as threads of this process, with the app of
    `tasks` (configured from this process's environment, which the stack sets). `role_env` adds
    environment variables to some roles' processes (e.g. libfaketime's, to skew one's clock)."""

    def __init__(self, config: FleetConfig, config_path: Path, *, log: IO[bytes] | None = None,
                 concurrency: int = 8, workers: int = 1, control_workers: int = 1, beat: bool = True,
                 persist: bool = True,
                 worker_args: Sequence[str] = (), redis_url: str | None = None,
                 state_dir: Path | None = None, in_process: bool = False, die_with_parent: bool = False,
                 role_env: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.config = config
        self.config_path = config_path.resolve()
        self.state_dir = (state_dir or config.state_dir).resolve()
        self.log = log
        self.concurrency = concurrency
        self.roles = (["control"] + [f"control-{i}" for i in range(2, control_workers + 1)]
                      + ["worker"] + [f"worker-{i}" for i in range(2, workers + 1)] + (["beat"] if beat else []))
        self.persist = persist
        self.worker_args = list(worker_args)
        self.redis: EmbeddedRedis | None = None
        self.url = (config.redis_url or "") if redis_url is None else redis_url
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.in_process = in_process
        self.die_with_parent = die_with_parent  # every process started ends with this one (tests, bench)
        self._threads: list[Any] = []  # what an in-process stack stops: (worker context, beat)
        self.role_env = {role: dict(extra) for role, extra in (role_env or {}).items()}  # extra variables, by role

    def env(self, role: str = "") -> dict[str, str]:
        env = {**os.environ, "FLEET_CONFIG": str(self.config_path), "FLEET_REDIS_URL": self.url,
               "FLEET_STATE_DIR": str(self.state_dir)}
        env.pop("FLEET_ROLE", None)
        if role.startswith(("control", "worker")):
            # glibc gives each thread that allocates its own malloc arena and seldom hands freed
            # arena memory back: with a threads pool that was 40 MiB of a provider worker's peak
            # RSS at 50,000 handles (docs/benchmarks.md). Two arenas keep it near the live size.
            env.setdefault("MALLOC_ARENA_MAX", "2")
        if role.startswith("control"):
            env["FLEET_ROLE"] = "control"
        elif role.startswith("worker"):
            env["FLEET_ROLE"] = "provider"
        env.update(self.role_env.get(role, {}))
        return env

    def start(self) -> Stack:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.url:
            self.redis = EmbeddedRedis(self.state_dir, port=_stable_port(self.state_dir), persist=self.persist,
                                       die_with_parent=self.die_with_parent)
            self.url = self.redis.start()
        self._check_public_queue()
        if self.in_process:
            self._start_threads()
            return self
        for role in self.roles:
            self.start_role(role)
        return self

    def _check_public_queue(self) -> None:
        """QueueTaken (one line) before anything starts if another fleet's control plane consumes
        this fleet's public queue; each control-plane process checks again as it starts (fleet.owner)."""
        from fleet.client import masked
        from fleet.connection import RedisTarget, connect
        from fleet.owner import check_free

        if self.redis is None:  # the config's Redis: with its ACL user, password and TLS files
            RedisTarget.from_settings(self.url, self.config.fleet).register()
        try:
            check_free(connect(self.url), self.config.fleet.public_queue, self.config.fleet.id, masked(self.url))
        except redis.RedisError:
            pass  # Redis not answering yet: the workers wait for it, and check then

    def _start_threads(self) -> None:
        """A real Celery worker (threads pool) and beat in this process (celery.contrib.testing)."""
        from celery.beat import EmbeddedService
        from celery.contrib.testing.worker import start_worker

        os.environ.update({k: v for k, v in self.env().items() if k.startswith("FLEET_")})
        from tasks import app

        schedule = str(self.state_dir / "beat-schedule")
        app.conf.beat_schedule_filename = schedule
        worker = start_worker(app, pool="threads", concurrency=self.concurrency, perform_ping_check=False,
                              shutdown_timeout=30, loglevel="WARNING")
        worker.__enter__()
        self._threads.append(worker)
        if "beat" in self.roles:
            beat = EmbeddedService(app, thread=True, schedule_filename=schedule)
            beat.start()
            self._threads.append(beat)

    def argv(self, role: str) -> list[str]:
        celery = [sys.executable, "-m", "celery", "-A", "tasks"]
        if role == "beat":
            return celery + ["beat", "--loglevel", "INFO", "--schedule", str(self.state_dir / "beat-schedule")]
        name = f"fleet-{self.config.fleet.id}-{role}-{os.getpid()}@%h"
        # a solo pool takes a few messages at a time (one round trip for several); a threads
        # pool takes one per thread, so a slow cloud call never holds others back
        pool = (["--pool", "solo", "--prefetch-multiplier", "4"] if role.startswith("control")
                else ["--pool", "threads", "--concurrency", str(self.concurrency)])
        return celery + ["worker", *pool, "--hostname", name, "--loglevel", "INFO", "--without-gossip",
                         "--without-mingle", *self.worker_args]

    def start_role(self, role: str) -> None:
        """Start (or start again) one control-plane process."""
        out = self.log if self.log is not None else None
        self.procs[role] = subprocess.Popen(self.argv(role), env=self.env(role), stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT if out is not None else None,
                                            start_new_session=True,
                                            preexec_fn=die_with_parent if self.die_with_parent else None)

    def kill(self, role: str, sig: int = signal.SIGKILL, timeout: float = 30.0) -> None:
        """Send `sig` to one process (its whole group) and wait for it to exit."""
        proc = self.procs.pop(role)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=timeout)

    def check(self) -> list[str]:
        """Restart an embedded Redis that died (and say so in the returned notices); raise
        FleetError if a control-plane process died or Redis cannot be restarted."""
        notices: list[str] = []
        if self.redis is not None and self.redis.proc is not None and self.redis.proc.poll() is not None:
            code = self.redis.proc.returncode
            try:
                self.redis.restart()
            except FleetError as exc:
                raise FleetError(f"the embedded Redis exited with code {code} and could not be restarted on "
                                 f"port {self.redis.port}: {exc}") from None
            kept = "its append-only file" if self.persist else "no data (persistence is off)"
            notices.append(f"the embedded Redis exited with code {code}; restarted it on port {self.redis.port} "
                           f"with the data folder {self.redis.data_dir} ({kept})")
        for role, proc in self.procs.items():
            if proc.poll() is not None:
                raise FleetError(f"the control-plane {role} exited with code {proc.returncode}")
        return notices

    def stop(self, timeout: float = 20.0) -> None:
        for part in reversed(self._threads):
            if hasattr(part, "__exit__"):
                part.__exit__(None, None, None)
            else:
                part.stop()
        self._threads.clear()
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        self.procs.clear()
        if self.redis:
            self.redis.stop()
            self.redis = None

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
