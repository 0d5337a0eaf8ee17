"""aws_ecs on Fargate Spot and in pools, against the session's moto server (real botocore, real
HTTP; no boto3 mock).

moto records the first capacity provider of a RunTask strategy as the task's
`capacityProviderName` and refuses launchType together with a strategy, as ECS does. It does not
check that the ECS cluster has FARGATE_SPOT associated, never answers RunTask with `failures`
(capacity failures are injected at the HTTP layer, in ECS's wire format), and never interrupts a
task: `interrupt_fargate_spot` sets the task's stopCode, stoppedReason and statuses on moto's own
task object (its server runs in this process).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from pydantic import ValidationError

from fleet.errors import CapacityError, PermanentProviderError
from fleet.provider import Cause, Cluster, ContainerSpec, Hardware, ProviderContext, WorkerStatus
from fleet.testing.backends.aws import interrupt_fargate_spot, moto_ecs_task
from providers.aws_ecs import ECSOptions, ECSProvider
from tests.kits import fleet_ids
from tests.kits.aws import AwsWorld
from tests.test_aws import ECS_HEADERS, Calls, _Raw, capture, ecs_error, inject

CMD = ContainerSpec(command=("celery", "-A", "tasks", "worker"), env={"QUEUE": "jobs"})
SMALL = Hardware(cpu=0.25, memory_mb=512)
SPOT = [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]

Make = Callable[..., tuple[ECSProvider, Cluster]]


@pytest.fixture
def ecs(aws_world: AwsWorld, tmp_path: Path) -> Iterator[Make]:
    """A fresh ECS provider and cluster (fresh fleet id) with these options; what it launched is
    stopped after the test."""
    made: list[tuple[ECSProvider, Cluster]] = []

    def make(workers_per_container: int = 1, **options: Any) -> tuple[ECSProvider, Cluster]:
        fid, _ = fleet_ids()
        opts = ECSProvider.validate_options(aws_world.ecs_options(**options))
        made.append((ECSProvider(ProviderContext(fid, tmp_path)), Cluster(fid, "ecs", workers_per_container, opts)))
        return made[-1]

    yield make
    for provider, cluster in made:
        left = provider.list_workers(cluster)
        if left:
            provider.kill_workers(cluster, list(left))


def launch() -> str:
    return uuid.uuid4().hex


def described(provider: ECSProvider, cluster: Cluster, arns: list[str]) -> dict[str, dict[str, Any]]:
    tasks = provider.client(cluster).describe_tasks(cluster=cluster.options.cluster, tasks=arns,
                                                    include=["TAGS"])["tasks"]
    return {t["taskArn"]: t for t in tasks}


# -- launching on Fargate Spot ------------------------------------------------------------

def test_a_spot_launch_asks_for_fargate_spot_instead_of_a_launch_type(ecs: Make) -> None:
    provider, cluster = ecs(market="spot")
    sent = capture(provider.client(cluster), "RunTask")
    handles = provider.run_workers(cluster, CMD, SMALL, 12, launch_id=launch())
    assert len(handles) == 12
    assert [p["capacityProviderStrategy"] for p in sent] == [SPOT, SPOT]
    assert all("launchType" not in p for p in sent)
    tasks = described(provider, cluster, handles)
    assert {t["capacityProviderName"] for t in tasks.values()} == {"FARGATE_SPOT"}  # what moto recorded
    assert {t.get("launchType") or "" for t in tasks.values()} == {""}


def test_an_on_demand_launch_keeps_launch_type_fargate(ecs: Make) -> None:
    provider, cluster = ecs()
    sent = capture(provider.client(cluster), "RunTask")
    (h,) = provider.run_workers(cluster, CMD, SMALL, 1, launch_id=launch())
    assert sent[0]["launchType"] == "FARGATE" and "capacityProviderStrategy" not in sent[0]
    assert described(provider, cluster, [h])[h].get("capacityProviderName") is None
    assert cluster.options.market == "on-demand" and cluster.options.strategy() is None


def test_an_explicit_strategy_is_sent_as_given(ecs: Make) -> None:
    provider, cluster = ecs(capacity_provider_strategy=[
        {"capacity_provider": "FARGATE", "weight": 1, "base": 2}, {"capacity_provider": "FARGATE_SPOT", "weight": 3}])
    sent = capture(provider.client(cluster), "RunTask")
    (h,) = provider.run_workers(cluster, CMD, SMALL, 1, launch_id=launch())
    assert sent[0]["capacityProviderStrategy"] == [{"capacityProvider": "FARGATE", "weight": 1, "base": 2},
                                                   {"capacityProvider": "FARGATE_SPOT", "weight": 3}]
    assert "launchType" not in sent[0]
    assert described(provider, cluster, [h])[h]["capacityProviderName"] == "FARGATE"  # moto: the first one


ECS_BASE = {"cluster": "c", "task_definition": "t", "subnets": ["s"]}


@pytest.mark.parametrize("options, words", [
    ({"market": "preemptible"}, "market"),
    ({"capacity_provider_strategy": []}, "capacity_provider_strategy"),
    ({"capacity_provider_strategy": [{"capacity_provider": "my-asg", "weight": 1}]}, "capacity_provider"),
    ({"capacity_provider_strategy": [{"capacity_provider": "FARGATE", "weight": 1001}]}, "weight"),
    ({"capacity_provider_strategy": [{"capacity_provider": "FARGATE", "weight": 1, "base": -1}]}, "base"),
    ({"capacity_provider_strategy": [{"capacity_provider": "FARGATE", "weight": 1, "bias": 1}]}, "bias"),
    ({"capacity_provider_strategy": [{"capacity_provider": "FARGATE_SPOT"}]}, "needs a weight above 0"),
    ({"capacity_provider_strategy": [{"capacity_provider": "FARGATE", "weight": 1},
                                     {"capacity_provider": "FARGATE", "weight": 2}]}, "twice"),
    ({"capacity_provider_strategy": [{"capacity_provider": "FARGATE", "weight": 1, "base": 1},
                                     {"capacity_provider": "FARGATE_SPOT", "weight": 1, "base": 1}]}, "only one"),
    ({"market": "on-demand", "capacity_provider_strategy": [{"capacity_provider": "FARGATE_SPOT", "weight": 1}]},
     "disagrees"),
    ({"market": "spot", "capacity_provider_strategy": [{"capacity_provider": "FARGATE", "weight": 1}]}, "disagrees"),
])
def test_bad_market_and_strategy_options_are_refused(options: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        ECSProvider.validate_options({**ECS_BASE, **options})


def test_a_market_that_agrees_with_the_strategy_is_accepted() -> None:
    opts = ECSProvider.validate_options({**ECS_BASE, "market": "spot", "capacity_provider_strategy": [
        {"capacity_provider": "FARGATE_SPOT", "weight": 4}, {"capacity_provider": "FARGATE", "weight": 1}]})
    assert isinstance(opts, ECSOptions)
    assert opts.strategy() == ({"capacityProvider": "FARGATE_SPOT", "weight": 4},
                               {"capacityProvider": "FARGATE", "weight": 1})
    assert opts.capacity_label((256, 512)) == "FARGATE_SPOT+FARGATE 256/512"


@pytest.mark.parametrize("reason", [
    "Capacity is unavailable at this time. Please try again later or in a different availability zone",
    "RESOURCE:ENI",
])
def test_a_fargate_spot_capacity_failure_is_a_capacity_error(ecs: Make, reason: str) -> None:
    provider, cluster = ecs(market="spot")
    body = json.dumps({"tasks": [], "failures": [{"arn": "x", "reason": reason}]})
    inject(provider.client(cluster), "RunTask", 200, body, ECS_HEADERS)
    with pytest.raises(CapacityError) as info:
        provider.run_workers(cluster, CMD, SMALL, 2, launch_id=launch())
    assert info.value.instance_type == "FARGATE_SPOT 256/512"  # held apart from on-demand FARGATE 256/512


def short_run_task(client: Any, made: int, reason: str) -> list[int]:
    """Answer the next RunTask as ECS does when it finds capacity for `made` tasks only: moto's
    server is asked for `made` tasks (it starts them) and the answer lists the rest under
    `failures`. Returns the counts that RunTask calls asked for, the short one first."""
    asked: list[int] = []

    def answer(request: Any, **_: Any) -> AWSResponse | None:
        body = json.loads(request.body)
        asked.append(body["count"])
        if len(asked) > 1:
            return None  # later calls reach moto as they are
        headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
        sent = urllib.request.Request(request.url, data=json.dumps({**body, "count": made}).encode(),
                                      headers=headers, method="POST")
        with urllib.request.urlopen(sent, timeout=30) as reply:
            out = json.loads(reply.read())
        out["failures"] = [{"arn": f"missing-{i}", "reason": reason} for i in range(body["count"] - made)]
        return AWSResponse(request.url, 200, ECS_HEADERS, _Raw(json.dumps(out).encode()))

    client.meta.events.register("before-send.ecs.RunTask", answer)
    return asked


def test_a_short_run_task_answer_returns_what_it_started_and_asks_for_no_more(
        ecs: Make, caplog: pytest.LogCaptureFixture) -> None:
    provider, cluster = ecs(market="spot")
    asked = short_run_task(provider.client(cluster), 4, "Capacity is unavailable at this time.")
    with caplog.at_level(logging.WARNING, logger="providers.aws_ecs"):
        handles = provider.run_workers(cluster, CMD, SMALL, 25, launch_id=launch())  # calls of 10, 10 and 5
    # capacity ran out: the launch stops there, as aws_ec2's does on a short CreateFleet answer;
    # Fleet launches the shortfall later (through the next pool)
    assert asked == [10] and len(handles) == len(set(handles)) == 4
    assert provider.list_workers(cluster) == dict.fromkeys(handles, 1)
    assert "RunTask started 4 of 10 tasks" in caplog.text and "call 0 started 4 of 10 tasks" in caplog.text


# -- interruptions ------------------------------------------------------------------------

def test_a_task_fargate_spot_reclaims_is_stopped_and_interrupted(ecs: Make) -> None:
    provider, cluster = ecs(market="spot")
    reclaimed, warned, killed, running = list(dict.fromkeys(
        provider.run_workers(cluster, CMD, SMALL, 4, launch_id=launch())))
    interrupt_fargate_spot(reclaimed)
    interrupt_fargate_spot(warned, warned_only=True)  # the two-minute warning: still RUNNING, desired STOPPED
    provider.kill_workers(cluster, [killed])
    moto_ecs_task(killed).stop_code = "UserInitiated"  # what ECS says of a StopTask (moto sets none)
    seen = provider.observe(cluster, [reclaimed, warned, killed, running])
    assert seen.interrupted == {reclaimed: Cause.FARGATE_SPOT, warned: Cause.FARGATE_SPOT}
    assert seen.status == {reclaimed: WorkerStatus.STOPPED, warned: WorkerStatus.STOPPED,
                           killed: WorkerStatus.STOPPED, running: WorkerStatus.RUNNING}
    assert seen.listed == {running: 1}
    tasks = described(provider, cluster, [reclaimed])
    assert tasks[reclaimed]["stopCode"] == "SpotInterruption" and tasks[reclaimed]["lastStatus"] == "STOPPED"
    assert provider.worker_status(cluster, [reclaimed, warned]) == dict.fromkeys([reclaimed, warned],
                                                                                 WorkerStatus.STOPPED)


def test_observe_is_one_list_and_one_describe(ecs: Make) -> None:
    provider, cluster = ecs(market="spot")
    handles = provider.run_workers(cluster, CMD, SMALL, 25, launch_id=launch())
    interrupt_fargate_spot(handles[0])
    client = provider.client(cluster)
    running = sum(len(page["taskArns"]) for page in client.get_paginator("list_tasks").paginate(
        cluster=cluster.options.cluster, desiredStatus="RUNNING"))
    calls = Calls(client)
    seen = provider.observe(cluster, handles)
    assert seen.listed == dict.fromkeys(handles[1:], 1) and seen.interrupted == {handles[0]: Cause.FARGATE_SPOT}
    # the listing and the status of every handle in one DescribeTasks per 100 tasks (was two)
    assert dict(calls) == {"ListTasks": 1, "DescribeTasks": math.ceil((running + 1) / 100)}


# -- pools --------------------------------------------------------------------------------

def test_pools_are_tagged_and_listed_apart(ecs: Make) -> None:
    provider, cluster = ecs()
    spot, steady = dataclasses.replace(cluster, pool="spot"), dataclasses.replace(cluster, pool="steady")
    sent = capture(provider.client(cluster), "RunTask")
    a_id, b_id = launch(), launch()
    (a,) = provider.run_workers(spot, CMD, SMALL, 1, launch_id=a_id)
    (b,) = provider.run_workers(steady, CMD, SMALL, 1, launch_id=b_id)
    (plain,) = provider.run_workers(cluster, CMD, SMALL, 1, launch_id=launch())
    tags = [{t["key"]: t["value"] for t in p["tags"]} for p in sent]
    assert [t.get("fleet:pool") for t in tags] == ["spot", "steady", None]
    envs = [{e["name"]: e["value"] for e in p["overrides"]["containerOverrides"][0]["environment"]} for p in sent]
    assert [e.get("FLEET_POOL") for e in envs] == ["spot", "steady", None]
    assert provider.list_workers(spot) == {a: 1} and provider.list_workers(steady) == {b: 1}
    assert provider.list_workers(cluster) == {a: 1, b: 1, plain: 1}  # no pool: every task of the cluster
    assert provider.find_launch(steady, b_id) == [b] and provider.find_launch(spot, b_id) == []
    # the listing is the pool's; a status is a task's, whatever pool asks
    seen = provider.observe(spot, [b])
    assert seen.listed == {a: 1} and seen.status == {a: WorkerStatus.RUNNING, b: WorkerStatus.RUNNING}
    assert provider.kill_workers(steady, [a]) == {a: WorkerStatus.STOPPED}
    assert provider.list_workers(spot) == {}


def test_a_retried_pool_launch_adopts_what_it_started(ecs: Make) -> None:
    provider, cluster = ecs(market="spot")
    spot = dataclasses.replace(cluster, pool="spot")
    lid = launch()
    first = provider.run_workers(spot, CMD, SMALL, 3, launch_id=lid)
    again = ECSProvider(provider.context)  # a restarted control plane: its own client
    calls = Calls(again.client(spot))
    assert sorted(again.run_workers(spot, CMD, SMALL, 3, launch_id=lid)) == sorted(first)
    assert calls["RunTask"] == 0 and calls["ListTasks"] == 2  # startedBy look-up: running and stopped


def test_a_cluster_without_fargate_spot_is_a_permanent_error_saying_what_to_do(ecs: Make) -> None:
    provider, cluster = ecs(market="spot")
    message = ("The specified capacity provider strategy cannot contain a capacity provider that is not associated "
               "with the cluster. Associate the capacity provider with the cluster or specify a valid capacity "
               "provider and try again.")
    inject(provider.client(cluster), "RunTask", 400, ecs_error("InvalidParameterException", message), ECS_HEADERS)
    with pytest.raises(PermanentProviderError, match="put-cluster-capacity-providers"):
        provider.run_workers(cluster, CMD, SMALL, 1, launch_id=launch())
