"""Cloud calls at the floor, through the managed layer (reconcile, run, kill, sweep) in one
process (fleet.testing.inline): a scale-up is as many launch calls as the provider's batch size
allows and no look-up before a first attempt, a sweep is one read, and a scale-down is one
terminate with no read to confirm it. Against moto's server and the fake Compute server."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from fleet.config import parse_config
from fleet.control.reconciler import split
from fleet.manager import Manager
from fleet.testing.backends.gce import FakeGCE
from fleet.testing.inline import InlineDispatcher, drive
from tests.conftest import inline_cloud
from tests.kits.aws import AwsWorld
from tests.kits.gce import PROJECT, ZONE, gce_options


def test_launches_are_split_in_whole_provider_calls() -> None:
    assert [n for _, n in split(1000, 1, 100)] == [200] * 5  # EC2's 100 a call: no call part filled
    assert [n for _, n in split(1000, 1)] == [256, 256, 256, 232]
    assert [n for _, n in split(1000, 1, 10)] == [250] * 4  # ECS's 10 a call
    assert [n for _, n in split(1000, 1, 1000)] == [256, 256, 256, 232]  # one call holds a whole chunk
    assert [n for _, n in split(30, 4, 3)] == [30]  # 8 containers of 4 (the last of 2) in one chunk
    assert [n for _, n in split(2000, 3, 50)] == [150] * 13 + [50]  # 85 containers a chunk, cut to 50


def test_the_first_claim_of_a_launch_is_the_only_first_attempt(r: redis.Redis) -> None:
    from fleet.model import LaunchRecord, LaunchState
    from fleet.store import Claim, ClaimState, Store

    store = Store(r, "fc" + uuid.uuid4().hex[:8])
    r.hset(store.of("c").pending, "L1", LaunchRecord(3, LaunchState.QUEUED).encode())
    def claimed(launch_id: str) -> tuple[ClaimState, int, bool]:
        claim = store.claim_launch("c", launch_id)
        return claim.state, claim.count, claim.first

    assert claimed("L1") == (ClaimState.CLAIMED, 3, True)
    assert claimed("L1") == (ClaimState.CLAIMED, 3, False)  # a retry, a redelivery, a re-send
    assert store.claim_launch("c", "nope") == Claim(ClaimState.MISSING)
    r.delete(store.of("c").pending)


@pytest.fixture
def managed(aws_world: AwsWorld, gce_server: tuple[FakeGCE, str]) -> Iterator[tuple[Manager, InlineDispatcher]]:
    fake, url = gce_server
    fid = "cc" + uuid.uuid4().hex[:8]
    common = {"max_workers": 300, "boot_timeout": 3600, "container": {"command": ["worker"]}}
    config = parse_config({
        "fleet": {"id": fid, "launch_timeout": 600, "orphan_grace": 3600},
        "providers": {p: {"ops_per_second": 10000, "concurrent_launches": 16} for p in ("aws_ec2", "aws_ecs", "gce")},
        "clusters": {
            "ec2": {**common, "provider": "aws_ec2", "provider_options": aws_world.ec2_options()},
            "ecs": {**common, "provider": "aws_ecs", "hardware": {"cpu": 0.25, "memory_mb": 512},
                    "provider_options": aws_world.ecs_options()},
            "gce": {**common, "provider": "gce", "provider_options": gce_options(url)},
        }}, "<test>")
    with inline_cloud(fake, config) as managed:
        yield managed


def aws_calls(manager: Manager, cluster: str) -> Counter[str]:
    calls: Counter[str] = Counter()
    provider: Any = manager.pool.raw(manager.config.spec(cluster).provider)
    provider.client(manager.pool.cluster(cluster)).meta.events.register(
        "before-call", lambda model, **_: calls.update([model.name]))
    return calls


def test_ec2_scale_up_and_down_at_the_floor(managed: tuple[Manager, InlineDispatcher]) -> None:
    manager, dispatcher = managed
    calls = aws_calls(manager, "ec2")
    up = drive(manager, dispatcher, "ec2", 250, timeout=120)
    assert up["converged"]
    # 250 at 100 a call: launches of 200 + 50, so 2 + 1 calls; one sweep sees them running
    assert calls == {"RunInstances": 3, "DescribeInstances": 1}, calls
    calls.clear()
    down = drive(manager, dispatcher, "ec2", 0, timeout=120)
    assert down["converged"] and down["sweeps"] == 0
    assert calls == {"TerminateInstances": 1}, calls  # its answer confirms: no describe


def test_ecs_scale_down_is_concurrent_stop_tasks_and_no_confirming_read(
        managed: tuple[Manager, InlineDispatcher]) -> None:
    manager, dispatcher = managed
    assert drive(manager, dispatcher, "ecs", 25, timeout=120)["converged"]
    calls = aws_calls(manager, "ecs")
    down = drive(manager, dispatcher, "ecs", 0, timeout=120)
    assert down["converged"] and down["sweeps"] == 0
    assert calls["StopTask"] == 25 and calls["RunTask"] == 0
    assert calls["DescribeTasks"] == 1  # which of them are live, before the stops; none after


def test_gce_scale_up_is_one_bulk_insert_per_launch(managed: tuple[Manager, InlineDispatcher],
                                                    gce_server: tuple[FakeGCE, str]) -> None:
    manager, dispatcher = managed
    fake, _ = gce_server
    fake.reset_counters()
    assert drive(manager, dispatcher, "gce", 30, timeout=120)["converged"]
    assert fake.calls["bulk_insert"] == 1 and fake.calls["insert"] == 0 and fake.calls["operation"] == 1
    assert fake.calls["list"] <= 2  # a sweep's one list sees them running (and a follow-up may not be due)
    assert len([n for n in fake.names(PROJECT, ZONE) if n.startswith("fleet-")]) >= 30
    fake.reset_counters()
    assert drive(manager, dispatcher, "gce", 0, timeout=120)["converged"]
    assert fake.calls["delete"] == 30 and fake.calls["operation"] == 0  # deletes are not waited one by one
