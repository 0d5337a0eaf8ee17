"""aws_ec2 and aws_ecs beyond the contract suite, against the session's moto server.

API calls are counted with botocore event handlers on the provider's own client; faults are
injected at the HTTP layer with a 'before-send' handler that answers in AWS's wire format, so
botocore's retries and parsing run for real.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from pydantic import ValidationError

from fleet.errors import CapacityError, PermanentProviderError, QuotaExceeded, RateLimited, TransientProviderError
from fleet.provider import Cluster, ContainerSpec, Hardware, ProviderContext, WorkerStatus
from providers._aws import plan_calls
from providers.aws_ec2 import EC2Provider, user_data
from providers.aws_ecs import ECSOptions, ECSProvider, fargate_size, started_by
from tests.kits import fleet_ids
from tests.kits.aws import REGION, AwsWorld

CMD = ContainerSpec(command=("celery", "-A", "tasks", "worker"), env={"QUEUE": "jobs"})
SMALL = Hardware(cpu=0.25, memory_mb=512)


# -- helpers ------------------------------------------------------------------------------

class Calls(Counter[str]):
    """Counts API calls (one per call, not per retry) made through a boto3 client."""

    def __init__(self, client: Any) -> None:
        super().__init__()
        client.meta.events.register("before-call", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        self[model.name] += 1


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def inject(client: Any, operation: str, status: int, body: bytes | str, headers: dict[str, str] | None = None
           ) -> list[int]:
    """Answer every `operation` of `client` with this HTTP response; returns the attempt log."""
    attempts: list[int] = []
    raw = body.encode() if isinstance(body, str) else body
    service = client.meta.service_model.service_id.hyphenize()

    def answer(request: Any, **_: Any) -> AWSResponse:
        attempts.append(status)
        return AWSResponse(request.url, status, headers or {}, _Raw(raw))

    client.meta.events.register(f"before-send.{service}.{operation}", answer)
    return attempts


def ec2_error(code: str, message: str = "injected") -> str:
    return (f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error></Errors><RequestID>req-1</RequestID></Response>")


def ecs_error(code: str, message: str = "injected") -> str:
    return json.dumps({"__type": code, "message": message})


ECS_HEADERS = {"Content-Type": "application/x-amz-json-1.1", "x-amzn-RequestId": "req-1"}


def capture(client: Any, operation: str) -> list[dict[str, Any]]:
    """The keyword arguments of every `operation` call, as the provider passed them."""
    seen: list[dict[str, Any]] = []
    service = client.meta.service_model.service_id.hyphenize()
    client.meta.events.register(f"provide-client-params.{service}.{operation}",
                                lambda params, **_: seen.append(dict(params)))
    return seen


def _cleanup(provider: Any, cluster: Cluster) -> None:
    try:
        left = provider.list_workers(cluster)
    except PermanentProviderError:  # a cluster made to fail (no such ECS cluster)
        return
    if left:
        provider.kill_workers(cluster, list(left))


@pytest.fixture
def ec2(aws_world: AwsWorld, tmp_path: Path) -> Iterator[Callable[..., tuple[EC2Provider, Cluster]]]:
    """A fresh EC2 provider and cluster (fresh fleet id) with these options."""
    made: list[tuple[EC2Provider, Cluster]] = []

    def make(workers_per_container: int = 1, **options: Any) -> tuple[EC2Provider, Cluster]:
        fid, _ = fleet_ids()
        cluster = Cluster(fid, "ec2", workers_per_container, EC2Provider.validate_options(aws_world.ec2_options(**options)))
        made.append((EC2Provider(ProviderContext(fid, tmp_path)), cluster))
        return made[-1]

    yield make
    for provider, cluster in made:  # leave nothing running, faults or not
        _cleanup(EC2Provider(provider.context), cluster)


@pytest.fixture
def ecs(aws_world: AwsWorld, tmp_path: Path) -> Iterator[Callable[..., tuple[ECSProvider, Cluster]]]:
    made: list[tuple[ECSProvider, Cluster]] = []

    def make(workers_per_container: int = 1, **options: Any) -> tuple[ECSProvider, Cluster]:
        fid, _ = fleet_ids()
        cluster = Cluster(fid, "ecs", workers_per_container, ECSProvider.validate_options(aws_world.ecs_options(**options)))
        made.append((ECSProvider(ProviderContext(fid, tmp_path)), cluster))
        return made[-1]

    yield make
    for provider, cluster in made:
        _cleanup(ECSProvider(provider.context), cluster)


def launch() -> str:
    return uuid.uuid4().hex


# -- shared plumbing ----------------------------------------------------------------------

def test_plan_calls_batches_full_containers_and_isolates_the_partial_one() -> None:
    assert plan_calls([1] * 250, 100) == [(1, 100), (1, 100), (1, 50)]
    assert plan_calls([3, 3, 3, 1], 2) == [(3, 2), (3, 1), (1, 1)]
    assert plan_calls([4] * 25 + [2], 10) == [(4, 10), (4, 10), (4, 5), (2, 1)]
    assert plan_calls([], 10) == []


def test_unreachable_endpoint_is_transient(aws_world: AwsWorld, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fid, _ = fleet_ids()
    opts = EC2Provider.validate_options({"ami": "ami-1", "endpoint_url": f"http://127.0.0.1:{port}",
                                         "region": REGION, "max_attempts": 1})
    with pytest.raises(TransientProviderError, match="cannot reach AWS"):
        EC2Provider(ProviderContext(fid, tmp_path)).worker_status(Cluster(fid, "x", 1, opts), ["i-0123456789abcdef0"])


def test_missing_credentials_are_permanent_and_say_how_to_give_them(aws_world: AwsWorld, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    fid, _ = fleet_ids()
    cluster = Cluster(fid, "x", 1, ECSProvider.validate_options(aws_world.ecs_options()))
    with pytest.raises(PermanentProviderError, match="no usable AWS credentials: set AWS_ACCESS_KEY_ID"):
        ECSProvider(ProviderContext(fid, tmp_path)).list_workers(cluster)


# -- EC2 ----------------------------------------------------------------------------------

def test_ec2_scale_0_to_250_to_0_makes_a_bounded_number_of_calls(ec2: Any) -> None:
    provider, cluster = ec2(batch_size=100, region="eu-north-1")  # its own moto backend: keeps us-east-1 small and fast
    calls = Calls(provider.client(cluster))
    handles = provider.run_workers(cluster, CMD, SMALL, 250, launch_id=launch())
    assert len(handles) == len(set(handles)) == 250
    assert provider.list_workers(cluster) == dict.fromkeys(handles, 1)
    up = dict(calls)
    # the terminate's answer says where each instance is: shutting down, so stopped for Fleet
    assert provider.kill_workers(cluster, handles) == dict.fromkeys(handles, WorkerStatus.STOPPED)
    assert provider.list_workers(cluster) == {}
    print(f"\nEC2 0->250->0: launch {up}, total {dict(calls)}")
    assert calls["RunInstances"] == 3 and calls["TerminateInstances"] == 1
    assert calls["RunInstances"] + calls["TerminateInstances"] <= 6
    assert calls["DescribeInstances"] <= 3


def test_ec2_partial_container_gets_its_own_call_and_tags(ec2: Any, aws_world: AwsWorld) -> None:
    provider, cluster = ec2(workers_per_container=3)
    client = provider.client(cluster)
    sent = capture(client, "RunInstances")
    lid = launch()
    handles = provider.run_workers(cluster, CMD, SMALL, 7, launch_id=lid)
    assert sorted(handles.count(h) for h in set(handles)) == [1, 3, 3]
    assert [(p["MinCount"], p["MaxCount"]) for p in sent] == [(2, 2), (1, 1)]
    assert all(p["InstanceInitiatedShutdownBehavior"] == "terminate" for p in sent)
    tokens = [p["ClientToken"] for p in sent]
    assert len(set(tokens)) == 2 and all(len(t) <= 64 for t in tokens)
    assert "FLEET_WORKERS=3" in sent[0]["UserData"] and "FLEET_WORKERS=1" in sent[1]["UserData"]
    lone = next(h for h in handles if handles.count(h) == 1)
    tags = {t["Key"]: t["Value"] for t in
            client.describe_instances(InstanceIds=[lone])["Reservations"][0]["Instances"][0]["Tags"]}
    assert tags["fleet:id"] == cluster.fleet_id and tags["fleet:cluster"] == "ec2"
    assert tags["fleet:launch"] == lid and tags["fleet:workers"] == "1" and tags["Name"].startswith("fleet-")
    attr = client.describe_instance_attribute(InstanceId=lone, Attribute="instanceInitiatedShutdownBehavior")
    assert attr["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"


def test_ec2_client_token_depends_on_launch_call_and_subnet(ec2: Any, aws_world: AwsWorld) -> None:
    from providers._aws import token

    assert token("L", "0", "") == token("L", "0", "")
    assert len({token("L", "0", ""), token("L", "1", ""), token("L", "0", aws_world.subnet), token("M", "0", "")}) == 4


def test_ec2_describe_pages_past_one_page(ec2: Any) -> None:
    provider, cluster = ec2(batch_size=1, page_size=5)  # 12 calls: 12 reservations, 3 pages
    handles = provider.run_workers(cluster, CMD, SMALL, 12, launch_id=launch())
    calls = Calls(provider.client(cluster))
    status = provider.worker_status(cluster, handles)
    assert len(status) == 12 and WorkerStatus.STOPPED not in status.values()
    assert calls["DescribeInstances"] >= 3
    assert provider.list_workers(cluster) == dict.fromkeys(handles, 1)
    assert calls["DescribeInstances"] >= 6


def test_ec2_terminate_splits_a_chunk_that_one_unknown_id_fails(ec2: Any) -> None:
    provider, cluster = ec2()
    handles = provider.run_workers(cluster, CMD, SMALL, 3, launch_id=launch())
    calls = Calls(provider.client(cluster))
    bogus = "i-0123456789abcdef0"
    asked = [handles[0], bogus, *handles[1:], "not-an-instance"]
    assert provider.kill_workers(cluster, asked) == dict.fromkeys(asked, WorkerStatus.STOPPED)
    assert calls["TerminateInstances"] > 1  # the first call failed whole and was split
    assert set(provider.worker_status(cluster, handles).values()) == {WorkerStatus.STOPPED}
    assert provider.list_workers(cluster) == {}


def test_ec2_retried_launch_adopts_instead_of_launching_again(ec2: Any) -> None:
    provider, cluster = ec2(workers_per_container=2)
    lid = launch()
    first = provider.run_workers(cluster, CMD, SMALL, 5, launch_id=lid)
    again = EC2Provider(provider.context)  # a redelivered task on another control-plane worker
    calls = Calls(again.client(cluster))
    second = again.run_workers(cluster, CMD, SMALL, 5, launch_id=lid)
    assert sorted(second) == sorted(first)
    assert calls["RunInstances"] == 0  # moto ignores ClientToken: the launch-tag lookup did this
    assert again.list_workers(cluster) == {h: first.count(h) for h in set(first)}


def test_ec2_first_attempt_launches_without_a_look_up_and_a_sweep_is_one_describe(ec2: Any) -> None:
    provider, cluster = ec2(batch_size=100)
    calls = Calls(provider.client(cluster))
    handles = provider.run_workers(dataclasses.replace(cluster, first_attempt=True), CMD, SMALL, 200,
                                   launch_id=launch())
    assert dict(calls) == {"RunInstances": 2}  # a first attempt: nothing an earlier one made to look up
    assert provider.launch_batch(cluster) == 100
    calls.clear()
    seen = provider.observe(cluster, handles[:5] + ["i-0123456789abcdef0"])
    assert dict(calls) == {"DescribeInstances": 1}  # the listing and every status, together
    assert seen.listed == dict.fromkeys(handles, 1)
    assert set(seen.status) == {*handles, "i-0123456789abcdef0"}
    assert seen.status["i-0123456789abcdef0"] == WorkerStatus.STOPPED
    assert {seen.status[h] for h in handles} <= {WorkerStatus.INITIALIZING, WorkerStatus.RUNNING}
    calls.clear()
    assert provider.kill_workers(cluster, handles) == dict.fromkeys(handles, WorkerStatus.STOPPED)
    assert dict(calls) == {"TerminateInstances": 1}  # its answer is the status: no describe to confirm


def test_ec2_retry_after_a_partial_launch_makes_only_the_missing_call(ec2: Any) -> None:
    provider, cluster = ec2(batch_size=2)  # 3 workers: calls of 2 and 1 instances
    lid = launch()
    client = provider.client(cluster)
    failing = [0]

    def second_call_throttled(request: Any, **_: Any) -> AWSResponse | None:
        failing[0] += 1
        if failing[0] >= 2:  # the first call goes through, the second is throttled
            return AWSResponse(request.url, 503, {}, _Raw(ec2_error("RequestLimitExceeded").encode()))
        return None

    client.meta.events.register("before-send.ec2.RunInstances", second_call_throttled)
    # a later call that fails transiently is an error, not a short list: its outcome is unknown to
    # Fleet in general (a lost answer), so the launch stays counted and is retried
    with pytest.raises(RateLimited):
        provider.run_workers(cluster, CMD, SMALL, 3, launch_id=lid)
    partial = provider.find_launch(cluster, lid)
    assert len(partial) == 2  # the first call's instances exist, tagged with the launch id
    client.meta.events.unregister("before-send.ec2.RunInstances", second_call_throttled)
    calls = Calls(client)
    full = provider.run_workers(cluster, CMD, SMALL, 3, launch_id=lid)
    assert calls["RunInstances"] == 1 and len(full) == 3 and set(partial) <= set(full)
    assert sorted(provider.find_launch(cluster, lid)) == sorted(full)


@pytest.mark.parametrize("code,status,error", [
    ("RequestLimitExceeded", 503, RateLimited),
    ("InstanceLimitExceeded", 400, QuotaExceeded),
    ("VcpuLimitExceeded", 400, QuotaExceeded),
    ("InsufficientInstanceCapacity", 500, CapacityError),
    ("AuthFailure", 401, PermanentProviderError),
    ("InvalidAMIID.NotFound", 400, PermanentProviderError),
    ("InternalError", 500, TransientProviderError),
])
def test_ec2_errors_are_typed_after_botocore_retries(ec2: Any, code: str, status: int, error: type) -> None:
    provider, cluster = ec2()
    attempts = inject(provider.client(cluster), "RunInstances", status, ec2_error(code))
    with pytest.raises(error) as info:
        provider.run_workers(cluster, CMD, SMALL, 2, launch_id=launch())
    assert type(info.value) is error and code in str(info.value)
    retried = code in ("RequestLimitExceeded", "InternalError") or status >= 500
    assert len(attempts) == (2 if retried else 1)  # max_attempts=2: botocore retried, then gave up
    if isinstance(info.value, RateLimited):
        assert info.value.retry_after > 0
    if isinstance(info.value, CapacityError):
        assert info.value.instance_type == "t3.micro"
    if code == "AuthFailure":
        assert "credentials" in str(info.value)
    if code.startswith("InvalidAMIID"):
        assert "provider_options.ami" in str(info.value)
    assert provider.list_workers(cluster) == {}


def test_ec2_rate_limit_honours_retry_after_header(ec2: Any) -> None:
    provider, cluster = ec2(max_attempts=1)
    inject(provider.client(cluster), "DescribeInstances", 503, ec2_error("RequestLimitExceeded"), {"Retry-After": "42"})
    with pytest.raises(RateLimited) as info:
        provider.worker_status(cluster, ["i-0123456789abcdef0"])
    assert info.value.retry_after == 42


def test_ec2_catalogue_chooses_the_cheapest_fitting_type(ec2: Any) -> None:
    provider, cluster = ec2()
    def pick(hw: Hardware, **o: Any) -> str:
        return str(provider.instance_type(EC2Provider.validate_options({"ami": "a", **o}), hw))

    assert pick(SMALL) == "t3.micro"
    assert pick(Hardware(cpu=3, memory_mb=10000)) == "m6i.xlarge"
    assert pick(Hardware(cpu=1, memory_mb=1024, gpus=1)) == "g4dn.xlarge"
    assert pick(Hardware(cpu=64), instance_type="x9.huge") == "x9.huge"
    own = [{"name": "big", "cpu": 8, "memory_mb": 8192, "price": 2}, {"name": "cheap", "cpu": 8, "memory_mb": 8192,
                                                                       "price": 1}]
    assert pick(Hardware(cpu=4), catalogue=own) == "cheap"
    with pytest.raises(PermanentProviderError, match=r"no instance type in the catalogue fits cpu=1 .*gpus=64"):
        pick(Hardware(cpu=1, gpus=64))
    # and the launch uses it
    sent = capture(provider.client(cluster), "RunInstances")
    provider.run_workers(cluster, CMD, Hardware(cpu=3, memory_mb=10000), 1, launch_id=launch())
    assert sent[0]["InstanceType"] == "m6i.xlarge"
    with pytest.raises(PermanentProviderError, match="catalogue"):
        provider.run_workers(cluster, CMD, Hardware(gpus=64), 1, launch_id=launch())


def _fake_bin(tmp_path: Path) -> Path:
    """curl (IMDS), docker, a worker and shutdown stand-ins that record what the script did."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    scripts = {
        "curl": 'case "$*" in *api/token*) echo tok ;; *instance-id*) echo i-0feedfacecafe1234 ;; esac',
        "docker": f'env | grep -E "^(FLEET|QUEUE)" | sort > {tmp_path}/env; echo "$@" > {tmp_path}/argv',
        "celery": f'env | grep -E "^(FLEET|QUEUE)" | sort > {tmp_path}/env; echo "$@" > {tmp_path}/argv; exit 3',
        "shutdown": f'echo "shutdown $*" >> {tmp_path}/argv',
    }
    for name, body in scripts.items():
        path = bin_ / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return bin_


