"""Metrics: what is written to Redis in the agreed shapes comes out right in the exposition text,
over HTTP too, and a scrape is one round trip whatever the number of clusters and handles."""

from __future__ import annotations

import json
import math
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from fleet import metrics
from fleet.config import FleetConfig, load_config, parse_config
from fleet.counters import OP_BUCKETS, READY_BUCKETS, bucket_for, lua_constants, record_event, record_op, record_ready
from fleet.holds import Holds
from fleet.keys import Keyspace
from fleet.metrics import FleetCollector
from fleet.store import Store
from fleet.testing.counting import counting_client
from tests.conftest import FLEET_ID, REDIS_URL, ROOT

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def make_config(fleet_id: str, clusters: dict[str, dict[str, Any]]) -> FleetConfig:
    return parse_config({
        "fleet": {"id": fleet_id},
        "providers": {"memory": {"ops_per_second": 100}},
        "clusters": {name: {"provider": "memory", "container": {"command": ["worker"]}, **spec}
                     for name, spec in clusters.items()},
    })


def parse(text: str | bytes) -> Samples:
    if isinstance(text, bytes):
        text = text.decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def scrape(config: FleetConfig, client: redis.Redis) -> tuple[str, Samples]:
    text = generate_latest(metrics.registry_for(config, client)).decode()
    return text, parse(text)


def handle(w: int, s: str) -> str:
    now = time.time()
    return json.dumps({"w": w, "s": s, "since": now, "launch": "l1", "seen": now, "kills": 0})


def unreachable() -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))


@pytest.fixture
def client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


@pytest.fixture
def fid(client: redis.Redis) -> Iterator[str]:
    """A fleet id of this test's own: no other test's keys are touched or seen."""
    fleet_id = "m" + uuid.uuid4().hex[:8]
    yield fleet_id
    for key in client.scan_iter(f"fleet:{fleet_id}:*", count=1000):
        client.delete(key)


def test_bucket_for() -> None:
    assert bucket_for(0, READY_BUCKETS) == "1"
    assert bucket_for(1, READY_BUCKETS) == "1"
    assert bucket_for(1.01, READY_BUCKETS) == "2"
    assert bucket_for(45, READY_BUCKETS) == "60"
    assert bucket_for(1800, READY_BUCKETS) == "1800"
    assert bucket_for(1800.5, READY_BUCKETS) == "+Inf"
    assert bucket_for(math.nan, READY_BUCKETS) == "+Inf"
    assert bucket_for(0.003, OP_BUCKETS) == "0.01"
    assert bucket_for(0.3, OP_BUCKETS) == "0.5"
    assert bucket_for(99, OP_BUCKETS) == "+Inf"
    assert READY_BUCKETS[-1] == OP_BUCKETS[-1] == "+Inf"


def test_session_config_scrapes(client: redis.Redis) -> None:
    """The test session's own fleet config: every cluster and provider is reported (read only)."""
    config = load_config(ROOT / "fleet.toml")
    assert config.fleet.id == FLEET_ID
    _, s = scrape(config, client)
    assert value(s, "fleet_redis_up") == 1
    for cluster, spec in config.clusters.items():
        assert value(s, "fleet_max_workers", cluster=cluster) == spec.max_workers
        assert ("fleet_workers", frozenset({"cluster": cluster, "state": "running"}.items())) in s
    for provider in ("memory", "faulty", "local"):
        assert ("fleet_rate_limited", frozenset({"provider": provider}.items())) in s


