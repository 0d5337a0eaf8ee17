"""`container.secrets` (fleet.secrets) and the guarantee that no secret or env value reaches any
output: config validation, the local and docker providers (values read at launch from the
control plane's environment or a file), and a provider error of a command whose `${VAR}`
expands to a secret, searched for in events, status, the console, Redis and logs. The clouds:
tests/test_secrets_cloud.py."""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from fleet.config import parse_config
from fleet.errors import ConfigError, PermanentProviderError
from fleet.provider import Cluster, ContainerSpec, Hardware, ProviderContext
from fleet.secrets import redact, resolve_local, scrub
from tests.conftest import REDIS_URL, inline, wait_for, work

AWS_OPTIONS = {"ami": "ami-1"}
ECS_OPTIONS = {"cluster": "c", "task_definition": "t", "subnets": ["subnet-1"]}
GCE_OPTIONS = {"project": "p", "zone": "z", "source_image": "i"}
SM_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:broker-AbCdEf"
SSM_ARN = "arn:aws:ssm:us-east-1:123456789012:parameter/fleet/broker"


def unique() -> str:
    """A value no output could contain by chance."""
    return "s3cr3t-" + uuid.uuid4().hex


def config(provider: str, secrets: dict[str, str], options: dict[str, Any] | None = None,
           **container: Any) -> dict[str, Any]:
    return {"fleet": {"id": "sec"}, "clusters": {"c": {
        "provider": provider, "provider_options": options or {},
        "container": {"command": ["worker"], "secrets": secrets, **container}}}}


def redis_dump(r: redis.Redis, pattern: str) -> str:
    """Every key matching `pattern` and every value in it, as one text to search."""
    out: list[str] = []
    read = {"string": lambda k: r.get(k), "hash": lambda k: r.hgetall(k), "list": lambda k: r.lrange(k, 0, -1),
            "set": lambda k: r.smembers(k), "zset": lambda k: r.zrange(k, 0, -1, withscores=True),
            "stream": lambda k: r.xrange(k)}
    for key in r.scan_iter(match=pattern):
        kind = r.type(key).decode()
        value = read[kind](key) if kind in read else None
        out.append(f"{key!r} {value!r}")
    return "\n".join(out)


# -- the config ----------------------------------------------------------------------------

@pytest.mark.parametrize("provider,options,secrets", [
    ("local", {}, {"A": "env:BROKER_PASSWORD", "B": "file:/run/secrets/broker"}),
    ("docker", {}, {"A": "env:X"}),
    ("aws_ec2", AWS_OPTIONS, {"A": "ssm:/fleet/broker", "B": "secretsmanager:broker", "C": "ssm:" + SSM_ARN,
                              "D": "secretsmanager:" + SM_ARN}),
    ("aws_ecs", ECS_OPTIONS, {"A": "ssm:/fleet/broker", "B": "secretsmanager:" + SM_ARN}),
    ("gce", GCE_OPTIONS, {"A": "gcp:projects/p-1/secrets/broker/versions/latest",
                          "B": "gcp:projects/p-1/secrets/broker/versions/3"}),
])
def test_references_each_provider_serves_are_accepted(provider: str, options: dict[str, Any],
                                                      secrets: dict[str, str]) -> None:
    spec = parse_config(config(provider, secrets, options)).spec("c")
    assert spec.container.secrets == secrets
    # a changed reference is a new revision (its workers are rolled), as a changed env is
    again = parse_config(config(provider, {**secrets, "A": "env:OTHER" if provider in ("local", "docker")
                                           else secrets["B"]}, options)).spec("c")
    assert again.revision("") != spec.revision("")


def test_a_cluster_without_secrets_keeps_its_revision() -> None:
    """The revision hashes what it hashed before `secrets` existed: an upgrade rolls no worker."""
    import hashlib

    spec = parse_config(config("local", {}, env={"A": "b"})).spec("c")
    before = {"container": {"command": ["worker"], "env": {"A": "b"}, "image": ""},
              "hardware": spec.hardware.model_dump(mode="json"), "workers_per_container": 1, "provider": "local",
              "provider_options": {}}
    assert spec.revision("") == hashlib.sha1(json.dumps(before, sort_keys=True).encode()).hexdigest()[:12]


