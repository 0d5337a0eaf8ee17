"""The local provider hands a launched process the control plane's environment less its own Redis
password (FLEET_REDIS_PASSWORD, FLEET_REDIS_PASSWORD_FILE); the cluster's `container.env` and
`container.secrets` still apply. Read from /proc/PID/environ of a real launched process."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from fleet.provider import Cluster, ContainerSpec, Hardware, ProviderContext
from fleet.testing.contract import wait_for
from providers.local import LocalOptions, LocalProvider


def environ(path: Path) -> bytes:
    try:
        return b"\0" + path.read_bytes()
    except OSError:  # gone, or not ours
        return b""


def test_a_launched_worker_gets_no_control_plane_redis_password(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    password = "cp-" + uuid.uuid4().hex
    monkeypatch.setenv("FLEET_REDIS_PASSWORD", password)
    monkeypatch.setenv("FLEET_REDIS_PASSWORD_FILE", str(tmp_path / "cp-password"))
    monkeypatch.setenv("FLEET_TEST_INHERITED", "yes")
    provider = LocalProvider(ProviderContext("envt", tmp_path / "state"))
    cluster = Cluster("envt", "c", 1, LocalOptions(kill_grace=1))
    container = ContainerSpec(command=("sleep", "60"), env={"WORKER_SETTING": "w"},
                              secrets={"WORKER_REDIS_PASSWORD": "env:FLEET_REDIS_PASSWORD"})
    (handle,) = provider.run_workers(cluster, container, Hardware(), 1, launch_id=uuid.uuid4().hex)
    try:
        mark = f"\0FLEET_HANDLE={handle}\0".encode()  # once the process has exec'd its command
        (raw,) = wait_for(lambda: [raw for raw in map(environ, Path("/proc").glob("[0-9]*/environ")) if mark in raw],
                          timeout=20, what="the launched worker's environment")
        env = dict(item.decode().split("=", 1) for item in raw.split(b"\0") if b"=" in item)
        assert not {"FLEET_REDIS_PASSWORD", "FLEET_REDIS_PASSWORD_FILE"} & env.keys()
        assert password.encode() in raw  # only as the secret the cluster asked for, by its own name
        assert env["WORKER_REDIS_PASSWORD"] == password
        assert (env["FLEET_TEST_INHERITED"], env["WORKER_SETTING"], env["FLEET_HANDLE"]) == ("yes", "w", handle)
    finally:
        assert provider.kill_workers(cluster, [handle]) == {handle: True}