@pytest.mark.parametrize("image", ["fleet-worker:test", ""])
def test_ec2_user_data_runs_the_worker_then_shuts_down_and_holds_no_secret(ec2: Any, tmp_path: Path,
                                                                           image: str) -> None:
    provider, cluster = ec2(workers_per_container=4)
    container = ContainerSpec(command=CMD.command, env={"QUEUE": "jobs; rm -rf /"}, image=image)
    script = user_data(cluster, container, "launch-1", 4)
    assert "shutdown -h now" in script and "X-aws-ec2-metadata-token" in script
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in script and "AWS_" not in script
    # run it for real, with stand-ins for the machine's tools
    env = {"PATH": f"{_fake_bin(tmp_path)}:/usr/bin:/bin"}
    subprocess.run(["sh", "-c", script], env=env, check=True, timeout=30, capture_output=True)
    seen = (tmp_path / "env").read_text().splitlines()
    assert seen == sorted(["FLEET_CLUSTER=ec2", "FLEET_HANDLE=i-0feedfacecafe1234", f"FLEET_ID={cluster.fleet_id}",
                           "FLEET_LAUNCH_ID=launch-1", "FLEET_WORKERS=4", "QUEUE=jobs; rm -rf /"])
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[-1] == "shutdown -h now"  # after the worker exited
    assert argv[0].endswith("-A tasks worker")
    assert argv[0].startswith("run --rm") == bool(image)
    # the launch really carries it
    sent = capture(provider.client(cluster), "RunInstances")
    provider.run_workers(cluster, container, SMALL, 4, launch_id="launch-1")
    assert sent[0]["UserData"] == script