def test_gauges(client: redis.Redis, fid: str) -> None:
    config = make_config(fid, {"web": {"max_workers": 40, "min_workers": 2, "workers_per_container": 4},
                               "batch": {"max_workers": 7}})

    def key(c: str, n: str) -> str:
        return f"fleet:{fid}:{c}:{n}"

    _, s = scrape(config, client)
    # nothing written yet: zeros, and no desired sample
    assert value(s, "fleet_workers", cluster="web", state="running") == 0
    assert value(s, "fleet_pending_launch_workers", cluster="web") == 0
    assert value(s, "fleet_at_quota", cluster="web") == 0
    assert value(s, "fleet_no_capacity", cluster="web") == 0
    assert value(s, "fleet_recovering") == 0
    assert ("fleet_desired_workers", frozenset({"cluster": "web"}.items())) not in s

    Store(client, fid).set_desired("web", 13)
    client.hset(key("web", "handles"), mapping={
        "h1": handle(4, "running"), "h2": handle(4, "running"), "h3": handle(4, "initializing"),
        "h4": handle(3, "stopping"), "h5": handle(4, "draining"),
    })
    client.hset(key("web", "pending"), mapping={
        "l1": json.dumps({"count": 4, "state": "queued", "at": time.time()}),
        "l2": json.dumps({"count": 2, "state": "running", "at": time.time(), "claimed": time.time()}),
        "l3": json.dumps({"count": 8, "state": "cancelled", "at": time.time()}),
    })
    client.hset(key("batch", "handles"), "b1", handle(1, "running"))
    # records written by hand: without `counts` the next reader rebuilds them (and the index)
    client.delete(key("web", "counts"), key("batch", "counts"))
    guard = Holds(client, fid)
    guard.set_at_quota("batch", 60)
    guard.set_no_capacity("web", 60)
    guard.set_error("web", "bad image", "abc")
    guard.hold_provider("memory", 60)
    guard.start_recovery(60)

    text, s = scrape(config, client)
    assert 'fleet_workers{cluster="web",state="running"} 8.0' in text
    assert value(s, "fleet_workers", cluster="web", state="initializing") == 4
    assert value(s, "fleet_workers", cluster="web", state="stopping") == 3
    assert value(s, "fleet_workers", cluster="web", state="draining") == 4
    assert value(s, "fleet_handles", cluster="web", state="running") == 2
    assert value(s, "fleet_handles", cluster="web", state="stopping") == 1
    assert value(s, "fleet_workers", cluster="batch", state="running") == 1
    assert value(s, "fleet_workers", cluster="batch", state="initializing") == 0
    assert value(s, "fleet_desired_workers", cluster="web") == 13
    assert ("fleet_desired_workers", frozenset({"cluster": "batch"}.items())) not in s
    assert value(s, "fleet_max_workers", cluster="web") == 40
    assert value(s, "fleet_min_workers", cluster="web") == 2
    assert value(s, "fleet_max_workers", cluster="batch") == 7
    assert value(s, "fleet_pending_launch_workers", cluster="web") == 6
    assert value(s, "fleet_at_quota", cluster="batch") == 1
    assert value(s, "fleet_at_quota", cluster="web") == 0
    assert value(s, "fleet_no_capacity", cluster="web") == 1
    assert value(s, "fleet_no_capacity", cluster="batch") == 0
    assert value(s, "fleet_cluster_error", cluster="web") == 1
    assert value(s, "fleet_cluster_error", cluster="batch") == 0
    assert value(s, "fleet_rate_limited", provider="memory") == 1
    assert value(s, "fleet_recovering") == 1

    guard.clear("batch")
    guard.clear("web")  # also ends the fleet-wide recovery hold
    client.delete(f"fleet:{fid}:provider:memory:hold")
    _, s = scrape(config, client)
    assert value(s, "fleet_at_quota", cluster="batch") == 0
    assert value(s, "fleet_cluster_error", cluster="web") == 0
    assert value(s, "fleet_no_capacity", cluster="web") == 0
    assert value(s, "fleet_rate_limited", provider="memory") == 0
    assert value(s, "fleet_recovering") == 0


def test_event_counters(client: redis.Redis, fid: str) -> None:
    config = make_config(fid, {"web": {}, "batch": {}})
    mkey = Keyspace(fid).metrics
    client.hset(mkey, mapping={
        "events|web|launched": 5, "events|web|killed": 3, "events|web|stopped": 2, "events|web|boot_timeout": 1,
        "events|web|error": 4, "events|web|no_capacity": 6, "events|web|desired": 9, "events|web|held": 1,
    })
    record_event(client, Keyspace(fid), "web", "kill_failed")
    pipe = client.pipeline()
    record_event(pipe, Keyspace(fid), "web", "kill_failed", 2)
    pipe.execute()
    text, s = scrape(config, client)
    assert "# TYPE fleet_events_total counter" in text
    assert 'fleet_events_total{cluster="web",kind="launched"} 5.0' in text
    assert value(s, "fleet_events_total", cluster="web", kind="desired") == 9
    assert value(s, "fleet_events_total", cluster="web", kind="held") == 1
    assert value(s, "fleet_launches_total", cluster="web") == 5
    assert value(s, "fleet_kills_total", cluster="web") == 3
    assert value(s, "fleet_replacements_total", cluster="web") == 3  # stopped + boot_timeout
    assert value(s, "fleet_failures_total", cluster="web", cause="error") == 4
    assert value(s, "fleet_failures_total", cluster="web", cause="no_capacity") == 6
    assert value(s, "fleet_failures_total", cluster="web", cause="boot_timeout") == 1
    assert value(s, "fleet_failures_total", cluster="web", cause="kill_failed") == 3
    assert value(s, "fleet_failures_total", cluster="web", cause="at_quota") == 0
    # a configured cluster without events still has its counters, at zero
    assert value(s, "fleet_launches_total", cluster="batch") == 0
    assert value(s, "fleet_failures_total", cluster="batch", cause="short_launch") == 0


