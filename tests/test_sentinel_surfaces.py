"""The console's Redis health check and the broker probe behind real Redis Sentinel (a primary, a
replica, three sentinels: tests/kits/sentinel.py): both reach the primary the sentinels name, and
the health check says clearly when the sentinels are gone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fleet.config import FleetConfig, parse_config
from fleet.connection import RedisTarget, connect
from fleet.console.health import Health
from fleet.keys import Keyspace
from fleet.probe import Probe
from tests.kits.sentinel import MASTER, Topology, sentinel_topology


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    with sentinel_topology(tmp_path) as running:
        yield running


def sentinel_config() -> FleetConfig:
    return parse_config({"fleet": {"id": "sen", "redis_sentinel_master": MASTER}, "clusters": {"c": {
        "provider": "local", "container": {"command": ["worker"]}}}})


def test_the_console_health_check_reaches_redis_behind_sentinel_and_says_when_it_cannot(
        topology: Topology) -> None:
    config = sentinel_config()
    url = topology.url()
    RedisTarget.from_settings(url, config.fleet, env={}).register()
    health = Health(config, url)
    assert health.redis_problem() is None
    connect(url).set(Keyspace("sen").cluster("c").declared, "1", ex=60)  # a sweep, as the primary holds it
    assert health.problem() is None
    assert redis.Redis(port=topology.primary).exists(Keyspace("sen").cluster("c").declared)

    for proc in topology.procs.values():  # sentinels, primary and replica: nothing answers
        proc.terminate()
    for proc in topology.procs.values():
        proc.wait(timeout=10)
    started = time.monotonic()
    problem = health.problem()
    took = time.monotonic() - started
    assert problem is not None and problem.startswith("Redis at sentinel://") and "unreachable" in problem, problem
    assert took < 5, took
    fresh = Health(config, url).problem()  # a console started while the sentinels are down
    assert fresh is not None and "unreachable" in fresh and MASTER in fresh, fresh
    assert fresh.endswith(f"unreachable: No master found for '{MASTER}' by any sentinel (are the sentinels up?)"), fresh


def test_the_broker_probe_counts_waiting_messages_behind_sentinel(topology: Topology) -> None:
    config = sentinel_config()
    url = topology.url()
    RedisTarget.from_settings(url, config.fleet, env={}).register()
    redis.Redis(port=topology.primary).lpush("sentinel-q", "m1", "m2", "m3")
    assert Probe(url).waiting(["sentinel-q"]) == 3
