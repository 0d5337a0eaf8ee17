"""The cost of what runs, on real Redis with inline tasks and the memory provider: every handle
records its price at launch, the run rate counts launches in flight and drops when handles stop,
the accumulated cost of a handle is price x (confirmed stop - launch), by pool and by group; old
records without a price, and garbage in the price field, cost 0 and break nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fleet.commands.cost import cost_rows
from fleet.model import HandleRecord
from tests.conftest import inline, work

# 3600 USD/h is one dollar a second: a test that runs for a fraction of a second still spends
PRICE = 3600.0
CLUSTERS = {
    "a": {"provider": "memory", "max_workers": 8, "container": {"command": ["w"]}, "price_per_hour": PRICE,
          "group": "team-a"},
    "b": {"pools": [{"name": "cheap", "provider": "memory", "price_per_hour": 36.0},
                    {"name": "dear", "provider": "memory"}],
          "price_per_hour": 720.0, "max_workers": 8, "container": {"command": ["w"]}, "group": "team-a"},
    "c": {"provider": "memory", "max_workers": 8, "container": {"command": ["w"]}},
}


def _records(m: Any, cluster: str) -> dict[str, HandleRecord]:
    return m.store.read(cluster).handles


def _events(m: Any, cluster: str, kind: str) -> list[dict[str, str]]:
    raw = m.store.r.xrange(m.store.of(cluster).events)
    out = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in raw]
    return [e for e in out if e.get("kind") == kind]


def test_each_handle_records_its_price_and_a_claimed_launch_counts_in_flight(fid: str) -> None:
    m, d = inline(fid, CLUSTERS)
    m.api.scale("a", 3)
    while d.jobs and d.jobs[0][0] != "run":
        d.do(*d.jobs.popleft())
    _, (_, launch_id) = d.jobs[0]
    assert m.store.cost("a").hourly == 0  # queued, not in flight yet
    claim = m.store.claim_launch("a", launch_id, {"": PRICE})
    assert claim.count == 3
    cost = m.store.cost("a")
    assert (cost.hourly, cost.pool("").in_flight, cost.pool("").rate) == (3 * PRICE, 3 * PRICE, 0)
    work(d)
    records = _records(m, "a")
    assert len(records) == 3 and {r.price for r in records.values()} == {PRICE}
    cost = m.store.cost("a")
    assert (cost.hourly, cost.pool("").in_flight) == (3 * PRICE, 0)  # recorded: no longer in flight
    launched = _events(m, "a", "launched")
    assert launched and float(launched[-1]["usd"]) == PRICE


def test_the_cost_of_a_handle_is_its_price_times_its_life(fid: str) -> None:
    m, d = inline(fid, CLUSTERS)
    m.api.scale("a", 2)
    work(d)
    born = {h: r.born for h, r in _records(m, "a").items()}
    assert len(born) == 2 and all(born.values())
    live = m.store.cost("a")
    assert live.hourly == 2 * PRICE and live.total > 0
    m.api.scale("a", 0)
    work(d)
    assert not _records(m, "a")
    cost = m.store.cost("a")
    assert cost.hourly == 0  # the rate drops once the handles are confirmed stopped
    killed = _events(m, "a", "killed")
    assert killed and "cost" in killed[-1]
    stop = int(m.store.r.xrevrange(m.store.of("a").events, count=10)[0][0].split(b"-")[0]) / 1000
    expected = sum(PRICE * (stop - b) / 3600 for b in born.values() if b is not None)
    assert cost.total == pytest.approx(expected, abs=PRICE * 2 * 0.005 / 3600)  # within 5 ms of each stop
    assert sum(float(e["cost"]) for e in killed) == pytest.approx(cost.total, abs=1e-5)
    assert m.store.cost("a", since=m.store.now() - 3600).total == pytest.approx(cost.total, abs=1e-5)


def test_cost_by_pool_and_by_group(fid: str) -> None:
    m, d = inline(fid, CLUSTERS)
    m.api.scale("a", 1)
    m.api.scale("b", 2)
    m.api.scale("c", 1)
    work(d)
    by_pool = {(r["cluster"], r["pool"]): r["hourly_cost"] for r in cost_rows(m.config, m.store, "pool")}
    assert by_pool[("a", "")] == PRICE
    assert by_pool[("b", "cheap")] == 2 * 36.0  # the pool's own price wins over the cluster's
    assert by_pool.get(("c", ""), 0) == 0  # the memory provider is free, and c names no price
    by_group = {r["group"]: r["hourly_cost"] for r in cost_rows(m.config, m.store, "group")}
    assert by_group["team-a"] == PRICE + 72.0 and by_group.get("-", 0) == 0
    for c in ("a", "b", "c"):
        m.api.scale(c, 0)
    work(d)
    assert all(r["hourly_cost"] == 0 for r in cost_rows(m.config, m.store, "group"))
    assert {r["group"] for r in cost_rows(m.config, m.store, "group") if r["cost_total"] > 0} == {"team-a"}


@pytest.mark.parametrize("usd", [None, "garbage", -5, 1e300, [1], True])
def test_old_records_and_garbage_prices_cost_nothing(fid: str, usd: Any) -> None:
    m, _ = inline(fid, CLUSTERS)
    record: dict[str, Any] = {"w": 1, "s": "running", "since": 1.0, "launch": "old", "kills": 0, "b": 1.0}
    if usd is not None:
        record["usd"] = usd
    k = m.store.of("c")
    m.store.r.hset(k.handles, "old-1", json.dumps(record))
    m.store.r.delete(k.counts, k.index)  # rebuilt from the records, as after an upgrade
    assert _records(m, "c")["old-1"].price is None
    assert m.store.cost("c").total == 0 and m.store.cost("c").hourly == 0
    assert m.store.apply_status("c", {"old-1": "stopped"}).gone == 1  # it leaves without an error
    assert m.store.cost("c").total == 0
    assert m.api.status("c")["cost_total"] == 0


def test_the_metrics_serve_the_cost_by_cluster_pool_and_group(fid: str) -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from fleet import metrics

    m, d = inline(fid, CLUSTERS)
    m.api.scale("a", 2)
    m.api.scale("b", 1)
    work(d)
    m.api.scale("a", 1)
    work(d)
    served = {(s.name, s.labels.get("cluster"), s.labels.get("pool"), s.labels.get("group")): s.value
              for f in text_string_to_metric_families(generate_latest(metrics.registry_for(m.config, m.store.r))
                                                      .decode())
              for s in f.samples if s.name in ("fleet_hourly_cost", "fleet_cost_total")}
    assert served[("fleet_hourly_cost", "a", "", "team-a")] == PRICE  # one of the two stopped
    assert served[("fleet_hourly_cost", "b", "cheap", "team-a")] == 36.0
    assert served[("fleet_hourly_cost", "b", "dear", "team-a")] == 0  # declared, nothing launched there
    assert not any(v for (name, cluster, _, _), v in served.items() if cluster == "c")  # free, no price
    assert served[("fleet_cost_total", "a", "", "team-a")] >= m.store.cost("a").pool("").spent > 0
