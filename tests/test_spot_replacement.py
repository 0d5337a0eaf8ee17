"""Interrupted cloud workers are counted as interrupted, not failed, and replaced: a preempted GCE
Spot VM (the fake Compute server records the preemption as GCE does) and a Fargate Spot task
stopped with `SpotInterruption` (moto's server, with the stop code set as Fargate sets it), each
in a pool, through the managed layer on the session's real Redis (work run in order by the inline
dispatcher)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from fleet.config import parse_config
from fleet.manager import Manager
from fleet.model import FAILURE_KINDS
from fleet.testing.backends.aws import AwsWorld, interrupt_fargate_spot
from fleet.testing.backends.gce import FakeGCE
from fleet.testing.inline import InlineDispatcher, drive
from tests.conftest import inline_cloud
from tests.kits.gce import PROJECT, ZONE, gce_options


@pytest.fixture
def managed(aws_world: AwsWorld, gce_server: tuple[FakeGCE, str]) -> Iterator[tuple[Manager, InlineDispatcher]]:
    fake, url = gce_server
    fid = "sr" + uuid.uuid4().hex[:8]
    common = {"max_workers": 4, "boot_timeout": 3600, "container": {"command": ["worker"]}}
    config = parse_config({
        "fleet": {"id": fid, "orphan_grace": 3600},
        "clusters": {
            "gspot": {**common, "pools": [
                {"name": "spot", "provider": "gce", "provider_options": gce_options(url, market="spot")}]},
            "espot": {**common, "hardware": {"cpu": 0.25, "memory_mb": 512}, "pools": [
                {"name": "spot", "provider": "aws_ecs", "provider_options": aws_world.ecs_options(market="spot")}]},
        }}, "<test>")
    with inline_cloud(fake, config) as managed:
        yield managed


def replaced(manager: Manager, dispatcher: InlineDispatcher, cluster: str, victim: str, cause: str) -> dict[str, Any]:
    """Sweep once, then drive back to 2: the victim was interrupted (not failed) and replaced."""
    metrics = manager.redis.hgetall(manager.store.keys.metrics)
    failures = sum(int(v) for k, v in metrics.items()
                   if k.decode() in {f"events|{cluster}|{kind}" for kind in FAILURE_KINDS})
    manager.sweeper.sweep_cluster(cluster)
    events = manager.store.events(cluster, 100)
    noticed = [e for e in events if e["kind"] == "interrupted"]
    assert len(noticed) == 1 and noticed[0]["handles"] == victim and noticed[0]["cause"] == cause, noticed
    assert noticed[0]["pool"] == "spot"
    gone = [e for e in events if e["kind"] == "stopped" and victim in e["handles"]]
    assert gone and gone[0]["interrupted"] == cause  # it left Redis as interrupted
    assert drive(manager, dispatcher, cluster, 2, timeout=60)["converged"]
    st = manager.store.read(cluster)
    assert victim not in st.handles and len(st.handles) == 2 and all(r.pool == "spot" for r in st.handles.values())
    metrics = manager.redis.hgetall(manager.store.keys.metrics)
    assert int(metrics[f"interruptions|{cluster}|spot|{cause}".encode()]) == 1
    assert sum(int(v) for k, v in metrics.items()
               if k.decode() in {f"events|{cluster}|{kind}" for kind in FAILURE_KINDS}) == failures  # not a failure
    assert st.counts.interrupted == 0 and manager.store.counts(cluster).interrupted == 0
    return metrics


def test_a_preempted_gce_spot_vm_is_counted_as_interrupted_and_replaced(
        managed: tuple[Manager, InlineDispatcher], gce_server: tuple[FakeGCE, str]) -> None:
    manager, dispatcher = managed
    fake, _ = gce_server
    assert drive(manager, dispatcher, "gspot", 2, timeout=60)["converged"]
    victim = sorted(manager.store.read("gspot").handles)[0]
    fake.preempt(PROJECT, ZONE, victim)
    replaced(manager, dispatcher, "gspot", victim, "preempted")


def test_a_fargate_spot_task_stopped_by_spot_interruption_is_counted_as_interrupted_and_replaced(
        managed: tuple[Manager, InlineDispatcher]) -> None:
    manager, dispatcher = managed
    assert drive(manager, dispatcher, "espot", 2, timeout=60)["converged"]
    victim = sorted(manager.store.read("espot").handles)[0]
    interrupt_fargate_spot(victim)
    replaced(manager, dispatcher, "espot", victim, "fargate_spot")