@pytest.mark.parametrize("options,field", [
    ({}, "ami"), ({"ami": "a", "batch_size": 0}, "batch_size"), ({"ami": "a", "batch_size": 1001}, "batch_size"),
    ({"ami": "a", "page_size": 4}, "page_size"), ({"ami": "a", "retry_mode": "eager"}, "retry_mode"),
    ({"ami": "a", "max_attempts": 0}, "max_attempts"), ({"ami": "a", "endpoint_url": "localhost:1"}, "endpoint_url"),
    ({"ami": "a", "catalogue": []}, "catalogue"), ({"ami": "a", "aws_secret_access_key": "x"}, "aws_secret_access_key"),
])
def test_ec2_bad_options_name_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        EC2Provider.validate_options(options)


# -- ECS ----------------------------------------------------------------------------------

def test_fargate_size_rounds_up_to_a_valid_pair() -> None:
    assert fargate_size(0.25, 512) == (256, 512)
    assert fargate_size(0.1, 100) == (256, 512)
    assert fargate_size(0.25, 600) == (256, 1024)
    assert fargate_size(0.25, 3000) == (512, 3072)  # 256 CPU units hold at most 2 GB
    assert fargate_size(0.5, 512) == (512, 1024)
    assert fargate_size(1, 1024) == (1024, 2048)
    assert fargate_size(1.5, 100) == (2048, 4096)
    assert fargate_size(2, 16384) == (2048, 16384)
    assert fargate_size(4, 30720) == (4096, 30720)
    assert fargate_size(4, 30721) == (8192, 32768)
    assert fargate_size(8, 16385) == (8192, 20480)
    assert fargate_size(16, 122880) == (16384, 122880)
    for cpu, mem in [(16.01, 1), (1, 122881)]:
        with pytest.raises(PermanentProviderError, match="no Fargate task size fits"):
            fargate_size(cpu, mem)


