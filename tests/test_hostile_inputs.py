"""What Fleet reads from outside itself is judged one item at a time: a spot pool's interruption
queue full of garbage (not JSON, the wrong shape, an SNS envelope, 200 KB, JSON nested 100,000
deep) still has its genuine warning acted on in the first sweep, the garbage deleted and counted;
hostile tags (EC2, ECS), labels (GCE, Docker), stop reasons (ECS) and operations (GCE) never
stop a listing: the item is skipped or treated safely, counted, and the others are unaffected.

Real parts: moto's server (EC2, ECS, SQS; its in-process objects for what its API cannot set),
the fake Compute server, the session's Redis and the managed layer driven inline (a real sweep).
Docker: a fake Engine API answering a container list no real engine would (podman cannot)."""

from __future__ import annotations

import datetime
import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis

from fleet.config import parse_config
from fleet.keys import Keyspace
from fleet.provider import Cause, Cluster, ContainerSpec, Hardware, ProviderContext, WorkerStatus
from fleet.testing.backends.aws import moto_ecs_task
from fleet.testing.backends.gce import PREEMPTED, PREFIX, FakeGCE
from fleet.testing.inline import drive, inline_manager
from fleet.testing.kits import fleet_ids
from providers.aws_ec2 import EC2Provider, parse_notice
from providers.aws_ecs import ECSProvider
from providers.docker import DockerProvider
from providers.gce import GCEProvider
from tests.conftest import REDIS_URL
from tests.kits.aws import AwsWorld
from tests.kits.gce import PROJECT, ZONE, gce_options

#: a region of these tests' own: moto's describes scan every instance of a region
HOSTILE_REGION = "eu-west-1"
DEEP = "[" * 100_000 + "]" * 100_000
CMD = ContainerSpec(command=("celery", "worker"))
SMALL = Hardware(cpu=0.25, memory_mb=512)


class Reports:
    """A ProviderContext.report that keeps what it is told: (cluster, source, reason) -> count."""

    def __init__(self) -> None:
        self.seen: Counter[tuple[str, str, str]] = Counter()
        self._lock = threading.Lock()

    def __call__(self, cluster: str, source: str, reason: str, n: int) -> None:
        with self._lock:
            self.seen[(cluster, source, reason)] += n

    def by_source(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for (_, source, _), n in self.seen.items():
            out[source] += n
        return out


def warning(instance_id: str) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps({"version": "0", "id": str(uuid.uuid4()), "detail-type": "EC2 Spot Instance Interruption Warning",
                       "source": "aws.ec2", "account": "123456789012", "time": now, "region": HOSTILE_REGION,
                       "detail": {"instance-id": instance_id, "instance-action": "terminate"}})


GARBAGE = [
    "not json at all",
    json.dumps([1, 2, 3]),  # JSON, not an event
    json.dumps({"detail-type": "EC2 Spot Instance Interruption Warning", "detail": "no instance"}),  # wrong shape
    json.dumps({"Type": "Notification", "Message": DEEP[:20_000] + DEEP[-20_000:]}),  # an SNS envelope, nested
    json.dumps({"pad": "x" * 200_000}),  # 200 KB
    DEEP,  # nested 100,000 deep: json.loads raises RecursionError
    json.dumps({"detail-type": json.loads("[" * 500 + "]" * 500)}),  # a nested value where a string belongs
]


# -- the interruption queue -----------------------------------------------------------------

def test_parse_notice_never_raises_on_deep_or_odd_bodies() -> None:
    for body in [*GARBAGE, None, 7, {"a": 1}, "[" * 100_000]:
        assert isinstance(parse_notice({"Body": body, "ReceiptHandle": "r", "MessageId": "m"}), str)


@pytest.fixture
def spot_fleet(aws_world: AwsWorld) -> Iterator[tuple[Any, Any, str, str]]:
    """(manager, dispatcher, queue url, fleet id): a spot cluster "c" on moto (max 1) whose
    interruption queue is a fresh SQS queue; its instances and keys go afterwards."""
    sqs = boto3.client("sqs", endpoint_url=aws_world.url, region_name=HOSTILE_REGION)
    queue = sqs.create_queue(QueueName=f"fleet-hostile-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    fid = "h" + uuid.uuid4().hex[:9]
    options = aws_world.ec2_options(region=HOSTILE_REGION, market="spot", instance_type="t3.micro",
                                    interruption_queue_url=queue)
    config = parse_config({"fleet": {"id": fid, "orphan_grace": 3600},
                           "providers": {"aws_ec2": {"ops_per_second": 10000}},
                           "clusters": {"c": {"max_workers": 1, "provider": "aws_ec2", "provider_options": options,
                                              "container": {"command": ["celery", "worker"]}}}}, "<test>")
    manager, dispatcher = inline_manager(config, REDIS_URL)
    try:
        yield manager, dispatcher, queue, fid
    finally:  # terminated directly: the warned instance would drain for its two minutes
        ec2 = boto3.client("ec2", endpoint_url=aws_world.url, region_name=HOSTILE_REGION)
        left = [i["InstanceId"] for r in ec2.describe_instances(Filters=[{"Name": "tag:fleet:id", "Values": [fid]}])[
            "Reservations"] for i in r["Instances"]]
        if left:
            ec2.terminate_instances(InstanceIds=left)
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"fleet:{fid}:*", count=1000))
        if keys:
            client.delete(*keys)
        sqs.delete_queue(QueueUrl=queue)


