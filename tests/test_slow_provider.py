"""A provider that answers slowly but does answer is never held blind (fleet.deadline).

EC2 through moto's server behind a proxy that delays every DescribeInstances request, with the
call deadline shrunk to 1 s (`[providers.aws_ec2] call_timeout`) so the tests stay fast:

* every page answers within the deadline but the listing of the cluster does not: the deadline
  is per page, so the sweep sees the instances, the cluster converges, nothing is held;
* one page answers after the deadline: the call times out and holds the pool, but its late
  answer lifts the hold and is the next sweep's, so the cluster still converges.

And `fleet bench` reports a section that did not converge as a failed target and a failed run.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from fleet.config import parse_config
from fleet.holds import Holds
from fleet.model import HandleStatus
from fleet.testing.bench import failed_targets, targets
from fleet.testing.inline import drive, inline_manager
from tests.conftest import REDIS_URL, wipe
from tests.kits.aws import AwsWorld
from tests.kits.aws_faults import FaultProxy

SLOW_REGION = "ap-southeast-2"  # moto's describes scan a whole region: these tests keep to their own
N = 12


class SlowDescribe(FaultProxy):
    """The fault proxy, with every DescribeInstances request answered `seconds` late."""

    def __init__(self, upstream: str, seconds: float) -> None:
        super().__init__(upstream)
        self.seconds = seconds

    def handle(self, method: str, path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        if b"Action=DescribeInstances" in body:
            time.sleep(self.seconds)  # the injected fault: a slow cloud
        return super().handle(method, path, headers, body)


@pytest.fixture
def slow_cluster(aws_world: AwsWorld) -> Iterator[Any]:
    """make(delay, page_size) -> (manager, dispatcher, proxy, fleet id): an on-demand EC2 cluster
    "c" (max N) behind a SlowDescribe proxy, with a 1 s call deadline and a 30 s unresponsive
    hold (longer than the tests wait); its instances terminated and keys deleted afterwards."""
    made: list[tuple[str, SlowDescribe]] = []
    ec2 = boto3.client("ec2", endpoint_url=aws_world.url, region_name=SLOW_REGION)
    ec2.describe_instances(MaxResults=5)  # moto builds a region's backend on its first call: not in a deadline

    def make(delay: float, page_size: int) -> tuple[Any, Any, SlowDescribe, str]:
        proxy = SlowDescribe(aws_world.url, delay).__enter__()
        fid = "s" + uuid.uuid4().hex[:9]
        made.append((fid, proxy))
        # moto pages DescribeInstances by reservation: one instance per RunInstances makes N of them
        options = aws_world.ec2_options(region=SLOW_REGION, endpoint_url=proxy.url, instance_type="t3.micro",
                                        page_size=page_size, batch_size=1)
        config = parse_config({
            "fleet": {"id": fid, "orphan_grace": 3600},
            "providers": {"aws_ec2": {"ops_per_second": 10000, "call_timeout": 1.0, "unresponsive_hold": 30}},
            "clusters": {"c": {"max_workers": N, "provider": "aws_ec2", "provider_options": options,
                               "container": {"command": ["celery", "worker"]}}}}, "<test>")
        manager, dispatcher = inline_manager(config, REDIS_URL)
        return manager, dispatcher, proxy, fid

    yield make
    for fid, proxy in made:
        proxy.__exit__(None, None, None)
        left = [i["InstanceId"] for r in ec2.describe_instances(Filters=[{"Name": "tag:fleet:id", "Values": [fid]}])[
            "Reservations"] for i in r["Instances"]]
        if left:
            ec2.terminate_instances(InstanceIds=left)
        wipe(fid)


def events(manager: Any, kind: str) -> list[dict[str, str]]:
    stream = manager.store.r.xrange(manager.store.of("c").events)
    found = [{k.decode(): v.decode() for k, v in data.items()} for _, data in stream]
    return [e for e in found if e["kind"] == kind]


@pytest.mark.timeout(90)  # a regression loops in the inline dispatcher's retries: fail, not hang
def test_a_listing_slower_than_the_deadline_page_by_page_is_never_held(slow_cluster: Any) -> None:
    manager, dispatcher, proxy, fid = slow_cluster(delay=0.4, page_size=5)  # 3 pages: 1.2 s > 1 s, each 0.4 s
    result = drive(manager, dispatcher, "c", N, timeout=40)
    assert result["converged"], result
    assert manager.store.summary("c").counts.of(HandleStatus.RUNNING) == N
    assert proxy.calls["DescribeInstances"] >= 3  # paged: a listing takes 3 requests
    assert events(manager, "timeout") == []  # never timed out ...
    assert Holds(manager.store.r, fid).unresponsive("c") == 0  # ... so never held


@pytest.mark.timeout(90)  # a regression loops in the inline dispatcher's retries: fail, not hang
def test_a_late_answer_lifts_the_hold_and_is_the_next_sweeps(slow_cluster: Any) -> None:
    manager, dispatcher, _, fid = slow_cluster(delay=1.4, page_size=1000)  # one page, 1.4 s > 1 s
    result = drive(manager, dispatcher, "c", N, timeout=40)
    assert result["converged"], result  # a 30 s hold per timeout would have blinded it for longer
    assert manager.store.summary("c").counts.of(HandleStatus.RUNNING) == N
    assert events(manager, "timeout"), "the deadline was never missed: the test proves nothing"
    holds = Holds(manager.store.r, fid)
    deadline = time.monotonic() + 10
    while holds.unresponsive("c") and time.monotonic() < deadline:  # the last late answer lifts the last hold
        time.sleep(0.1)
    assert holds.unresponsive("c") == 0


# -- fleet bench ----------------------------------------------------------------------------

def test_a_bench_section_that_did_not_converge_is_a_failed_target() -> None:
    converged = {"seconds": 1.0, "sweeps": 1, "converged": True}
    stuck = {"seconds": 600.0, "sweeps": 1144, "converged": False}
    results: dict[str, Any] = {"cloud": {"n": 1000, "providers": {
        "ec2": {"up": converged, "down": converged, "mutating": 5, "reads": 5},
        "ec2spot": {"up": stuck, "down": converged, "mutating": 5, "reads": 1149}}}}
    found = targets(results)
    rows = {t["target"]: t for t in found if "converged" in t["target"]}
    assert rows["cloud: ec2spot scale to 1000 converged"]["met"] is False
    assert rows["cloud: ec2 scale to 1000 converged"]["met"] is True
    assert [t["target"] for t in failed_targets(found)] == ["cloud: ec2spot scale to 1000 converged"]
    ok = {"rows": [{"n": 20, "up": converged, "down": converged, "per_worker_ratio_up": 1, "per_worker_ratio_down": 1}]}
    assert failed_targets(targets({"convergence": ok})) == []
    json.dumps(found)  # what the bench prints