def test_ecs_scale_0_to_25_to_0_uses_ceil_n_over_10_run_task_calls(ecs: Any) -> None:
    provider, cluster = ecs()
    calls = Calls(provider.client(cluster))
    handles = provider.run_workers(cluster, CMD, SMALL, 25, launch_id=launch())
    assert len(handles) == len(set(handles)) == 25
    assert calls["RunTask"] == 3
    assert provider.list_workers(cluster) == dict.fromkeys(handles, 1)
    assert provider.kill_workers(cluster, handles) == dict.fromkeys(handles, WorkerStatus.STOPPED)
    assert provider.list_workers(cluster) == {}
    print(f"\nECS 0->25->0: {dict(calls)}")
    assert calls["StopTask"] == 25 and calls["DescribeTasks"] <= 6


def test_ecs_run_task_carries_identity_size_tags_and_started_by(ecs: Any) -> None:
    provider, cluster = ecs(workers_per_container=3)
    sent = capture(provider.client(cluster), "RunTask")
    lid = launch()
    handles = provider.run_workers(cluster, CMD, Hardware(cpu=0.25, memory_mb=3000), 7, launch_id=lid)
    assert sorted(handles.count(h) for h in set(handles)) == [1, 3, 3]
    assert [p["count"] for p in sent] == [2, 1]
    for p, workers in zip(sent, ("3", "1")):
        assert p["startedBy"] == started_by(cluster, lid) and len(p["startedBy"]) <= 36
        assert (p["overrides"]["cpu"], p["overrides"]["memory"]) == ("512", "3072")
        (override,) = p["overrides"]["containerOverrides"]
        env = {e["name"]: e["value"] for e in override["environment"]}
        assert env == {"QUEUE": "jobs", "FLEET_ID": cluster.fleet_id, "FLEET_CLUSTER": "ecs",
                       "FLEET_WORKERS": workers, "FLEET_LAUNCH_ID": lid}
        assert override["name"] == "worker" and override["command"] == list(CMD.command)
        assert {t["key"]: t["value"] for t in p["tags"]}["fleet:workers"] == workers
    described = provider.client(cluster).describe_tasks(cluster="fleet-test-ecs", tasks=list(set(handles)),
                                                        include=["TAGS"])["tasks"]
    assert {t["startedBy"] for t in described} == {started_by(cluster, lid)}
    assert all({"key": "fleet:launch", "value": lid} in t["tags"] for t in described)


