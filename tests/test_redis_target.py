"""`fleet.connection.RedisTarget`: one description of the fleet's Redis from `[fleet]` and the
environment, and `sentinel://` through real `redis-server --sentinel` processes (a primary, a
replica-less master, two sentinels): `connect()` reaches the primary, and the Celery settings
name the master for kombu's and Celery's Sentinel transports."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fleet.config import FleetSettings
from fleet.connection import RedisTarget, connect
from fleet.embedded import die_with_parent, free_port
from fleet.errors import ConfigError
from fleet.testing.system import ensure_debian_packages
from tests.kits.sentinel import _wait

SERVER = "/usr/bin/redis-server"


def settings(**values: object) -> FleetSettings:
    return FleetSettings(id="t", **values)  # type: ignore[arg-type]


def test_the_password_is_read_from_the_environment_then_a_file_and_never_shown(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-the-file\n")
    fleet = settings(redis_username="cp", redis_password_file=str(secret))
    url = "redis://127.0.0.1:6379/0"
    assert RedisTarget.from_settings(url, fleet, env={}).password == "from-the-file"
    other = tmp_path / "pw2"
    other.write_text("from-env-file")
    assert RedisTarget.from_settings(url, fleet, env={"FLEET_REDIS_PASSWORD_FILE": str(other)}).password \
        == "from-env-file"
    target = RedisTarget.from_settings(url, fleet, env={"FLEET_REDIS_PASSWORD": "from-env"})
    assert target.password == "from-env" and target.username == "cp"
    assert "from-env" not in repr(target) and "from-env" not in target.shown
    assert target.celery_settings()["broker_password"] == "from-env"
    with pytest.raises(ConfigError) as missing:
        RedisTarget.from_settings(url, settings(redis_password_file=str(tmp_path / "none")), env={})
    assert "none" in str(missing.value)


def test_tls_files_need_a_rediss_url_and_reach_every_client(tmp_path: Path) -> None:
    tls = {"ca_file": str(tmp_path / "ca.crt"), "cert_file": str(tmp_path / "c.crt"), "key_file": str(tmp_path / "c.key")}
    with pytest.raises(ConfigError):
        RedisTarget.from_settings("redis://h:6379/0", settings(redis_tls=tls), env={})
    with pytest.raises(ValueError):
        settings(redis_tls={"cert_file": "c.crt"})  # a certificate without its key
    target = RedisTarget.from_settings("rediss://h:6380/0", settings(redis_tls=tls), env={})
    conf = target.celery_settings()
    assert conf["broker_use_ssl"] == conf["redis_backend_use_ssl"] == target.ssl_options()
    assert target.ssl_options()["ssl_ca_certs"] == tls["ca_file"]  # type: ignore[index]


def test_a_sentinel_url_needs_a_master_name_and_a_good_form() -> None:
    with pytest.raises(ConfigError):
        RedisTarget.from_settings("sentinel://127.0.0.1:26379", settings(), env={})
    with pytest.raises(ConfigError):
        RedisTarget.from_settings("sentinel://127.0.0.1:26379;redis://x:1", settings(redis_sentinel_master="m"),
                                  env={})


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[tuple[int, list[int]]]:
    """A primary on its own port and two sentinels that monitor it as `fleetmaster`."""
    ensure_debian_packages({"redis-server": lambda: shutil.which("redis-server", path="/usr/bin") is not None},
                           "the Sentinel tests")
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([SERVER, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent)
        procs.append(proc)
        return proc

    try:
        primary = free_port()
        proc = start(["--port", str(primary), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                      "--dir", str(tmp_path)])
        _wait(redis.Redis(port=primary), proc, "the primary")
        ports = []
        for i in range(2):
            port = free_port()
            conf = tmp_path / f"sentinel-{i}.conf"  # Sentinel rewrites its file: one each
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                            f"sentinel monitor fleetmaster 127.0.0.1 {primary} 1\n")
            proc = start([str(conf), "--sentinel"])
            _wait(redis.Redis(port=port), proc, "a sentinel")
            ports.append(port)
        yield primary, ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_connect_reaches_the_primary_through_the_sentinels(sentinels: tuple[int, list[int]]) -> None:
    primary, ports = sentinels
    url = ";".join(f"sentinel://127.0.0.1:{port}/2" for port in ports)
    target = RedisTarget.from_settings(url, settings(redis_sentinel_master="fleetmaster"), env={})
    client = connect(target)
    client.set("fleet:sentinel-probe", "here")
    assert int(client.info("server")["tcp_port"]) == primary
    assert redis.Redis(port=primary, db=2).get("fleet:sentinel-probe") == b"here"  # database 2 of the primary
    conf = target.celery_settings()
    assert conf["broker_transport_options"]["master_name"] == "fleetmaster"
    assert conf["result_backend_transport_options"]["master_name"] == "fleetmaster"
    # the first sentinel gone, the second still names the primary
    dead = ";".join(["sentinel://127.0.0.1:1", *url.split(";")[1:]])
    other = RedisTarget.from_settings(dead, settings(redis_sentinel_master="fleetmaster"), env={})
    assert connect(other).get("fleet:sentinel-probe") == b"here"