def test_time_to_running_histogram(client: redis.Redis, fid: str) -> None:
    config = make_config(fid, {"web": {}, "batch": {}})
    for seconds in (0.5, 0.9, 1.5, 7, 45, 45, 5000):
        record_ready(client, Keyspace(fid), "web", seconds)
    pipe = client.pipeline(transaction=True)  # queued on a caller's transaction, not executed by it
    record_ready(pipe, Keyspace(fid), "web", 250, workers=3)
    assert client.hget(Keyspace(fid).metrics, "ready_count|web") == b"7"
    pipe.execute()
    raw = client.hgetall(Keyspace(fid).metrics)
    assert raw[b"ready|web|60"] == b"2" and raw[b"ready|web|300"] == b"3"  # stored NOT cumulative
    assert raw[b"ready_count|web"] == b"10"

    text, s = scrape(config, client)
    assert "# TYPE fleet_time_to_running_seconds histogram" in text
    expected = {"1.0": 2, "2.0": 3, "5.0": 3, "10.0": 4, "30.0": 4, "60.0": 6, "120.0": 6, "300.0": 9,
                "600.0": 9, "1800.0": 9, "+Inf": 10}
    for le, n in expected.items():
        assert value(s, "fleet_time_to_running_seconds_bucket", cluster="web", le=le) == n, le
    assert value(s, "fleet_time_to_running_seconds_count", cluster="web") == 10
    assert value(s, "fleet_time_to_running_seconds_sum", cluster="web") == pytest.approx(
        0.5 + 0.9 + 1.5 + 7 + 45 + 45 + 5000 + 750)
    assert value(s, "fleet_time_to_running_seconds_count", cluster="batch") == 0
    assert value(s, "fleet_time_to_running_seconds_bucket", cluster="batch", le="+Inf") == 0


def test_lua_helpers_match_python(client: redis.Redis, fid: str) -> None:
    """The prelude the store's scripts start with (fleet/lua/prelude.lua) writes exactly what
    record_ready / record_event do."""
    from importlib.resources import files

    prelude = lua_constants() + files("fleet").joinpath("lua", "prelude.lua").read_text()
    script = client.register_script(prelude + """
        count_event('launched')
        count_event('killed', 2)
        for i = 4, #ARGV do record_ready(tonumber(ARGV[i])) end
        record_ready(3.25, 2)
        flush()
        return 0
    """)
    seconds = [0, 1, 1.5, 59.9, 60, 60.5, 1800, 2000]
    script(keys=[Keyspace(fid).cluster("lua").events, Keyspace(fid).metrics], args=["lua", 1000, time.time(), *seconds])
    for x in seconds:
        record_ready(client, Keyspace(fid), "py", x)
    record_ready(client, Keyspace(fid), "py", 3.25, workers=2)
    stored: dict[bytes, bytes] = client.hgetall(Keyspace(fid).metrics)  # type: ignore[assignment]
    raw = {k.decode(): v.decode() for k, v in stored.items()}
    lua = {k.replace("|lua", "|py"): v for k, v in raw.items() if "|lua" in k and k.startswith(("ready|", "ready_count"))}
    py = {k: v for k, v in raw.items() if "|py" in k and k.startswith(("ready|", "ready_count"))}
    assert lua == py
    assert float(raw["ready_sum|lua"]) == pytest.approx(float(raw["ready_sum|py"]))
    assert raw["events|lua|launched"] == "1" and raw["events|lua|killed"] == "2"


def test_provider_operations(client: redis.Redis, fid: str) -> None:
    config = make_config(fid, {"web": {}})
    for seconds in (0.004, 0.02, 0.02, 0.3, 4.0):
        record_op(client, Keyspace(fid), "memory", "status", seconds, None)
    record_op(client, Keyspace(fid), "memory", "run", 12.0, "TransientProviderError")
    record_op(client, Keyspace(fid), "memory", "run", 0.7, "TransientProviderError")
    record_op(client, Keyspace(fid), "memory", "run", 0.7, "QuotaExceeded")
    record_op(client, Keyspace(fid), "memory", "kill", 0.06, None)
    text, s = scrape(config, client)
    assert "# TYPE fleet_provider_operation_seconds histogram" in text
    st = {"provider": "memory", "op": "status"}
    assert value(s, "fleet_provider_operation_seconds_bucket", le="0.01", **st) == 1
    assert value(s, "fleet_provider_operation_seconds_bucket", le="0.05", **st) == 3
    assert value(s, "fleet_provider_operation_seconds_bucket", le="0.25", **st) == 3
    assert value(s, "fleet_provider_operation_seconds_bucket", le="0.5", **st) == 4
    assert value(s, "fleet_provider_operation_seconds_bucket", le="5.0", **st) == 5
    assert value(s, "fleet_provider_operation_seconds_bucket", le="+Inf", **st) == 5
    assert value(s, "fleet_provider_operation_seconds_count", **st) == 5
    assert value(s, "fleet_provider_operation_seconds_sum", **st) == pytest.approx(4.344)
    run = {"provider": "memory", "op": "run"}
    assert value(s, "fleet_provider_operation_seconds_bucket", le="10.0", **run) == 2
    assert value(s, "fleet_provider_operation_seconds_count", **run) == 3
    assert value(s, "fleet_provider_operation_seconds_count", provider="memory", op="kill") == 1
    assert value(s, "fleet_provider_operation_seconds_count", provider="memory", op="list") == 0
    assert 'fleet_provider_errors_total{error="TransientProviderError",op="run",provider="memory"} 2.0' in text
    assert value(s, "fleet_provider_errors_total", provider="memory", op="run", error="QuotaExceeded") == 1
    assert ("fleet_provider_errors_total", frozenset({"provider": "memory", "op": "status",
                                                      "error": "TransientProviderError"}.items())) not in s