def test_ecs_retried_launch_adopts_instead_of_launching_again(ecs: Any) -> None:
    provider, cluster = ecs(workers_per_container=2)
    lid = launch()
    first = provider.run_workers(cluster, CMD, SMALL, 5, launch_id=lid)
    again = ECSProvider(provider.context)
    calls = Calls(again.client(cluster))
    assert sorted(again.run_workers(cluster, CMD, SMALL, 5, launch_id=lid)) == sorted(first)
    assert calls["RunTask"] == 0  # moto ignores clientToken: the startedBy lookup did this


def test_ecs_first_attempt_launches_without_a_look_up(ecs: Any) -> None:
    provider, cluster = ecs()
    calls = Calls(provider.client(cluster))
    handles = provider.run_workers(dataclasses.replace(cluster, first_attempt=True), CMD, SMALL, 12,
                                   launch_id=launch())
    assert len(handles) == 12 and dict(calls) == {"RunTask": 2}
    assert provider.launch_batch(cluster) == 10


def test_ecs_stop_task_calls_run_concurrently_within_stop_concurrency(ecs: Any) -> None:
    provider, cluster = ecs(stop_concurrency=4)
    handles = provider.run_workers(cluster, CMD, SMALL, 16, launch_id=launch())
    client = provider.client(cluster)
    lock, now, most = threading.Lock(), [0], [0]

    def started(model: Any, **_: Any) -> None:
        if model.name == "StopTask":
            with lock:
                now[0] += 1
                most[0] = max(most[0], now[0])
            time.sleep(0.05)  # keep it in flight long enough for the others to overlap

    def ended(model: Any, **_: Any) -> None:
        if model.name == "StopTask":
            with lock:
                now[0] -= 1

    client.meta.events.register("before-call", started)
    client.meta.events.register("after-call", ended)
    calls = Calls(client)
    assert provider.kill_workers(cluster, handles) == dict.fromkeys(handles, WorkerStatus.STOPPED)
    assert calls["StopTask"] == 16
    assert most[0] == 4  # concurrent, and never more than stop_concurrency at once
    assert provider.list_workers(cluster) == {}