@pytest.mark.parametrize("secrets,words", [
    ({"A": "BROKER_PASSWORD"}, "container.secrets.A: Value error, 'BROKER_PASSWORD' is not a secret reference"),
    ({"A": "vault:x"}, "is not a secret reference: start it with one of ssm:, secretsmanager:, gcp:, env:, file:"),
    ({"A": "env:1X"}, "container.secrets.A: Value error, 'env:1X' is not a valid env reference"),
    ({"A": "file:relative/path"}, "is not a valid file reference: write file:/absolute/path"),
    ({"A": "ssm:bad name"}, "is not a valid ssm reference"),
    ({"A": "gcp:projects/p/secrets/s"}, "write gcp:projects/<project>/secrets/<secret>/versions/<number or latest>"),
    ({"1A": "env:X"}, "secret name '1A' is not an environment variable name"),
    ({"FLEET_ID": "env:X"}, "secret name 'FLEET_ID': the FLEET_ prefix is Fleet's own"),
])
def test_bad_references_are_config_errors_naming_the_field(secrets: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config("local", secrets), "fleet.toml")
    assert str(caught.value).startswith("fleet.toml: clusters.c.container.secrets")
    assert words in str(caught.value)


def test_a_name_in_both_env_and_secrets_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"clusters.c.container: Value error, PW: in both env and secrets"):
        parse_config(config("local", {"PW": "env:X"}, env={"PW": "x"}))


@pytest.mark.parametrize("provider,options,ref,words", [
    ("local", {}, "ssm:/fleet/broker", "provider 'local': this provider cannot serve ssm: references "
                                       "(it serves: env:, file:)"),
    ("docker", {}, "gcp:projects/p/secrets/s/versions/1", "cannot serve gcp: references"),
    ("aws_ec2", AWS_OPTIONS, "env:X", "provider 'aws_ec2': this provider cannot serve env: references "
                                      "(it serves: secretsmanager:, ssm:)"),
    ("aws_ecs", ECS_OPTIONS, "file:/x", "cannot serve file: references"),
    ("aws_ecs", ECS_OPTIONS, "secretsmanager:broker", "ECS takes a Secrets Manager secret by its full ARN"),
    ("gce", GCE_OPTIONS, "ssm:/x", "provider 'gce': this provider cannot serve ssm: references (it serves: gcp:)"),
    ("memory", {}, "env:X", "provider 'memory': this provider cannot serve env: references (it serves: none)"),
])
def test_a_provider_refuses_references_it_cannot_serve(provider: str, options: dict[str, Any], ref: str,
                                                       words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config(provider, {"BROKER": ref}, options), "fleet.toml")
    assert str(caught.value).startswith("fleet.toml: clusters.c.container.secrets.BROKER: ")
    assert words in str(caught.value)


def test_pools_are_checked_each_against_its_provider() -> None:
    data = config("local", {"A": "env:X"})
    cluster = data["clusters"]["c"]
    del cluster["provider"], cluster["provider_options"]
    cluster["pools"] = [{"name": "here", "provider": "local"}, {"name": "ec2", "provider": "aws_ec2",
                                                                  "provider_options": AWS_OPTIONS}]
    with pytest.raises(ConfigError, match=r"clusters.c.container.secrets.A: provider 'aws_ec2'"):
        parse_config(data)


# -- helpers: resolution, redaction ---------------------------------------------------------

