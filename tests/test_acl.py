"""Least privilege (fleet/acl.py): ACL users made from `fleet.acl.rules` on a real TLS redis-server
with a real control plane. The read-only user serves `fleet status` and the read-only console and
is refused a scale; the requester user scales and is refused `fleet status`; every refusal is one
short line naming the missing permission, never a stack trace nor "cannot reach"."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from prometheus_client import generate_latest

from fleet.acl import rules, setuser
from fleet.cli import main
from fleet.config import load_config
from fleet.console.app import ConsoleSettings, create_app
from fleet.metrics import registry_for
from fleet.testing.plane import Plane, plane
from tests.kits.tls_redis import USER, TLSRedis, tls_redis
from tests.test_redis_tls import LOCAL

DOCS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[TLSRedis, Plane]]:
    with tls_redis(tmp_path / "tls") as srv, \
            plane(tmp_path, LOCAL, fleet=srv.fleet_settings(), redis_url=srv.url, persist=False) as p:
        yield srv, p


def as_user(server: TLSRedis, p: Plane, tmp: Path, role: str) -> Path:
    """A config for a new ACL user in `role`, made with the rules `fleet acl` prints."""
    user = f"fleet-{role}"
    server.client().execute_command("ACL", "SETUSER", user, "reset", "on", f">{role}-pw",
                                    *rules(role, p.fleet_id, p.config.fleet.public_queue))
    secret = tmp / f"{role}-password"
    secret.write_text(f"{role}-pw")
    path = tmp / f"{role}.toml"
    path.write_text((tmp / "fleet.toml").read_text().replace(f'redis_username = "{USER}"', f'redis_username = "{user}"')
                    .replace(str(server.password_file), str(secret)))
    return path


def cli(config: Path, *args: str) -> tuple[int, str]:
    url = load_config(config).fleet.redis_url
    result = CliRunner().invoke(main, ["--config", str(config), *args], env={"FLEET_REDIS_URL": url})
    return result.exit_code, result.output


def refused(code: int, text: str) -> None:
    assert code == 2, text
    assert "lack of permission (NOPERM)" in text and "cannot reach" not in text, text
    assert "Traceback" not in text and len(text.strip().splitlines()) <= 3, text


def test_the_read_only_user_reads_status_and_the_console_and_may_not_scale(
        running: tuple[TLSRedis, Plane], tmp_path: Path) -> None:
    server, p = running
    assert cli(tmp_path / "fleet.toml", "scale", "local", "1", "--wait", "--timeout", "60")[0] == 0
    path = as_user(server, p, tmp_path, "read-only")
    code, text = cli(path, "status", "local")
    assert code == 0 and "local" in text, text
    code, text = cli(path, "events", "local")
    assert code == 0 and "launch" in text, text
    code, text = cli(path, "status", "--json")
    assert code == 0 and '"desired": 1' in text, text
    config = load_config(path)
    pages = create_app(config, config.fleet.redis_url or "", ConsoleSettings(read_only=True)).test_client()
    for route in ("/", "/clusters/local", "/api/clusters"):
        page = pages.get(route)
        assert page.status_code in (200, 404) and "unreachable" not in page.text, (route, page.text[:500])
    assert pages.get("/").status_code == 200 and pages.get("/clusters/local").status_code == 200
    code, text = cli(path, "scale", "local", "2")
    refused(code, text)
    assert p.call("fleet.status", "local")["desired"] == 1  # nothing changed
    p.r.set("other-key", "x")
    reader = redis.Redis(host="127.0.0.1", port=server.port, ssl=True, ssl_ca_certs=str(server.ca),
                         ssl_certfile=str(server.client_cert), ssl_keyfile=str(server.client_key),
                         username="fleet-read-only", password="read-only-pw", socket_timeout=5)
    scraped = generate_latest(registry_for(config, reader)).decode()  # `fleet metrics`
    assert 'cluster="local"' in scraped, scraped[:2000]
    with pytest.raises(redis.ResponseError, match="no permissions"):  # another key
        reader.get("other-key")
    with pytest.raises(redis.ResponseError, match="no permissions"):  # a write to its own fleet's keys
        reader.delete(f"fleet:{p.fleet_id}:local:desired")
    print(f"refused scale through the read-only user: {text.strip()}")


def test_the_requester_user_scales_and_may_not_read_status(running: tuple[TLSRedis, Plane], tmp_path: Path) -> None:
    server, p = running
    path = as_user(server, p, tmp_path, "requester")
    code, text = cli(path, "scale", "local", "1")
    assert code == 0 and "desired 1" in text, text
    assert p.call("fleet.status", "local")["desired"] == 1
    code, text = cli(path, "status", "local")
    refused(code, text)
    print(f"refused status through the requester user: {text.strip()}")


def test_fleet_acl_prints_the_lines_the_tests_use(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text('[fleet]\nid = "prod"\n')
    for role in ("control", "read-only", "requester"):
        result = CliRunner().invoke(main, ["--config", str(path), "acl", "--role", role])
        assert result.exit_code == 0, result.output
        assert result.output.strip() == setuser(role, "prod", f"fleet-{role}")
        assert f"redis-cli --tls ... {result.output.strip()}\n" in DOCS.read_text()  # the docs show it
    result = CliRunner().invoke(main, ["--config", str(path), "acl", "--role", "admin"])
    assert result.exit_code == 2 and "Traceback" not in result.output