def test_ecs_describe_tasks_is_chunked_by_100_and_unknown_is_stopped(ecs: Any, aws_world: AwsWorld) -> None:
    provider, cluster = ecs()
    real = provider.run_workers(cluster, CMD, SMALL, 5, launch_id=launch())
    unknown = [f"arn:aws:ecs:{REGION}:123456789012:task/fleet-test-ecs/{uuid.uuid4().hex}" for _ in range(100)]
    calls = Calls(provider.client(cluster))
    status = provider.worker_status(cluster, unknown[:50] + real + unknown[50:] + ["nope"])
    assert len(status) == 106
    assert all(status[h] == WorkerStatus.RUNNING for h in real)
    assert all(status[h] == WorkerStatus.STOPPED for h in [*unknown, "nope"])
    assert calls["DescribeTasks"] == 2
    calls.clear()
    assert provider.kill_workers(cluster, unknown + real) == dict.fromkeys(unknown + real, WorkerStatus.STOPPED)
    assert calls["StopTask"] == 5  # unknown tasks are dead already: no StopTask for them


def test_ecs_tasks_listed_as_failures_are_stopped(ecs: Any) -> None:
    provider, cluster = ecs()
    arn = f"arn:aws:ecs:{REGION}:123456789012:task/fleet-test-ecs/{uuid.uuid4().hex}"
    body = json.dumps({"tasks": [], "failures": [{"arn": arn, "reason": "MISSING"}]})
    inject(provider.client(cluster), "DescribeTasks", 200, body, ECS_HEADERS)
    assert provider.worker_status(cluster, [arn]) == {arn: WorkerStatus.STOPPED}
    assert provider.kill_workers(cluster, [arn]) == {arn: WorkerStatus.STOPPED}