def test_garbage_on_the_queue_never_blocks_a_spot_warning_beside_it(
        spot_fleet: tuple[Any, Any, str, str], aws_world: AwsWorld) -> None:
    manager, dispatcher, queue, fid = spot_fleet
    sqs = boto3.client("sqs", endpoint_url=aws_world.url, region_name=HOSTILE_REGION)
    assert drive(manager, dispatcher, "c", 1, timeout=60)["converged"]
    r = redis.Redis.from_url(REDIS_URL)
    handles = Keyspace(fid).cluster("c").handles
    (victim,) = [h.decode() for h in r.hkeys(handles)]
    for body in [*GARBAGE[:5], warning(victim), *GARBAGE[5:]]:  # one batch: the warning among the garbage
        sqs.send_message(QueueUrl=queue, MessageBody=body)

    manager.sweeper.sweep_cluster("c")  # one sweep: one receive of the whole batch

    record = json.loads(r.hget(handles, victim) or b"{}")
    assert record.get("int") == Cause.SPOT_INTERRUPTION.value, record  # acted on in the first receive
    attrs = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
    # the garbage deleted, the warning acknowledged once recorded: nothing left, nothing in flight
    assert attrs["ApproximateNumberOfMessages"] == attrs["ApproximateNumberOfMessagesNotVisible"] == "0"
    counted = {k.decode(): int(v) for k, v in r.hgetall(Keyspace(fid).metrics).items()
               if k.startswith(b"unreadable|c|sqs|")}
    assert sum(counted.values()) == len(GARBAGE), counted
    assert counted["unreadable|c|sqs|not_json"] == 3  # not JSON, the nested SNS message, the deep one


# -- tags, labels, stop reasons, operations --------------------------------------------------

@pytest.fixture
def reports() -> Reports:
    return Reports()


def test_hostile_ec2_tags_are_taken_safely_and_counted(aws_world: AwsWorld, tmp_path: Path, reports: Reports) -> None:
    fid, _ = fleet_ids()
    provider = EC2Provider(ProviderContext(fid, tmp_path, reports))
    options = EC2Provider.validate_options(aws_world.ec2_options(region=HOSTILE_REGION, instance_type="t3.micro"))
    cluster = Cluster(fid, "ec2", 2, options)
    launch = uuid.uuid4().hex
    handles = list(dict.fromkeys(provider.run_workers(cluster, CMD, SMALL, 8, launch_id=launch)))
    ec2 = boto3.client("ec2", endpoint_url=aws_world.url, region_name=HOSTILE_REGION)
    try:
        words, huge, arabic, fine = handles
        for iid, workers in ((words, "lots"), (huge, "99999999999"), (arabic, "٣")):
            ec2.create_tags(Resources=[iid], Tags=[{"Key": "fleet:workers", "Value": workers}])
        ec2.create_tags(Resources=[fine, words], Tags=[{"Key": "fleet:revision", "Value": "'; DROP TABLE x; --"},
                                                       {"Key": "fleet:batch", "Value": "²"}])
        seen = provider.observe(cluster, handles)
        assert seen.listed == {words: 1, huge: 1, arabic: 1, fine: 2}  # listed: still adopted or killed
        assert seen.status == dict.fromkeys(handles, WorkerStatus.RUNNING) and seen.revisions == {}
        assert provider.list_workers(cluster) == seen.listed
        assert sorted(provider.find_launch(cluster, launch)) == sorted([words, huge, arabic, fine, fine])
        # a retried launch reads the tags of what it made: it never crashes, nor launches again
        assert set(provider.run_workers(cluster, CMD, SMALL, 8, launch_id=launch)) <= set(handles)
        assert reports.by_source()["ec2_tags"] >= 3 + 2
    finally:
        ec2.terminate_instances(InstanceIds=handles)


