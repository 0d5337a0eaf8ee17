"""Fleet on a Redis that speaks TLS only, checks client certificates and lets in one ACL user,
with its password in a file (tests/kits/tls_redis.py): a control plane of real processes scales a
local cluster up and down through `fleet scale`, `fleet status` reads it, Fleet's own transport
still sets poison aside, and the password shows in no log, banner, status, event or Redis key.
A wrong password or a client certificate the server rejects stops a control-plane worker at once
with one clear line, and the CLI says so at once; a command the ACL user may not run is reported
as such, never as an unreachable broker."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleet.cli import main
from fleet.config import load_config
from fleet.console.app import create_app
from fleet.deadletters import dead_letter_key
from fleet.stack import Stack
from fleet.testing.plane import plane
from tests.conftest import PY, wait_for
from tests.kits.tls_redis import PASSWORD, USER, TLSRedis, tls_redis

LOCAL = f"""
    [clusters.local]
    provider = "local"
    max_workers = 4
    [clusters.local.container]
    command = {[PY, "-c", "import time; time.sleep(3600)"]!r}
    [clusters.local.provider_options]
    kill_grace = 2
""".replace("'", '"')


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TLSRedis]:
    with tls_redis(tmp_path / "tls") as srv:
        yield srv


def cli(config: Path, *args: str) -> tuple[int, str]:
    """`fleet --config CONFIG ARGS...` on the config's Redis (not the suite's FLEET_REDIS_URL)."""
    url = load_config(config).fleet.redis_url
    result = CliRunner().invoke(main, ["--config", str(config), *args], env={"FLEET_REDIS_URL": url})
    return result.exit_code, result.output


def test_a_control_plane_scales_a_local_cluster_over_tls_with_an_acl_user(server: TLSRedis, tmp_path: Path) -> None:
    with plane(tmp_path, LOCAL, fleet=server.fleet_settings(), redis_url=server.url, persist=False) as p:
        path = tmp_path / "fleet.toml"
        code, out = cli(path, "scale", "local", "2", "--wait", "--timeout", "60")
        assert code == 0, out
        code, shown = cli(path, "status", "local")
        assert code == 0 and "local" in shown, shown
        assert p.call("fleet.status", "local")["handles"] == 2

        # Fleet's transport serves rediss://: poison on the public queue is set aside, not fatal
        mark = "POISON-" + uuid.uuid4().hex
        p.r.lpush(p.config.fleet.public_queue, b"\xff not json " + mark.encode())
        wait_for(lambda: p.r.llen(dead_letter_key(p.fleet_id)) >= 1, timeout=30, what="the poison set aside")
        assert p.call("fleet.status", "local")["desired"] == 2  # the worker lives on

        pages = create_app(p.config, server.url).test_client()
        overview, cluster = pages.get("/"), pages.get("/clusters/local")
        assert overview.status_code == 200 and cluster.status_code == 200
        assert "unreachable" not in overview.text and "local" in cluster.text
        console = overview.text + cluster.text

        code, out = cli(path, "scale", "local", "0", "--wait", "--timeout", "60")
        assert code == 0, out
        after = p.call("fleet.status", "local")
        assert after["desired"] == 0 and not after["handles"], after
        keys = list(p.r.scan_iter("*"))
        stored = b"".join(p.r.dump(k) or b"" for k in keys)
    log = p.log.read_text(errors="replace")
    assert f"fleet-redis://{USER}:**@127.0.0.1:{server.port}" in log  # the worker's banner: masked
    assert "fleet-redis" in log  # Fleet's own transport, not kombu's default
    assert mark not in log  # the poison's payload is kept in the dead-letter list, never logged
    for text in (log, shown, out, console, stored.decode(errors="replace")):
        assert PASSWORD not in text


def bad_config(tmp: Path, server: TLSRedis, *, cert: bool = True, password: str = PASSWORD) -> Path:
    secret = tmp / "other-password"
    secret.write_text(password)
    path = tmp / "bad.toml"
    path.write_text(f'[fleet]\nid = "bad{uuid.uuid4().hex[:6]}"\nstate_dir = "{tmp / "state"}"\n'
                    + server.fleet_settings(cert=cert, password_file=secret) + textwrap.dedent(LOCAL))
    return path


@pytest.mark.parametrize(("case", "expected", "role"), [
    ("a wrong password", "Redis refused the credentials", "control"),
    ("a client certificate from another CA", "the TLS handshake with Redis failed", "control"),
    ("a wrong password", "Redis refused the credentials", "beat"),
])
def test_a_control_plane_worker_that_is_refused_stops_at_once(server: TLSRedis, tmp_path: Path, case: str,
                                                              expected: str, role: str) -> None:
    path = bad_config(tmp_path, server, cert=case != "a client certificate from another CA",
                      password="wrong" if case == "a wrong password" else PASSWORD)
    stack = Stack(load_config(path), path, redis_url=server.url, state_dir=tmp_path / "state", beat=False,
                  die_with_parent=True)
    stack.state_dir.mkdir(parents=True, exist_ok=True)  # (beat's schedule file)
    started = time.monotonic()
    proc = subprocess.Popen(stack.argv(role), env={**stack.env(role), "FLEET_REDIS_PASSWORD": ""},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    took = time.monotonic() - started
    lines = [line for line in err.decode(errors="replace").splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, err.decode(errors="replace")[-2000:]
    assert len(lines) == 1 and expected in lines[0], lines
    assert PASSWORD not in (out + err).decode(errors="replace") and "wrong" not in lines[0]
    print(f"{case}: the {role} process exited with 2 after {took:.1f} s")

    code, text = cli(path, "status")
    assert code == 2 and expected in text and "cannot reach" not in text, text


def test_a_command_the_acl_user_may_not_run_is_reported_as_such(server: TLSRedis, tmp_path: Path) -> None:
    # everything but LPUSH: `fleet scale` reads, then Celery's publish of fleet.scale is refused
    server.client().execute_command("ACL", "SETUSER", "reader", "on", ">reader-pw", "~*", "&*", "+@all", "-lpush")
    path = bad_config(tmp_path, server, password="reader-pw")
    path.write_text(path.read_text().replace(f'redis_username = "{USER}"', 'redis_username = "reader"'))
    code, text = cli(path, "scale", "local", "1")
    assert code == 2, text
    assert "lack of permission (NOPERM)" in text and "'lpush'" in text, text
    assert "cannot reach" not in text
    # fewer rights still: a read the CLI needs is refused
    server.client().execute_command("ACL", "SETUSER", "reader", "reset", "on", ">reader-pw", "~*", "+ping")
    code, text = cli(path, "status")
    assert code == 2 and "lack of permission (NOPERM)" in text and "cannot reach" not in text, text


def test_the_password_comes_from_the_environment_before_the_file(server: TLSRedis, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = bad_config(tmp_path, server, password="wrong")
    monkeypatch.setenv("FLEET_REDIS_PASSWORD", PASSWORD)
    code, text = cli(path, "status")
    assert code == 0, text
    monkeypatch.delenv("FLEET_REDIS_PASSWORD")
    secret = tmp_path / "env-file"
    secret.write_text(PASSWORD + "\n")
    monkeypatch.setenv("FLEET_REDIS_PASSWORD_FILE", str(secret))
    code, text = cli(path, "status")
    assert code == 0, text
    assert PASSWORD not in text


def test_no_password_shows_in_the_banner_when_none_is_set(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text('[fleet]\nid = "banner"\n')
    code = ("from tasks import app; print(app.connection_for_write().as_uri())")
    env = {**os.environ, "FLEET_CONFIG": str(path), "FLEET_REDIS_URL": "redis://127.0.0.1:1/3",
           "FLEET_REDIS_PASSWORD": ""}
    env.pop("FLEET_REDIS_PASSWORD_FILE", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "fleet-redis://127.0.0.1:1/3", done.stdout + done.stderr
    env["FLEET_REDIS_PASSWORD"] = PASSWORD
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "fleet-redis://:**@127.0.0.1:1/3", done.stdout + done.stderr