@pytest.mark.parametrize("last,desired,expected", [
    ("PROVISIONING", "RUNNING", WorkerStatus.INITIALIZING), ("PENDING", "RUNNING", WorkerStatus.INITIALIZING),
    ("ACTIVATING", "RUNNING", WorkerStatus.INITIALIZING), ("RUNNING", "RUNNING", WorkerStatus.RUNNING),
    ("RUNNING", "STOPPED", WorkerStatus.STOPPED), ("DEACTIVATING", "STOPPED", WorkerStatus.STOPPED),
    ("STOPPING", "STOPPED", WorkerStatus.STOPPED), ("DEPROVISIONING", "STOPPED", WorkerStatus.STOPPED),
    ("STOPPED", "STOPPED", WorkerStatus.STOPPED), ("PENDING", "STOPPED", WorkerStatus.STOPPED),
])
def test_ecs_task_states_map_to_worker_status(ecs: Any, last: str, desired: str, expected: WorkerStatus) -> None:
    provider, cluster = ecs()
    arn = f"arn:aws:ecs:{REGION}:123456789012:task/fleet-test-ecs/{uuid.uuid4().hex}"
    body = json.dumps({"tasks": [{"taskArn": arn, "lastStatus": last, "desiredStatus": desired}], "failures": []})
    inject(provider.client(cluster), "DescribeTasks", 200, body, ECS_HEADERS)
    assert provider.worker_status(cluster, [arn]) == {arn: expected}