def test_record_op_never_raises() -> None:
    dead = unreachable()
    record_op(dead, Keyspace("x"), "memory", "run", 0.1, None)


def test_redis_down_is_a_gauge_not_a_failed_scrape(fid: str) -> None:
    config = make_config(fid, {"web": {}})
    dead = unreachable()
    _, s = scrape(config, dead)
    assert value(s, "fleet_redis_up") == 0


def test_serve_over_http(client: redis.Redis, fid: str) -> None:
    config = make_config(fid, {"web": {"max_workers": 9}})
    Store(client, fid).set_desired("web", 3)
    client.hset(f"fleet:{fid}:web:handles", "h1", handle(2, "running"))
    client.delete(f"fleet:{fid}:web:counts")  # records written by hand: the counts are rebuilt
    client.hset(Keyspace(fid).metrics, "events|web|launched", 1)
    record_op(client, Keyspace(fid), "memory", "list", 0.03, None)
    server, thread = metrics.serve(config, client, 0)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.status == 200
            s = parse(resp.read())
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert value(s, "fleet_desired_workers", cluster="web") == 3
    assert value(s, "fleet_max_workers", cluster="web") == 9
    assert value(s, "fleet_workers", cluster="web", state="running") == 2
    assert value(s, "fleet_launches_total", cluster="web") == 1
    assert value(s, "fleet_provider_operation_seconds_bucket", provider="memory", op="list", le="0.05") == 1


# -- cost of a scrape ------------------------------------------------------------------------
def test_scrape_is_one_round_trip_whatever_the_size(client: redis.Redis, fid: str) -> None:
    clusters = [f"c{i}" for i in range(50)]
    config = make_config(fid, {c: {"max_workers": 100} for c in clusters})
    counted, counts = counting_client(REDIS_URL)
    counted.ping()  # connect (and its handshake) before counting
    registry = metrics.registry_for(config, counted)

    def cost() -> tuple[int, int]:
        counts.reset()
        generate_latest(registry)
        return counts.round_trips, counts.total

    cost()  # the first scrape builds each cluster's (empty) counts
    small = cost()
    pipe = client.pipeline(transaction=False)
    for c in clusters:
        pipe.hset(f"fleet:{fid}:{c}:handles", mapping={f"h{j}": handle(2, "running") for j in range(40)})
        pipe.hset(f"fleet:{fid}:{c}:pending", mapping={f"l{j}": json.dumps({"count": 1, "state": "queued"})
                                                       for j in range(10)})
        pipe.hset(Keyspace(fid).metrics, mapping={f"events|{c}|launched": 40, f"ready|{c}|10": 40})
        pipe.delete(f"fleet:{fid}:{c}:counts")  # records written by hand: the counts are rebuilt
    pipe.execute()
    store = Store(client, fid)
    for c in clusters:
        store.rebuild_counts(c)
    big = cost()
    assert small == big  # handles, launches and metrics fields cost nothing more
    round_trips, commands = big
    assert round_trips == 1
    assert commands <= 2 + 7 * len(clusters) + 1  # 7: the cost hash (fleet.state.costs) too
    s = parse(generate_latest(registry))
    assert value(s, "fleet_workers", cluster="c49", state="running") == 80
    assert value(s, "fleet_pending_launch_workers", cluster="c0") == 10
    assert value(s, "fleet_time_to_running_seconds_bucket", cluster="c7", le="30.0") == 40


def test_collector_does_not_read_at_registration(fid: str) -> None:
    config = make_config(fid, {"web": {}})
    counted, counts = counting_client(REDIS_URL)
    metrics.registry_for(config, counted)
    assert counts.round_trips == 0
    assert FleetCollector(config, counted).describe() == []
