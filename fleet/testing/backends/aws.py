"""AWS (EC2 and ECS) for tests and benchmarks: moto's server on a free loopback port, with the
network and ECS resources Fleet's providers need, and dummy credentials in the environment while
it runs (the providers take credentials only from the SDK chain).

The ECS side needs a VPC (with DNS hostnames, or moto's task ENIs fail), a subnet, a security
group, an ECS cluster and a FARGATE task definition; tasks are pinned in their state so that
DescribeTasks does not walk them to STOPPED. Users of one world use fresh fleet ids, so they share
the server without seeing each other's resources. Needs `moto[server]` (the test extra).
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

REGION = "us-east-1"
FAKE_ENV = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
            "AWS_SESSION_TOKEN": "testing-session-token", "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true"}


@dataclass(frozen=True)
class AwsWorld:
    url: str
    ami: str
    subnet: str
    security_group: str
    ecs_cluster: str
    task_definition: str

    def post(self, path: str, body: dict[str, Any] | None = None) -> None:
        """POST to moto's own API (state manager, reset)."""
        req = urllib.request.Request(self.url + path, data=json.dumps(body or {}).encode(), method="POST")
        urllib.request.urlopen(req, timeout=10).read()

    def ec2_options(self, **extra: Any) -> dict[str, Any]:
        return {"ami": self.ami, "endpoint_url": self.url, "region": REGION, "max_attempts": 2, **extra}

    def ecs_options(self, **extra: Any) -> dict[str, Any]:
        return {"cluster": self.ecs_cluster, "task_definition": self.task_definition, "subnets": [self.subnet],
                "security_groups": [self.security_group], "endpoint_url": self.url, "region": REGION,
                "max_attempts": 2, **extra}


@contextmanager
def moto_world() -> Iterator[AwsWorld]:
    """A moto server on a free loopback port with the network and ECS resources the kits use,
    and dummy credentials in the environment while it runs (`fleet bench` uses it too)."""
    import boto3
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in FAKE_ENV}
    os.environ.update(FAKE_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        ec2 = boto3.client("ec2", endpoint_url=url, region_name=REGION)
        ecs = boto3.client("ecs", endpoint_url=url, region_name=REGION)
        vpc = ec2.create_vpc(CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.77.0.0/18")["Subnet"]["SubnetId"]
        sg = ec2.create_security_group(GroupName="fleet-workers", Description="fleet", VpcId=vpc)["GroupId"]
        ecs.create_cluster(clusterName="fleet-test-ecs")
        ecs.register_task_definition(
            family="fleet-worker", requiresCompatibilities=["FARGATE"], networkMode="awsvpc", cpu="256",
            memory="512", containerDefinitions=[{"name": "worker", "image": "busybox", "memory": 512,
                                                 "essential": True}])
        world = AwsWorld(url, "ami-12c6146b", subnet, sg, "fleet-test-ecs", "fleet-worker")
        world.post("/moto-api/state-manager/set-transition",
                   {"model_name": "ecs::task", "transition": {"progression": "manual", "times": 1000}})
        yield world
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- Fargate Spot: what moto does not model -------------------------------------------------
#: the reason ECS gives a task that Fargate Spot reclaims
SPOT_STOPPED_REASON = "Your Spot Task was interrupted."


def moto_ecs_task(arn: str, region: str = REGION) -> Any:
    """moto's own object of ECS task `arn`: its server runs in this process (ThreadedMotoServer),
    so a test can change what DescribeTasks will answer. KeyError if moto has no such task."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ecs.models import ecs_backends

    for tasks in ecs_backends[DEFAULT_ACCOUNT_ID][region].tasks.values():
        if arn in tasks:
            return tasks[arn]
    raise KeyError(arn)


def interrupt_fargate_spot(arn: str, *, warned_only: bool = False, region: str = REGION) -> None:
    """Do to task `arn` what Fargate Spot does when it takes its capacity back, which moto does
    not model: desiredStatus STOPPED, stopCode SpotInterruption, stoppedReason "Your Spot Task
    was interrupted.", and lastStatus STOPPED (or still RUNNING with `warned_only`: the
    two-minute warning, SIGTERM sent, the task not yet stopped). moto serialises `stop_code`
    as `stopCode` once it is set."""
    task = moto_ecs_task(arn, region)
    task.desired_status = "STOPPED"
    task.stop_code = "SpotInterruption"
    task.stopped_reason = SPOT_STOPPED_REASON
    if not warned_only:
        task.last_status = "STOPPED"


# -- EC2 spot: what moto does not model ------------------------------------------------------
#: the state reason EC2 gives an instance it reclaims (a spot interruption)
SPOT_RECLAIMED_REASON = ("Server.SpotInstanceTermination", "Server.SpotInstanceTermination: Spot instance termination")


def reclaim_spot_instance(instance_id: str, *, terminated: bool = True, region: str = REGION) -> None:
    """Do to EC2 instance `instance_id` what EC2 does when it takes a spot instance back, which
    moto does not model: state terminated (or shutting-down with `terminated=False`) with the
    state reason `Server.SpotInstanceTermination`. moto's server runs in this process
    (ThreadedMotoServer), so DescribeInstances answers it from then on."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.instances import StateReason

    instance = ec2_backends[DEFAULT_ACCOUNT_ID][region].get_instance(instance_id)
    if terminated:
        instance.terminate()
    else:
        instance._state.name, instance._state.code = "shutting-down", 32
    code, message = SPOT_RECLAIMED_REASON
    instance.state_reason = StateReason(message, code)
