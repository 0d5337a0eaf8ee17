"""An EC2 spot interruption warning, end to end: EventBridge's "EC2 Spot Instance Interruption
Warning" put on the cluster's SQS queue (moto's server) for the one running spot worker, which
is busy with a real Celery job. A real control plane (worker processes, beat, Redis) takes the
notice from the queue in a sweep, launches the replacement at once (above max_workers by the
interrupted one), drains the worker, which finishes its job, and terminates it only then. The
instance's "VM" is a real Celery worker process named after its instance id, consuming the
cluster's queue as the worker on a real instance would."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
from celery import Celery

from fleet.testing.backends.aws import REGION, AwsWorld
from fleet.testing.plane import plane
from tests.conftest import wait_for

FLEET = """
    sweep_interval = 0.5
    orphan_grace = 3
    """


def inline(table: dict[str, Any]) -> str:
    """A flat dict as a TOML inline table (JSON's strings and numbers are TOML's)."""
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in table.items()) + " }"


def warning(instance_id: str) -> str:
    """The event EventBridge sends for a spot interruption (two minutes' notice from `time`)."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps({"version": "0", "id": str(uuid.uuid4()), "detail-type": "EC2 Spot Instance Interruption Warning",
                       "source": "aws.ec2", "account": "123456789012", "time": now, "region": REGION,
                       "resources": [f"arn:aws:ec2:{REGION}a:instance/{instance_id}"],
                       "detail": {"instance-id": instance_id, "instance-action": "terminate"}})


def vm_worker(url: str, handle: str, log: Path) -> subprocess.Popen[bytes]:
    """What runs on the instance: a Celery worker of the job app, named `<instance id>@vm`."""
    env = {**os.environ, "FLEET_REDIS_URL": url, "FLEET_HANDLE": handle}
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "fleet.demo.jobs", "worker", "--queues", "vm-jobs",
                             "--pool", "threads", "--concurrency", "1", "--hostname", f"{handle}@vm",
                             "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
                             "--prefetch-multiplier", "1"],
                            env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)


def test_a_warned_spot_instance_is_replaced_before_it_is_terminated_and_its_job_finishes(
        aws_world: AwsWorld, tmp_path: Path) -> None:
    sqs = boto3.client("sqs", endpoint_url=aws_world.url, region_name=REGION)
    ec2 = boto3.client("ec2", endpoint_url=aws_world.url, region_name=REGION)
    queue = sqs.create_queue(QueueName=f"fleet-int-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    options = aws_world.ec2_options(market="spot", interruption_queue_url=queue)
    workers: list[subprocess.Popen[bytes]] = []
    with plane(tmp_path, f"""
        [clusters.vm]
        max_workers = 1
        queues = ["vm-jobs"]
        drain_timeout = 60
        pools = [{{ name = "spot", provider = "aws_ec2", provider_options = {inline(options)} }}]
        [clusters.vm.container]
        command = ["celery", "worker"]
        """, fleet=FLEET, workers=1, concurrency=4) as p:
        try:
            handles = p.keys.cluster("vm").handles

            def records() -> dict[str, dict[str, Any]]:
                return {h.decode(): json.loads(v) for h, v in p.r.hgetall(handles).items()}

            p.call("fleet.scale", "vm", 1)
            wait_for(lambda: p.call("fleet.status", "vm")["running"] == 1, timeout=60, what="1 spot instance")
            (victim,) = records()
            workers.append(vm_worker(p.stack.url, victim, tmp_path / "vm.log"))
            jobs = Celery("vm-jobs", broker=p.stack.url, backend=p.stack.url, set_as_current=False)
            jobs.conf.task_acks_late = True
            job = jobs.send_task("demo.sleep", args=[6.0, "long"], queue="vm-jobs")
            wait_for(lambda: records().get(victim, {}).get("busy"), timeout=30, what="the worker busy with the job")

            sqs.send_message(QueueUrl=queue, MessageBody=warning(victim))
            wait_for(lambda: records()[victim].get("int") == "spot_interruption", timeout=20,
                     what="the warning taken from the queue")
            assert records()[victim]["s"] == "draining"
            # the replacement is launched while the interrupted one still works: 2 instances, max 1
            wait_for(lambda: len(records()) == 2, timeout=30, what="the replacement recorded")
            state = ec2.describe_instances(InstanceIds=[victim])["Reservations"][0]["Instances"][0]["State"]["Name"]
            assert state == "running", state  # not terminated before its replacement exists
            assert job.get(timeout=60) == {"tag": "long", "handle": victim, "pid": workers[0].pid}  # no job lost
            wait_for(lambda: victim not in records(), timeout=60, what="the interrupted instance gone from Redis")
            state = ec2.describe_instances(InstanceIds=[victim])["Reservations"][0]["Instances"][0]["State"]["Name"]
            assert state in ("shutting-down", "terminated"), state
            wait_for(lambda: p.call("fleet.status", "vm")["running"] == 1, timeout=60, what="1 running again")
            attrs = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
            assert attrs["ApproximateNumberOfMessages"] == attrs["ApproximateNumberOfMessagesNotVisible"] == "0"
            kinds = [{k.decode(): v.decode() for k, v in data.items()}
                     for _, data in p.r.xrange(p.keys.cluster("vm").events)]
            order = [(e["kind"], e.get("handles", "")) for e in kinds]
            noticed = order.index(("interrupted", victim))
            launch = next(i for i, (k, _) in enumerate(order) if k == "launch" and i > noticed)
            drained = next(i for i, (k, hs) in enumerate(order) if k in ("drained", "drain_timeout") and victim in hs)
            assert noticed < launch < drained, order
            assert order[drained][0] == "drained"  # it finished its job: not cut off at the deadline
            metrics = {k.decode(): v.decode() for k, v in p.r.hgetall(p.keys.metrics).items()}
            assert metrics["interruptions|vm|spot|spot_interruption"] == "1"
        finally:
            for w in workers:
                os.killpg(w.pid, signal.SIGKILL)
                w.wait()
            left = [i["InstanceId"] for r in ec2.describe_instances(Filters=[
                {"Name": "tag:fleet:id", "Values": [p.fleet_id]},
                {"Name": "instance-state-name", "Values": ["pending", "running"]}])["Reservations"]
                for i in r["Instances"]]
            if left:
                ec2.terminate_instances(InstanceIds=left)
