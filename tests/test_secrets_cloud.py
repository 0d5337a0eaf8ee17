"""`container.secrets` on the clouds: EC2 user data and ECS task definitions against moto's SSM
and Secrets Manager, GCE metadata against the fake Compute server. Each value is unique and
searched for in everything the cloud would show; the boot scripts are run for real against
stand-ins answered by moto (AWS) or canned Secret Manager answers (GCE)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from fleet.errors import PermanentProviderError
from fleet.provider import Cluster, ContainerSpec, Hardware, ProviderContext


def unique() -> str:
    """A value no output could contain by chance."""
    return "s3cr3t-" + uuid.uuid4().hex


# -- AWS: moto's SSM and Secrets Manager -----------------------------------------------------

def _tool(bin_: Path, name: str, body: str, shebang: str = "/bin/sh") -> None:
    path = bin_ / name
    path.write_text(f"#!{shebang}\n{body}\n")
    path.chmod(0o755)


def _aws_stand_in(bin_: Path, url: str, record: Path) -> None:
    """`aws ssm get-parameter` and `aws secretsmanager get-secret-value`, answered by moto's SSM
    and Secrets Manager through boto3 (the AWS CLI is not installed here)."""
    _tool(bin_, "aws", f"""import sys, boto3
a = sys.argv[1:]
open({str(record)!r}, "a").write(" ".join(a) + "\\n")
opt = lambda n: a[a.index(n) + 1]
assert a[-4:] in (["--query", "Parameter.Value", "--output", "text"], ["--query", "SecretString", "--output", "text"])
try:
    if a[:2] == ["ssm", "get-parameter"] and "--with-decryption" in a:
        v = boto3.client("ssm", endpoint_url={url!r}).get_parameter(Name=opt("--name"), WithDecryption=True)
        print(v["Parameter"]["Value"])
    elif a[:2] == ["secretsmanager", "get-secret-value"]:
        print(boto3.client("secretsmanager", endpoint_url={url!r}).get_secret_value(SecretId=opt("--secret-id"))["SecretString"])
    else:
        sys.exit(2)
