"""Control planes of real processes on a Redis the test starts first and owns: for the tests where
requests wait on the queue before any control plane runs, where two fleets share one Redis, and
where a control plane's clock is skewed (libfaketime) while Redis's is not."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from fleet.config import load_config
from fleet.embedded import EmbeddedRedis
from fleet.stack import Stack
from fleet.testing.plane import Plane
from fleet.testing.system import ensure_debian_packages


def write_config(folder: Path, fleet_id: str, clusters: str, fleet: str = "") -> Path:
    """A fleet.toml in `folder` for fleet `fleet_id`: `clusters` and `fleet` are TOML (the
    `[clusters.*]` tables and extra `[fleet]` settings)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fleet.toml"
    path.write_text(f'[fleet]\nid = "{fleet_id}"\nstate_dir = "{folder / "state"}"\n' + textwrap.dedent(fleet)
                    + "\n" + textwrap.dedent(clusters))
    return path


@contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """An embedded Redis of the test's own (no persistence), stopped at the end: its URL (db 0)."""
    server = EmbeddedRedis(folder, persist=False, die_with_parent=True)
    try:
        yield server.start()
    finally:
        server.stop()


class _Stack(Stack):
    """A Stack whose processes get `extra` in their environment (not this process, not Redis)."""

    def __init__(self, *args: Any, extra: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra = dict(extra)

    def env(self, role: str = "") -> dict[str, str]:
        return {**super().env(role), **self.extra}

    def stop(self, timeout: float = 20.0) -> None:
        super().stop(timeout)
        if self.log is not None:
            self.log.close()


def stack(path: Path, url: str, env: Mapping[str, str] | None = None, **options: Any) -> Stack:
    """A Stack (not started) of the fleet of `path` on `url`: a control and a provider worker, no
    beat unless asked, its log beside `path` (control-plane.log), `env` added to its processes'."""
    log = open(path.parent / "control-plane.log", "ab")  # closed by stop()
    options = {"beat": False, "concurrency": 2, "die_with_parent": True, **options}
    return _Stack(load_config(path), path, log=log, redis_url=url, state_dir=path.parent / "state",
                  extra=env or {}, **options)


@contextmanager
def control_plane(path: Path, url: str, env: Mapping[str, str] | None = None, **options: Any) -> Iterator[Plane]:
    """The control plane of the fleet of `path` on the Redis at `url`, ready; stopped at the end."""
    running = stack(path, url, env, **options)
    with running:
        plane = Plane(running, redis.Redis.from_url(url), path.parent / "control-plane.log", running.config)
        for role in running.roles:
            if role != "beat":
                plane.wait_ready(role)
        yield plane


def libfaketime() -> str:
    """The path of libfaketime (Debian's `faketime`), installed by the test run if missing."""
    pattern = "/usr/lib/*/faketime/libfaketime.so.1"
    ensure_debian_packages({"faketime": lambda: bool(glob.glob(pattern))}, "the clock-skew tests")
    return sorted(glob.glob(pattern))[0]


def skewed(offset: str) -> dict[str, str]:
    """The environment that runs a process with its wall clock moved by `offset` (libfaketime's
    relative form: "-10m", "+600"); its monotonic clock stays true."""
    return {"LD_PRELOAD": libfaketime(), "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def clock_offset(env: Mapping[str, str]) -> float:
    """How far a process started with `env` sees the wall clock from this one's (seconds)."""
    before = time.time()
    out = subprocess.run([sys.executable, "-c", "import time; print(time.time())"], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=60, check=True)
    return float(out.stdout.strip()) - before
