"""What people see: the Celery entry points refuse a bad config in one line, `fleet scale --wait`
ends at once when the cluster cannot converge, `fleet scale` refuses a negative count and a wrong
Redis password at once, and `fleet status --watch` prints each refresh into a pipe and stops on
Ctrl-C even when started where SIGINT is ignored. Real processes, real Redis, a real control plane."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from fleet.cli import main
from fleet.testing.plane import Plane, plane
from tests.conftest import REDIS_URL, wait_for

PY = sys.executable


@contextmanager
def started(argv: list[str], env: dict[str, str], preexec: Callable[[], Any] | None = None,
            ) -> Iterator[subprocess.Popen[bytes]]:
    """A child in a session of its own, killed with its whole process group at the end."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=preexec)
    try:
        yield proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


@pytest.mark.parametrize("command", ["worker", "beat", "flower"])
@pytest.mark.parametrize("content", ['[fleet]\nid = 3\n', "[fleet\nid = 'x'\n"], ids=["invalid", "not-toml"])
def test_the_celery_entry_points_refuse_a_bad_config_in_one_line(tmp_path: Path, command: str, content: str) -> None:
    bad = tmp_path / "fleet.toml"
    bad.write_text(content)
    env = {**os.environ, "FLEET_CONFIG": str(bad)}
    with started([PY, "-m", "celery", "-A", "tasks", command], env) as proc:
        _, err = proc.communicate(timeout=60)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, err.decode()
    assert lines[0].startswith(f"error: {bad}: "), lines


# -- fleet scale --wait on a cluster that cannot converge ---------------------------------------

MISSING = f"/nonexistent/fleet-{uuid.uuid4().hex[:6]}"
CLUSTERS = f"""
    [providers.local]
    ops_per_second = 1000

    [clusters.broken]
    provider = "local"
    max_workers = 4
    [clusters.broken.container]
    command = ["{MISSING}"]

    [clusters.pooled]
    max_workers = 4
    pools = [{{ name = "a", provider = "local" }}, {{ name = "b", provider = "local", max_workers = 1 }}]
    [clusters.pooled.container]
    command = ["{MISSING}"]

    [clusters.old]
    provider = "memory"
    max_workers = 4
    [clusters.old.container]
    command = ["worker"]
"""


@pytest.fixture(scope="module")
def stuck_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Plane, Path]]:
    """A control plane whose config has `broken` (its command does not exist: a permanent error),
    `pooled` (the same in both pools) and `old`; and a CLI config without `old` (retired)."""
    tmp = tmp_path_factory.mktemp("stuck")
    with plane(tmp, CLUSTERS, fleet="sweep_interval = 0.5\n") as p:
        text = (tmp / "fleet.toml").read_text()
        cli = tmp / "cli.toml"
        cli.write_text(text[:text.index("[clusters.old]")])
        wait_for(lambda: p.r.exists(p.keys.cluster("old").spec), timeout=30, what="the spec record of `old`")
        yield p, cli


def scale_wait(p: Plane, config: Path, cluster: str, n: int, timeout: float = 60) -> tuple[Any, float]:
    started_at = time.monotonic()
    result = CliRunner(env={"FLEET_REDIS_URL": p.stack.url}).invoke(
        main, ["--config", str(config), "scale", cluster, str(n), "--wait", "--timeout", str(timeout)])
    return result, time.monotonic() - started_at


@pytest.mark.parametrize("cluster, reason", [
    ("broken", "but error: cannot start container.command[0]"),
    ("pooled", "but every pool is held: a: error: cannot start container.command[0]"),
])
def test_scale_wait_ends_at_once_with_the_reason_when_the_cluster_cannot_launch(
        stuck_plane: tuple[Plane, Path], cluster: str, reason: str) -> None:
    p, _ = stuck_plane
    try:
        result, took = scale_wait(p, p.log.parent / "fleet.toml", cluster, 2)
        assert result.exit_code == 1, result.output
        assert "cannot converge" in result.output and reason in result.output, result.output
        assert took < 20, f"{took:.1f} s"  # the permanent error is recorded within a second or two
    finally:
        p.call("fleet.scale", cluster, 0)
        p.call("fleet.clear", cluster)


def test_scale_wait_ends_at_once_on_a_retired_cluster(stuck_plane: tuple[Plane, Path]) -> None:
    p, cli = stuck_plane
    p.call("fleet.scale", "old", 1)  # a cluster with workers, then removed from the (CLI's) config
    wait_for(lambda: p.r.hlen(p.keys.cluster("old").handles), timeout=30, what="a worker of `old`")
    try:
        result, took = scale_wait(p, cli, "old", 2)
        assert result.exit_code != 0 and "retired" in result.output, result.output
        assert took < 20, f"{took:.1f} s"
    finally:
        p.call("fleet.scale", "old", 0)


# -- fleet scale: a negative count, a wrong password --------------------------------------------

def test_scale_refuses_a_negative_count_as_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["scale", "single", "-1"])
    assert result.exit_code == 2, result.output
    assert "workers must be a non-negative integer" in result.output and "No such option" not in result.output


def test_scale_with_a_wrong_password_fails_at_once_as_status_does(r: redis.Redis) -> None:
    user = "u" + uuid.uuid4().hex[:8]
    r.acl_setuser(user, enabled=True, passwords=["+right-" + user], keys=["*"], channels=["*"], commands=["+@all"])
    try:
        url = REDIS_URL.replace("redis://", f"redis://{user}:wrong@", 1)
        runner = CliRunner(env={"FLEET_REDIS_URL": url})
        status = runner.invoke(main, ["status", "single"])
        started_at = time.monotonic()
        scaled = runner.invoke(main, ["scale", "single", "1"])
        took = time.monotonic() - started_at
        assert status.exit_code == scaled.exit_code == 2, scaled.output
        assert "invalid username-password pair" in status.output
        assert scaled.output.strip().splitlines()[-1] == status.output.strip().splitlines()[-1], scaled.output
        assert "wrong" not in scaled.output  # the password is never shown
        assert took < 5, f"{took:.1f} s"
    finally:
        r.acl_deluser(user)


# -- fleet status --watch -----------------------------------------------------------------------

def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `cmd &` leaves it in a shell without job control


def test_status_watch_prints_each_refresh_into_a_pipe_and_ctrl_c_stops_it(fleet: Any, control_plane: Any) -> None:
    control_plane.send_task("fleet.scale", args=["single", 1]).get(timeout=20)
    argv = [PY, "-m", "fleet.cli", "status", "single", "--watch"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # the CLI must flush by itself
    with started(argv, env, preexec=_ignore_sigint) as proc:
        assert proc.stdout is not None
        seen = b""
        deadline = time.monotonic() + 30
        while seen.count(b"single (memory): desired 1") < 2:
            assert time.monotonic() < deadline, f"two refreshes not seen in 30 s: {seen.decode()!r}"
            ready, _, _ = select.select([proc.stdout], [], [], 1)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                assert chunk, f"the watch ended: {seen.decode()!r}"
                seen += chunk
        assert b"\x1b[" not in seen  # plain text: no cursor movement or colours into a file
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