except Exception as exc:
    print(type(exc).__name__, file=sys.stderr)
    sys.exit(254)""", shebang=sys.executable)


@pytest.fixture
def aws_secrets(aws_world: Any) -> dict[str, Any]:
    """A SecureString parameter and a secret in moto, each with a unique value."""
    import boto3

    ssm = boto3.client("ssm", endpoint_url=aws_world.url, region_name="us-east-1")
    sm = boto3.client("secretsmanager", endpoint_url=aws_world.url, region_name="us-east-1")
    name, password, token = f"/fleet/{uuid.uuid4().hex}/broker", unique(), unique()
    ssm.put_parameter(Name=name, Value=password, Type="SecureString")
    arn = sm.create_secret(Name=f"fleet-{uuid.uuid4().hex}", SecretString=token)["ARN"]
    return {"param": name, "password": password, "arn": arn, "token": token,
            "secrets": {"BROKER_PASSWORD": f"ssm:{name}", "API_TOKEN": f"secretsmanager:{arn}"}}


@pytest.mark.parametrize("types", [{}, {"instance_types": ["t3.micro", "t3.small"]}], ids=["run-instances", "fleet"])
def test_ec2_user_data_holds_references_and_the_boot_fetches_the_values(
        aws_world: Any, aws_secrets: dict[str, Any], tmp_path: Path, types: dict[str, Any]) -> None:
    import base64

    from providers.aws_ec2 import EC2Provider

    fid = "e" + uuid.uuid4().hex[:8]
    provider = EC2Provider(ProviderContext(fid, tmp_path))
    cluster = Cluster(fid, "ec2", 1, EC2Provider.validate_options(aws_world.ec2_options(**types)))
    container = ContainerSpec(command=("celery", "worker"), env={"QUEUE": "jobs"}, secrets=aws_secrets["secrets"])
    values = (aws_secrets["password"], aws_secrets["token"])
    (iid,) = provider.run_workers(cluster, container, Hardware(cpu=1, memory_mb=512), 1, launch_id=uuid.uuid4().hex)
    try:
        client = provider.client(cluster)
        raw = client.describe_instance_attribute(InstanceId=iid, Attribute="userData")["UserData"]["Value"]
        script = base64.b64decode(raw).decode()
        seen = script + json.dumps(client.describe_instances(InstanceIds=[iid]), default=str)
        seen += json.dumps(client.describe_launch_template_versions(Versions=["$Latest"], Filters=[
            {"Name": "tag:fleet:id", "Values": [fid]}]) if types else {}, default=str)
        assert not any(v in seen for v in values)
        assert f"aws ssm get-parameter --with-decryption --name {aws_secrets['param']}" in script
        assert f"aws secretsmanager get-secret-value --secret-id {aws_secrets['arn']}" in script
        # the boot, for real: the values come from moto with the "instance role" (the test's keys)
        bin_, out = tmp_path / "bin", tmp_path / "out"
        bin_.mkdir()
        _aws_stand_in(bin_, aws_world.url, tmp_path / "aws-calls")
        _tool(bin_, "curl", 'case "$*" in *api/token*) echo tok ;; *placement/region*) echo us-east-1 ;; '
                            '*instance-id*) echo i-0feedfacecafe1234 ;; *) exit 22 ;; esac')
        _tool(bin_, "celery", f'env | grep -E "^(BROKER_PASSWORD|API_TOKEN|QUEUE|AWS_DEFAULT_REGION)=" | sort > {out}')
        _tool(bin_, "shutdown", f'echo "shutdown $*" >> {out}.shutdown')
        env = {k: v for k, v in os.environ.items() if k != "AWS_DEFAULT_REGION"}
        done = subprocess.run(["sh", "-c", script], env={**env, "PATH": f"{bin_}:/usr/bin:/bin"}, timeout=60,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert out.read_text().splitlines() == [f"API_TOKEN={aws_secrets['token']}", "AWS_DEFAULT_REGION=us-east-1",
                                                f"BROKER_PASSWORD={aws_secrets['password']}", "QUEUE=jobs"]
        assert not any(v in done.stdout + done.stderr for v in values)
        # a secret the role cannot read: the worker never runs, the instance powers off
        (tmp_path / "out.shutdown").unlink()
        out.unlink()
        missing = script.replace(aws_secrets["param"], aws_secrets["param"] + "-gone")
        done = subprocess.run(["sh", "-c", missing], env={**env, "PATH": f"{bin_}:/usr/bin:/bin"}, timeout=60,
                              capture_output=True, text=True)
        assert done.returncode == 1 and not out.exists()
        assert "fleet: cannot read secret BROKER_PASSWORD (ssm)" in done.stderr
        assert (tmp_path / "out.shutdown").read_text() == "shutdown -h now\n"
    finally:
        provider.kill_workers(cluster, [iid])


def test_ecs_runs_a_task_definition_with_secrets_value_from_and_no_value_anywhere(
        aws_world: Any, aws_secrets: dict[str, Any], tmp_path: Path) -> None:
    from providers import ecs_secrets
    from providers.aws_ecs import ECSProvider

    fid = "c" + uuid.uuid4().hex[:8]
    provider = ECSProvider(ProviderContext(fid, tmp_path))
    family = f"fleet-secrets-{uuid.uuid4().hex[:8]}"
    base: dict[str, Any] = {"family": family, "requiresCompatibilities": ["FARGATE"], "networkMode": "awsvpc",
                            "cpu": "256", "memory": "512", "containerDefinitions": [
                                {"name": "worker", "image": "busybox", "memory": 512, "essential": True}]}
    cluster = Cluster(fid, "ecs", 1, ECSProvider.validate_options(aws_world.ecs_options(task_definition=family)))
    client = provider.client(cluster)
    client.register_task_definition(**base)  # no execution role: ECS could not read the secrets
    container = ContainerSpec(command=("celery", "worker"), env={"QUEUE": "jobs"}, secrets=aws_secrets["secrets"])
    values = (aws_secrets["password"], aws_secrets["token"])
    with pytest.raises(PermanentProviderError, match="has no executionRoleArn"):
        provider.run_workers(cluster, container, Hardware(cpu=0.25, memory_mb=512), 1, launch_id=uuid.uuid4().hex)
    client.register_task_definition(**base, executionRoleArn="arn:aws:iam::123456789012:role/fleet-exec")
    calls: list[str] = []
    client.meta.events.register("before-call", lambda model, **_: calls.append(model.name))
    handles = provider.run_workers(cluster, container, Hardware(cpu=0.25, memory_mb=512), 2, launch_id=uuid.uuid4().hex)
    try:
        tasks = client.describe_tasks(cluster=aws_world.ecs_cluster, tasks=handles)["tasks"]
        (used,) = {t["taskDefinitionArn"] for t in tasks}
        definition = client.describe_task_definition(taskDefinition=used)["taskDefinition"]
        seen = json.dumps(tasks, default=str) + json.dumps(definition, default=str)
        assert not any(v in seen for v in values)
        (worker,) = definition["containerDefinitions"]
        assert {s["name"]: s["valueFrom"] for s in worker["secrets"]} == {
            "BROKER_PASSWORD": aws_secrets["param"], "API_TOKEN": aws_secrets["arn"]}
        assert definition["executionRoleArn"].endswith("role/fleet-exec") and definition["family"].startswith(
            family + "-fleet-")
        overrides = tasks[0]["overrides"]["containerOverrides"][0]
        assert {e["name"] for e in overrides["environment"]} >= {"QUEUE", "FLEET_ID"}
        assert calls.count("RegisterTaskDefinition") == 1
        # the next launch, and another process's (nothing cached), reuse it: no new revision
        ecs_secrets._known.clear()
        more = provider.run_workers(cluster, container, Hardware(cpu=0.25, memory_mb=512), 1, launch_id=uuid.uuid4().hex)
        handles += more
        assert calls.count("RegisterTaskDefinition") == 1
        assert client.describe_tasks(cluster=aws_world.ecs_cluster, tasks=more)["tasks"][0]["taskDefinitionArn"] == used
    finally:
        provider.kill_workers(cluster, handles)


# -- GCE: the fake Compute server ------------------------------------------------------------

def test_gce_metadata_holds_references_and_the_boot_reads_secret_manager(
        gce_server: Any, tmp_path: Path) -> None:
    import base64

    from providers.boot_secrets import METADATA_TOKEN, SECRET_MANAGER
    from providers.gce import METADATA_NAME, GCEProvider
    from tests.kits.gce import PROJECT, ZONE, gce_options

    fake, url = gce_server
    fake.clear_faults()
    fid = "g" + uuid.uuid4().hex[:8]
    provider = GCEProvider(ProviderContext(fid, tmp_path))
    value = unique()
    ref = "projects/fleet-test/secrets/broker/versions/latest"
    container = ContainerSpec(command=("celery", "worker"), env={"QUEUE": "jobs"},
                              secrets={"BROKER_PASSWORD": f"gcp:{ref}"})
    bare = Cluster(fid, "gce", 1, GCEProvider.validate_options(gce_options(url)))
    with pytest.raises(PermanentProviderError, match=r"set provider_options\.service_account_email"):
        provider.run_workers(bare, container, Hardware(cpu=0.25, memory_mb=512), 1, launch_id=uuid.uuid4().hex)
    cluster = Cluster(fid, "gce", 1, GCEProvider.validate_options(gce_options(
        url, service_account_email="w@fleet-test.iam.gserviceaccount.com")))
    (name,) = provider.run_workers(cluster, container, Hardware(cpu=0.25, memory_mb=512), 1, launch_id=uuid.uuid4().hex)
    try:
        body = fake.get(PROJECT, ZONE, name) or {}
        script = {i["key"]: i["value"] for i in body["metadata"]["items"]}["startup-script"]
        assert f"BROKER_PASSWORD=$(fleet_secret {ref})" in script and value not in json.dumps(body)
        # the boot, for real: a token from the metadata server, the version's payload from the REST API
        bin_, out = tmp_path / "bin", tmp_path / "out"
        bin_.mkdir()
        token_json = '{\n  "access_token": "ya29.tok",\n  "expires_in": 3599,\n  "token_type": "Bearer"\n}'
        payload = base64.b64encode(value.encode()).decode()
        access_json = f'{{\n  "name": "{ref}",\n  "payload": {{\n    "data": "{payload}",\n    "dataCrc32c": "42"\n  }}\n}}'
        _tool(bin_, "curl", f"case \"$*\" in\n"
                            f"  *'Metadata-Flavor: Google'*{METADATA_TOKEN}*) printf '%s' '{token_json}' ;;\n"
                            f"  *'Bearer ya29.tok'*{SECRET_MANAGER}/{ref}:access*) printf '%s' '{access_json}' ;;\n"
                            f"  *'Metadata-Flavor: Google'*{METADATA_NAME}*) echo {name} ;;\n"
                            "  *) exit 22 ;;\nesac")
        _tool(bin_, "celery", f'env | grep -E "^(BROKER_PASSWORD|QUEUE)=" | sort > {out}')
        _tool(bin_, "shutdown", f'echo "shutdown $*" >> {out}.shutdown')
        done = subprocess.run(["bash", "-c", script], env={**os.environ, "PATH": f"{bin_}:/usr/bin:/bin"},
                              timeout=60, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert out.read_text().splitlines() == [f"BROKER_PASSWORD={value}", "QUEUE=jobs"]
        assert value not in done.stdout + done.stderr
        # a version the service account cannot read: the worker never runs, the VM powers off
        out.unlink()
        done = subprocess.run(["bash", "-c", script.replace(ref, ref.replace("broker", "other"))],
                              env={**os.environ, "PATH": f"{bin_}:/usr/bin:/bin"}, timeout=60, capture_output=True,
                              text=True)
        assert done.returncode == 1 and not out.exists()
        assert "fleet: cannot read secret BROKER_PASSWORD (gcp)" in done.stderr
    finally:
        provider.kill_workers(cluster, [name])