def test_local_references_resolve_and_failures_name_the_secret_never_a_value(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    value, other = unique(), unique()
    monkeypatch.setenv("FLEET_TEST_SECRET", value)
    (tmp_path / "pw").write_text(other + "\n")
    assert resolve_local("c", {"A": "env:FLEET_TEST_SECRET", "B": f"file:{tmp_path}/pw"}) == {"A": value, "B": other}
    with pytest.raises(PermanentProviderError, match=r"container.secrets.A \(env:NOPE_NOT_SET\): the control plane "
                                                     "has no environment variable NOPE_NOT_SET"):
        resolve_local("c", {"A": "env:NOPE_NOT_SET"})
    with pytest.raises(PermanentProviderError, match="cannot read the file: No such file or directory"):
        resolve_local("c", {"A": f"file:{tmp_path}/missing"})
    with pytest.raises(PermanentProviderError, match="this provider cannot read ssm secrets"):
        resolve_local("c", {"A": "ssm:/x"})


def test_scrub_cuts_values_out_of_an_error_and_its_chain() -> None:
    value = unique()
    try:
        try:
            raise OSError(f"exec {value}: no such file")
        except OSError as inner:
            raise PermanentProviderError(f"cannot start {value}", f"OSError: {inner}") from inner
    except PermanentProviderError as exc:
        caught = scrub(exc, [value, "ab"])
    assert value not in str(caught) and value not in repr(caught.args) and caught.__cause__ is None
    assert str(caught) == "cannot start *** (cause: OSError: exec ***: no such file)"
    assert redact("a-b-c abcd", ["abcd", "a-b-c"]) == "*** ***" and redact("xy", ["x"]) == "xy"  # too short: kept


# -- local: values reach the process, never an output --------------------------------------

def _search_outputs(fleet_id: str, cluster: str, manager: Any, tmp_path: Path, text_file: Path,
                    log_text: str) -> str:
    """Everything Fleet shows or keeps about `cluster`: events, `fleet status --json`, every Redis
    key of the fleet with its value, the worker logs and the control plane's log records."""
    events = json.dumps(manager.queries.events(cluster, 200))
    result = CliRunner().invoke(__import__("fleet.cli", fromlist=["main"]).main,
                                ["--config", str(text_file), "status", cluster, "--json"],
                                env={"FLEET_REDIS_URL": REDIS_URL})
    assert result.exit_code == 0, result.output
    logs = "\n".join(p.read_text(errors="replace") for p in tmp_path.rglob("*.log"))
    pages = _console_pages(manager.config, cluster)
    return "\n".join([events, result.output, redis_dump(redis.Redis.from_url(REDIS_URL), f"fleet:{fleet_id}:*"),
                      logs, log_text, pages])


def _console_pages(config: Any, cluster: str) -> str:
    """The console's overview, cluster and events pages, as HTML and as JSON."""
    from fleet.console.app import create_app

    client = create_app(config, REDIS_URL).test_client()
    out = []
    for path in ("/", f"/clusters/{cluster}", f"/clusters/{cluster}/events"):
        for query in ("", "?format=json"):
            answer = client.get(path + query)
            assert answer.status_code == 200, (path, answer.status_code)
            out.append(answer.get_data(as_text=True))
    return "\n".join(out)


def _write_config(path: Path, fleet_id: str, state: Path, clusters: dict[str, Any]) -> None:
    lines = [f'[fleet]\nid = "{fleet_id}"\nstate_dir = "{state}"\n']
    for name, c in clusters.items():
        lines.append(f"[clusters.{name}]\nprovider = \"{c['provider']}\"\n")
        lines.append(f"[clusters.{name}.container]\ncommand = {json.dumps(c['container']['command'])}\n"
                     f"env = {{ {', '.join(f'{k} = {json.dumps(v)}' for k, v in c['container'].get('env', {}).items())} }}\n"
                     f"secrets = {{ {', '.join(f'{k} = {json.dumps(v)}' for k, v in c['container'].get('secrets', {}).items())} }}\n")
    path.write_text("".join(lines))


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    value = unique()
    monkeypatch.setenv("FLEET_TEST_BROKER_PASSWORD", value)
    yield value


@pytest.mark.parametrize("via", ["env", "secret"])
def test_a_command_expanded_to_a_secret_fails_without_the_value_in_any_output(
        fid: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, secret_env: str, via: str) -> None:
    """The command's first element is `${SECRET_VAR}`, which expands to a path that does not
    exist and holds a unique value: the launch fails for good, and the value is nowhere."""
    value = "/nonexistent/" + secret_env
    if via == "env":
        container = {"command": ["${SECRET_VAR}", "--flag"], "env": {"SECRET_VAR": value}}
    else:
        os.environ["FLEET_TEST_BROKER_PASSWORD"] = value  # restored by the fixture's monkeypatch
        container = {"command": ["${SECRET_VAR}", "--flag"], "secrets": {"SECRET_VAR": "env:FLEET_TEST_BROKER_PASSWORD"}}
    clusters = {"bad": {"provider": "local", "max_workers": 2, "container": container}}
    caplog.set_level(logging.DEBUG)
    manager, dispatcher = inline(fid, clusters, tmp_path / "state")
    manager.api.scale("bad", 1)
    work(dispatcher)
    events = manager.queries.events("bad", 200)
    failed = [e for e in events if e.get("kind") == "error" or e.get("error")]
    assert failed and "PermanentProviderError" in json.dumps(failed), events
    assert "cannot start container.command[0] '${SECRET_VAR}'" in json.dumps(failed)
    assert "No such file or directory" in json.dumps(failed)
    assert "cannot start container.command[0]" in json.dumps(manager.queries.status("bad"))  # the hold says why
    _write_config(tmp_path / "fleet.toml", fid, tmp_path / "state", clusters)
    seen = _search_outputs(fid, "bad", manager, tmp_path, tmp_path / "fleet.toml", caplog.text)
    assert seen.count("${SECRET_VAR}") >= 3  # the outputs were searched, and they name the command as written
    assert secret_env not in seen


def test_local_secrets_reach_the_process_and_nothing_else(fid: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                          secret_env: str) -> None:
    from providers.local import LocalProvider

    file_value = unique()
    (tmp_path / "pw").write_text(file_value)
    out = tmp_path / "out"
    out.mkdir()
    dump = ("import os,json,time; open(os.environ['OUT']+'/'+os.environ['FLEET_HANDLE'],'w')"
            ".write(json.dumps(dict(os.environ))); time.sleep(3600)")
    clusters = {"ok": {"provider": "local", "max_workers": 2, "provider_options": {"kill_grace": 1}, "container": {
        "command": [sys.executable, "-c", dump], "env": {"OUT": str(out)},
        "secrets": {"BROKER_PASSWORD": "env:FLEET_TEST_BROKER_PASSWORD", "API_TOKEN": f"file:{tmp_path}/pw"}}}}
    caplog.set_level(logging.DEBUG)
    manager, dispatcher = inline(fid, clusters, tmp_path / "state")
    try:
        manager.api.scale("ok", 1)
        work(dispatcher)
        (handle,) = manager.store.read("ok").handles
        env = json.loads(wait_for(lambda: (out / handle).exists() and (out / handle).read_text(), timeout=20,
                                  what="the worker's environment"))
        assert (env["BROKER_PASSWORD"], env["API_TOKEN"]) == (secret_env, file_value)
        _write_config(tmp_path / "fleet.toml", fid, tmp_path / "state", clusters)
        seen = _search_outputs(fid, "ok", manager, tmp_path, tmp_path / "fleet.toml", caplog.text)
        assert handle in seen
        assert secret_env not in seen and file_value not in seen
    finally:
        provider = LocalProvider(ProviderContext(fid, tmp_path / "state"))
        ref = Cluster(fid, "ok", 1, LocalProvider.validate_options({"kill_grace": 1}))
        provider.kill_workers(ref, list(provider.list_workers(ref)))


# -- docker: the container spec podman gets ------------------------------------------------

def test_docker_secrets_go_into_the_container_env_and_no_error_names_a_value(
        podman: Any, tmp_path: Path, secret_env: str) -> None:
    from providers.docker import DockerProvider
    from tests.kits.docker import docker_options

    fleet_id = "d" + uuid.uuid4().hex[:8]
    provider = DockerProvider(ProviderContext(fleet_id, tmp_path))
    cluster = Cluster(fleet_id, "dk", 1, docker_options(podman))
    file_value = unique()
    (tmp_path / "pw").write_text(file_value)
    secrets = {"BROKER_PASSWORD": "env:FLEET_TEST_BROKER_PASSWORD", "API_TOKEN": f"file:{tmp_path}/pw"}
    api = podman.client().api
    try:
        ok = ContainerSpec(image=podman.image, command=("sleep", "3600"), secrets=secrets)
        (h,) = provider.run_workers(cluster, ok, Hardware(cpu=0.5, memory_mb=256), 1, launch_id=uuid.uuid4().hex)
        env = dict(item.split("=", 1) for item in api.inspect_container(h)["Config"]["Env"])
        assert (env["BROKER_PASSWORD"], env["API_TOKEN"]) == (secret_env, file_value)
        assert file_value not in json.dumps(api.inspect_container(h)["Config"]["Labels"])
        # a command that expands to a secret and cannot run: the engine's error quotes it; ours does not
        bad = ContainerSpec(image=podman.image, command=("${API_TOKEN}",), secrets=secrets)
        with pytest.raises(PermanentProviderError) as caught:
            provider.run_workers(cluster, bad, Hardware(cpu=0.5, memory_mb=256), 1, launch_id=uuid.uuid4().hex)
        text = f"{caught.value} {caught.value.args!r} {caught.value.__cause__!r} {caught.value.__context__!r}"
        assert file_value not in text
        assert "***" in text  # the engine's error did quote the command
    finally:
        for c in api.containers(all=True, filters={"label": [f"fleet.id={fleet_id}"]}):
            api.remove_container(c["Id"], force=True)