def test_hostile_ecs_tags_and_stop_reasons_are_taken_safely(aws_world: AwsWorld, tmp_path: Path,
                                                           reports: Reports) -> None:
    fid, _ = fleet_ids()
    provider = ECSProvider(ProviderContext(fid, tmp_path, reports))
    cluster = Cluster(fid, "ecs", 1, ECSProvider.validate_options(aws_world.ecs_options()))
    launch = uuid.uuid4().hex
    tagged, stopped, fine = provider.run_workers(cluster, CMD, SMALL, 3, launch_id=launch)
    try:
        task = moto_ecs_task(tagged)
        task.tags = [t if t["key"] != "fleet:workers" else {"key": "fleet:workers", "value": "1e9"} for t in task.tags]
        gone = moto_ecs_task(stopped)
        gone.desired_status = gone.last_status = "STOPPED"
        gone.stop_code = "SpotInterruption\u0000" + "x" * 10_000  # not ECS's code: stopped, not interrupted
        gone.stopped_reason = DEEP[:50_000]
        seen = provider.observe(cluster, [tagged, stopped, fine])
        assert seen.listed == {tagged: 1, fine: 1} and seen.interrupted == {}
        assert seen.status == {tagged: WorkerStatus.RUNNING, stopped: WorkerStatus.STOPPED, fine: WorkerStatus.RUNNING}
        assert sorted(provider.find_launch(cluster, launch)) == sorted([tagged, fine])
        assert reports.by_source()["ecs_tags"] >= 2
    finally:
        provider.kill_workers(cluster, [tagged, stopped, fine])


def test_hostile_gce_labels_and_operations_are_taken_safely(gce_server: tuple[FakeGCE, str], tmp_path: Path,
                                                           reports: Reports) -> None:
    fake, url = gce_server
    fake.clear_faults()
    fake.ready_after_reads = 0
    fid, _ = fleet_ids()
    provider = GCEProvider(ProviderContext(fid, tmp_path, reports))
    cluster = Cluster(fid, "gce", 1, GCEProvider.validate_options(gce_options(url, market="spot")))
    (fine,) = provider.run_workers(cluster, CMD, SMALL, 1, launch_id=uuid.uuid4().hex)
    ours = {"fleet-id": fid, "fleet-cluster": "gce"}
    odd = f"fleet-odd-{uuid.uuid4().hex[:6]}"
    fake.add_instance(PROJECT, ZONE, odd, {**ours, "fleet-workers": "99999999"})
    where = f"{PREFIX}{PROJECT}/zones/{ZONE}"
    bad = f"bad-{uuid.uuid4().hex[:8]}"
    with fake.lock:  # a preemption record the SDK cannot parse (targetLink is not a string)
        fake.operations[bad] = [{"kind": "compute#operation", "name": bad, "zone": where, "status": "DONE",
                                 "operationType": PREEMPTED, "targetLink": {"deep": json.loads("[" * 200 + "]" * 200)}}, 0]
    try:
        seen = provider.observe(cluster, [fine, "fleet-gone-0"])  # a spot VM gone: preemptions are read
        assert seen.listed == {fine: 1, odd: 1}
        assert seen.status == {fine: WorkerStatus.RUNNING, odd: WorkerStatus.RUNNING,
                               "fleet-gone-0": WorkerStatus.STOPPED}
        assert seen.interrupted == {}
        assert provider.list_workers(cluster) == {fine: 1, odd: 1}
        assert reports.by_source() == {"gce_labels": 2, "gce_operations": 1}
    finally:
        with fake.lock:
            fake.operations.pop(bad, None)
        provider.kill_workers(cluster, [fine, odd])


class _HostileDocker(BaseHTTPRequestHandler):
    """A Docker Engine API whose container list holds what no engine writes, beside one good one."""

    def do_GET(self) -> None:
        if self.path.endswith("/version"):
            body: Any = {"ApiVersion": "1.41"}
        else:
            ours = {"fleet.id": "h", "fleet.cluster": "c"}
            body = [{"Names": ["/fleet-a"], "Labels": ["not", "a", "map"], "State": "running"},
                    {"Names": "/fleet-b", "Labels": ours, "State": "running"},
                    "not a container",
                    {"Names": ["/fleet-c"], "Labels": {**ours, "fleet.workers": "4096"}, "State": "running"},
                    {"Names": [7, "/fleet-d"], "Labels": {**ours, "fleet.workers": "2"}, "State": "running"}]
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_hostile_docker_labels_and_listings_are_taken_safely(tmp_path: Path, reports: Reports) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HostileDocker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        options = DockerProvider.validate_options({"base_url": f"tcp://127.0.0.1:{server.server_address[1]}",
                                                   "timeout": 10})
        provider, cluster = DockerProvider(ProviderContext("h", tmp_path, reports)), Cluster("h", "c", 2, options)
        assert provider.list_workers(cluster) == {"fleet-c": 1, "fleet-d": 2}
        assert provider.worker_status(cluster, ["fleet-c", "fleet-a"]) == {"fleet-c": WorkerStatus.RUNNING,
                                                                           "fleet-a": WorkerStatus.STOPPED}
        assert reports.by_source()["docker_labels"] == 1 and reports.by_source()["docker_containers"] >= 3
    finally:
        server.shutdown()
        server.server_close()
