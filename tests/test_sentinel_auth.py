"""Sentinels that need a password (`requirepass` on the sentinels, another on the data nodes, with
`sentinel auth-pass`: tests/kits/sentinel.py), with real servers: Fleet sends the sentinels their
own password (FLEET_REDIS_SENTINEL_PASSWORD(_FILE), `fleet.redis_sentinel_password_file`), so
`fleet status`, `connect()`, a broker channel of Fleet's transport, the broker probe and Celery's
result backend all reach the primary. A wrong or missing Sentinel password is one short clear
error, never a traceback nor "cannot reach", and stops a control-plane worker at once. No password
shows in any output."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from celery import Celery
from click.testing import CliRunner
from kombu import Connection

from fleet.cli import main
from fleet.config import FleetSettings, load_config
from fleet.connection import RedisTarget, SentinelConnection, access_error, connect
from fleet.console.health import Health
from fleet.errors import ConfigError
from fleet.probe import Probe
from fleet.sentinel import SentinelRefused
from fleet.stack import Stack
from tasks.transport import SentinelTransport
from tests.kits.sentinel import MASTER, Topology, sentinel_topology

DATA_PASSWORD = "data-" + "pw-5be1"  # the primary's and the replica's requirepass
SENTINEL_PASSWORD = "sentinel-" + "pw-9c3d"  # the sentinels' own requirepass
FLEET = "senauth"
CONFIG = f"""
[fleet]
id = "{FLEET}"
redis_sentinel_master = "{MASTER}"
redis_sentinel_password_file = "SECRET"