@pytest.mark.parametrize("code,error,words", [
    ("ThrottlingException", RateLimited, "throttled"),
    ("LimitExceededException", QuotaExceeded, "quota"),
    ("AccessDeniedException", PermanentProviderError, "credentials"),
    ("ServerException", TransientProviderError, "ServerException"),
])
def test_ecs_errors_are_typed_after_botocore_retries(ecs: Any, code: str, error: type, words: str) -> None:
    provider, cluster = ecs()
    status = 500 if code == "ServerException" else 400
    attempts = inject(provider.client(cluster), "RunTask", status, ecs_error(code), ECS_HEADERS)
    with pytest.raises(error) as info:
        provider.run_workers(cluster, CMD, SMALL, 2, launch_id=launch())
    assert type(info.value) is error and words in str(info.value)
    retried = code in ("ThrottlingException", "LimitExceededException", "ServerException")
    assert len(attempts) == (2 if retried else 1)
    assert provider.list_workers(cluster) == {}


def test_ecs_run_task_failures_without_tasks_raise_typed_errors(ecs: Any) -> None:
    provider, cluster = ecs()
    body = json.dumps({"tasks": [], "failures": [{"arn": "x", "reason": "Capacity is unavailable at this time."}]})
    inject(provider.client(cluster), "RunTask", 200, body, ECS_HEADERS)
    with pytest.raises(CapacityError) as info:
        provider.run_workers(cluster, CMD, SMALL, 2, launch_id=launch())
    assert info.value.instance_type == "FARGATE 256/512"


def test_ecs_bad_configuration_is_permanent_and_says_what_to_fix(ecs: Any) -> None:
    provider, cluster = ecs(task_definition="no-such-family")
    with pytest.raises(PermanentProviderError, match="task_definition"):
        provider.run_workers(cluster, CMD, SMALL, 1, launch_id=launch())
    provider, cluster = ecs(cluster="no-such-cluster")
    with pytest.raises(PermanentProviderError, match=r"provider_options\.cluster"):
        provider.run_workers(cluster, CMD, SMALL, 1, launch_id=launch())
    with pytest.raises(PermanentProviderError, match="GPUs"):
        provider.run_workers(cluster, CMD, Hardware(gpus=1), 1, launch_id=launch())


ECS_BASE = {"cluster": "c", "task_definition": "t", "subnets": ["s"]}


@pytest.mark.parametrize("options,field", [
    ({**ECS_BASE, "subnets": []}, "subnets"), ({"task_definition": "t", "subnets": ["s"]}, "cluster"),
    ({**ECS_BASE, "task_definition": ""}, "task_definition"), ({**ECS_BASE, "retry_mode": "legacy"}, "retry_mode"),
    ({**ECS_BASE, "aws_access_key_id": "x"}, "aws_access_key_id"),
])
def test_ecs_bad_options_name_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        ECSProvider.validate_options(options)
    assert isinstance(ECSProvider.validate_options(ECS_BASE), ECSOptions)