[clusters.web]
provider = "local"
max_workers = 2
[clusters.web.container]
command = ["sh", "-c", "exec sleep 600"]
"""


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    with sentinel_topology(tmp_path, password=DATA_PASSWORD, sentinel_password=SENTINEL_PASSWORD) as running:
        yield running


def config_file(tmp_path: Path, sentinel_password: str) -> Path:
    secret = tmp_path / "sentinel-password"
    secret.write_text(sentinel_password + "\n")
    path = tmp_path / "fleet.toml"
    path.write_text(CONFIG.replace("SECRET", str(secret)))
    return path


def fleet_status(topology: Topology, config: Path, **env: str) -> tuple[int, str]:
    """`fleet status` on the topology, the data password in FLEET_REDIS_PASSWORD."""
    result = CliRunner().invoke(main, ["--config", str(config), "status"],
                                env={"FLEET_REDIS_URL": topology.url(), "FLEET_REDIS_PASSWORD": DATA_PASSWORD,
                                     "FLEET_REDIS_PASSWORD_FILE": "", "FLEET_REDIS_SENTINEL_PASSWORD": "",
                                     "FLEET_REDIS_SENTINEL_PASSWORD_FILE": "", **env})
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


def target(topology: Topology, sentinel_password: str | None) -> RedisTarget:
    env = {"FLEET_REDIS_PASSWORD": DATA_PASSWORD}
    if sentinel_password is not None:
        env["FLEET_REDIS_SENTINEL_PASSWORD"] = sentinel_password
    return RedisTarget.from_settings(topology.url(), FleetSettings(id=FLEET, redis_sentinel_master=MASTER), env=env)


def test_fleet_reaches_the_primary_through_sentinels_that_need_a_password(topology: Topology,
                                                                          tmp_path: Path) -> None:
    # the CLI: the Sentinel password from fleet.redis_sentinel_password_file, the data one from the environment
    code, shown = fleet_status(topology, config_file(tmp_path, SENTINEL_PASSWORD))
    assert code == 0 and "web" in shown, shown

    chosen = target(topology, SENTINEL_PASSWORD)
    client = connect(chosen)  # the console's, the probe's, the CLI's client
    client.set("fleet:sentinel-auth", "here")
    assert topology.node(topology.primary).get("fleet:sentinel-auth") == b"here"
    held = client.connection_pool.get_connection()  # Fleet's connection class behind Sentinel too
    assert isinstance(held, SentinelConnection)
    client.connection_pool.release(held)

    settings = chosen.celery_settings()
    options = {**settings["broker_transport_options"], "fleet_id": FLEET}
    with Connection(chosen.url, transport=SentinelTransport, password=chosen.password,
                    transport_options=options) as conn:
        queue = conn.SimpleQueue("fleet-sentinel-auth")
        queue.put({"n": 1})
        message = queue.get(timeout=10)
        assert message.payload == {"n": 1}
        message.ack()
        queue.close()

    topology.node(topology.primary).lpush("fleet-sentinel-auth-probe", "m1", "m2")
    assert Probe(chosen.register().url).waiting(["fleet-sentinel-auth-probe"]) == 2  # the autoscaler's probe

    app = Celery("sentinel-auth", broker=chosen.url, backend=chosen.url, set_as_current=False)
    app.conf.update(settings)
    app.backend.store_result("sentinel-auth-task", 42, "SUCCESS")
    assert app.backend.get_task_meta("sentinel-auth-task")["result"] == 42
    assert topology.node(topology.primary).exists("celery-task-meta-sentinel-auth-task")

    report = app.conf.humanize(with_defaults=False)  # what `celery report` shows: passwords masked
    assert "sentinel_kwargs" in report
    for text in (shown, repr(chosen), chosen.shown, report):
        assert SENTINEL_PASSWORD not in text and DATA_PASSWORD not in text


@pytest.mark.parametrize("case", ["a wrong Sentinel password", "no Sentinel password"])
def test_sentinels_that_refuse_the_credentials_are_one_clear_error(topology: Topology, tmp_path: Path,
                                                                   case: str) -> None:
    wrong = "wrong-" + "sentinel-pw" if case == "a wrong Sentinel password" else None
    started = time.monotonic()
    with pytest.raises(SentinelRefused) as refused:
        connect(target(topology, wrong)).ping()
    took = time.monotonic() - started
    reason = access_error(refused.value)
    expected = ("the Redis sentinels refused the credentials given for them (3 of 3;" if wrong else
                "the Redis sentinels need a password and none was given for them")
    assert reason is not None and reason.startswith(expected) and "FLEET_REDIS_SENTINEL_PASSWORD" in reason, reason
    assert took < 5, took
    # the console's health line says the same, not "unreachable"
    said = Health.redis_down(SimpleNamespace(where=topology.url()), refused.value)  # type: ignore[arg-type]
    assert said.startswith("Redis at sentinel://") and f"refused the console: {expected}" in said, said

    if wrong is None:  # the file names none: the environment's empty value counts as unset
        path = config_file(tmp_path, "")
        code, text = fleet_status(topology, path)
    else:  # the environment wins over the file, which has the right one
        code, text = fleet_status(topology, config_file(tmp_path, SENTINEL_PASSWORD),
                                  FLEET_REDIS_SENTINEL_PASSWORD=wrong)
    lines = [line for line in text.splitlines() if line.strip()]
    print(f"\n{case}: connect() refused after {took:.2f} s; fleet status: {lines[0] if lines else text}")
    assert code == 2, text
    assert len(lines) <= 3 and lines[0].startswith(f"error: {expected}"), text
    assert "cannot reach" not in text and "Traceback" not in text and "No master found" not in text, text
    for secret in (SENTINEL_PASSWORD, DATA_PASSWORD, wrong or SENTINEL_PASSWORD):
        assert secret not in text and secret not in reason


def test_the_sentinel_password_comes_from_the_environment_then_a_file_and_needs_a_sentinel_url(
        tmp_path: Path) -> None:
    secret = tmp_path / "sentinel-pw"
    secret.write_text("from-the-file\n")
    other = tmp_path / "sentinel-pw-2"
    other.write_text("from-env-file")
    fleet = FleetSettings(id=FLEET, redis_sentinel_master=MASTER, redis_sentinel_password_file=secret,
                          redis_sentinel_username="watcher")
    url = "sentinel://127.0.0.1:26379/0"
    assert RedisTarget.from_settings(url, fleet, env={}).sentinel_password == "from-the-file"
    assert RedisTarget.from_settings(url, fleet, env={"FLEET_REDIS_SENTINEL_PASSWORD_FILE": str(other)}) \
        .sentinel_password == "from-env-file"
    chosen = RedisTarget.from_settings(url, fleet, env={"FLEET_REDIS_SENTINEL_PASSWORD": "from-env",
                                                        "FLEET_REDIS_PASSWORD": "data"})
    assert chosen.sentinel_password == "from-env" and chosen.password == "data"
    assert "from-env" not in repr(chosen)
    sent = {"username": "watcher", "password": "from-env"}
    for key in ("broker_transport_options", "result_backend_transport_options"):
        options = chosen.celery_settings()[key]["sentinel_kwargs"]
        assert sent.items() <= options.items() and options["socket_timeout"] > 0  # Fleet's timeouts too
    assert chosen.redis_options().get("password") == "data"  # the data nodes get theirs, not the sentinels'
    with pytest.raises(ConfigError) as unreadable:
        RedisTarget.from_settings(url, fleet.model_copy(update={"redis_sentinel_password_file": tmp_path / "none"}),
                                  env={})
    assert "Sentinel password file" in str(unreadable.value)
    with pytest.raises(ConfigError):  # Sentinel credentials in [fleet] without a sentinel:// URL
        RedisTarget.from_settings("redis://127.0.0.1:6379/0", fleet, env={})


def test_a_control_plane_worker_refused_by_the_sentinels_stops_at_once(topology: Topology, tmp_path: Path) -> None:
    path = config_file(tmp_path, "wrong-" + "sentinel-pw")
    stack = Stack(load_config(path), path, redis_url=topology.url(), state_dir=tmp_path / "state", beat=False,
                  die_with_parent=True)
    env = {**stack.env("control"), "FLEET_REDIS_PASSWORD": DATA_PASSWORD, "FLEET_REDIS_PASSWORD_FILE": "",
           "FLEET_REDIS_SENTINEL_PASSWORD": "", "FLEET_REDIS_SENTINEL_PASSWORD_FILE": ""}
    started = time.monotonic()
    proc = subprocess.Popen(stack.argv("control"), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    took = time.monotonic() - started
    text = (out + err).decode(errors="replace")
    lines = [line for line in err.decode(errors="replace").splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, text[-2000:]
    assert len(lines) == 1 and "the Redis sentinels refused the credentials" in lines[0], lines
    assert "wrong-sentinel-pw" not in text and SENTINEL_PASSWORD not in text and DATA_PASSWORD not in text
    print(f"\na control-plane worker refused by the sentinels exited with 2 after {took:.1f} s")
