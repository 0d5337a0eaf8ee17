"""Prometheus metrics, kept in Redis so that every control-plane worker contributes to them and
any process (`fleet metrics --port`, a control-plane worker) can serve them.

Counters and histograms are the fields of the fleet's metrics hash (`fleet.counters` writes and
names them). Gauges (workers by state, desired, pending, at quota, rate-limited...) are not
stored: the collector reads them at scrape time from the cluster keys (`fleet.keys`; workers and
handles by state from the counts the store keeps, never the records), in one pipelined round
trip whatever the number of clusters, handles or launches.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from fleet import clock
from fleet.config import FleetConfig
from fleet.counters import OP_BUCKETS, OPS, READY_BUCKETS
from fleet.keys import Keyspace
from fleet.model import FAILURE_KINDS, REPLACEMENT_KINDS, Counts, HandleStatus, LaunchRecord, LaunchState
from fleet.state.costs import tally
from fleet.store import Store

log = logging.getLogger(__name__)

#: worker / handle states reported, each always
STATES: tuple[str, ...] = tuple(s.value for s in HandleStatus)
#: event kinds that count as a failure, reported as fleet_failures_total{cause}
FAILURE_CAUSES: tuple[str, ...] = tuple(k.value for k in FAILURE_KINDS)


# -- the collector ---------------------------------------------------------------------------
def _le_value(le: str) -> float:
    try:
        return float(le)
    except ValueError:
        return math.inf


def _cumulative(counts: dict[str, float], buckets: Sequence[str]) -> list[tuple[str, float]]:
    """Non-cumulative counts by `le` -> the sorted cumulative buckets Prometheus wants (every
    standard bound present; a bound found in Redis but not in `buckets` is kept too)."""
    bounds: dict[float, float] = {_le_value(le): 0.0 for le in buckets}
    bounds.setdefault(math.inf, 0.0)
    for le, n in counts.items():
        v = _le_value(le)
        bounds[v] = bounds.get(v, 0.0) + n
    out, total = [], 0.0
    for v in sorted(bounds):
        total += bounds[v]
        out.append((floatToGoString(v), total))
    return out


def _num(raw: Any) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError):
        return 0.0


def _until(raw: Any, now: float) -> int:
    """1 if a hold key (its value: the time it ends) is set and not yet over."""
    return int(raw is not None and _num(raw) > now)


def _records(values: Iterable[bytes], what: str) -> Iterator[dict[str, Any]]:
    for raw in values:
        try:
            record = json.loads(raw)
        except ValueError:
            log.warning("skipping a malformed %s record in the metrics: %r", what, raw[:100])
            continue
        if isinstance(record, dict):
            yield record


class FleetCollector(Collector):
    """Reads a fleet's metrics from Redis at scrape time (one pipelined round trip)."""

    #: handles: the counts; cost: the cost hash (fleet.state.costs)
    PER_CLUSTER = ("desired", "handles", "pending", "at_quota", "no_capacity", "error", "cost")

    def __init__(self, config: FleetConfig, client: redis.Redis) -> None:
        self.config = config
        self.r = client
        self.keys = Keyspace(config.fleet.id)
        self._store = Store(client, config.fleet.id)

    def providers(self) -> list[str]:
        used = {p for spec in self.config.clusters.values() for p in spec.providers}
        return sorted(used | set(self.config.providers))

    def describe(self) -> list[Metric]:
        return []  # no collect() at registration time (it would read Redis)

    def read(self) -> dict[str, Any]:
        """Everything a scrape needs, in one pipeline: 2 + 7 per cluster + 1 per provider commands."""
        clusters = list(self.config.clusters)
        providers = self.providers()
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.keys.metrics)
        pipe.get(self.keys.recovering)
        for c in clusters:
            k = self.keys.cluster(c)
            pipe.hget(k.desired, "n")
            pipe.hgetall(k.counts)
            pipe.hvals(k.pending)
            pipe.get(k.at_quota)
            pipe.get(k.no_capacity)
            pipe.exists(k.error)
            pipe.hgetall(k.cost)
        for p in providers:
            pipe.get(self.keys.provider_hold(p))
        raw = pipe.execute()
        metrics, recovering, rest = raw[0], raw[1], raw[2:]
        n = len(self.PER_CLUSTER)
        per_cluster = {c: dict(zip(self.PER_CLUSTER, rest[i * n:(i + 1) * n])) for i, c in enumerate(clusters)}
        for c, raw_c in per_cluster.items():
            if not Counts.decode(raw_c["handles"]).whole:  # never built, or deleted: two more round trips
                self._store.rebuild_counts(c)
                raw_c["handles"] = self.r.hgetall(self.keys.cluster(c).counts)
        holds = dict(zip(providers, rest[len(clusters) * n:]))
        return {
            "metrics": {k.decode(): v.decode() for k, v in metrics.items()},
            "recovering": recovering, "clusters": per_cluster, "holds": holds,
        }

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("fleet_redis_up", "1 if the last scrape could read the fleet's Redis")
        try:
            data = self.read()
        except redis.RedisError as exc:
            log.warning("metrics scrape cannot read Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self._gauges(data, clock.now(self.r))  # holds end at Redis times (fleet.clock)
        yield from self._counters(data["metrics"])
        yield from self._histograms(data["metrics"])

    # -- gauges ----------------------------------------------------------------------------
    def _gauges(self, data: dict[str, Any], now: float) -> Iterator[Metric]:
        workers = GaugeMetricFamily("fleet_workers", "Workers by cluster and state (from the handle records)",
                                    labels=["cluster", "state"])
        handles = GaugeMetricFamily("fleet_handles", "Handles (containers/VMs) by cluster and state",
                                    labels=["cluster", "state"])
        desired = GaugeMetricFamily("fleet_desired_workers", "The desired number of workers (absent: never set)",
                                    labels=["cluster"])
        max_w = GaugeMetricFamily("fleet_max_workers", "The cluster's max_workers", labels=["cluster"])
        min_w = GaugeMetricFamily("fleet_min_workers", "The cluster's min_workers", labels=["cluster"])
        pending = GaugeMetricFamily("fleet_pending_launch_workers",
                                    "Workers of launches requested but not yet recorded (cancelled ones excluded)",
                                    labels=["cluster"])
        at_quota = GaugeMetricFamily("fleet_at_quota", "1 while the cluster is held off launches at its quota",
                                     labels=["cluster"])
        no_capacity = GaugeMetricFamily("fleet_no_capacity",
                                        "1 while the cluster is held off launches: no capacity for any type it may use",
                                        labels=["cluster"])
        error = GaugeMetricFamily("fleet_cluster_error", "1 while the cluster has a permanent error (fleet clear)",
                                  labels=["cluster"])
        by_pool = GaugeMetricFamily("fleet_pool_workers", "Workers by cluster, pool and state (clusters with pools)",
                                    labels=["cluster", "pool", "state"])
        interrupted = GaugeMetricFamily("fleet_interrupted_workers",
                                        "Workers the cloud reclaims, still draining or stopping", labels=["cluster"])
        for cluster, raw in data["clusters"].items():
            spec = self.config.clusters[cluster]
            counts = Counts.decode(raw["handles"])
            for state in STATES:
                workers.add_metric([cluster, state], counts.of(state))
                handles.add_metric([cluster, state], counts.handles.get(HandleStatus(state), 0))
                for pool in spec.pools and spec.pool_list:
                    by_pool.add_metric([cluster, pool.name, state],
                                       counts.in_pool(pool.name, state, spec.pool_list[0].name))
            interrupted.add_metric([cluster], counts.interrupted)
            if raw["desired"] is not None:
                desired.add_metric([cluster], _num(raw["desired"]))
            max_w.add_metric([cluster], spec.max_workers)
            min_w.add_metric([cluster], spec.min_workers)
            pending.add_metric([cluster], sum(_num(p.get("count", 0)) for p in _records(raw["pending"], "pending")
                                              if p.get("state") != LaunchState.CANCELLED.value))
            at_quota.add_metric([cluster], _until(raw["at_quota"], now))
            no_capacity.add_metric([cluster], _until(raw["no_capacity"], now))
            error.add_metric([cluster], int(bool(raw["error"])))
        rate_limited = GaugeMetricFamily("fleet_rate_limited", "1 while a provider is held off after a rate limit",
                                         labels=["provider"])
        for provider, raw in data["holds"].items():
            rate_limited.add_metric([provider], _until(raw, now))
        recovering = GaugeMetricFamily("fleet_recovering",
                                       "1 while launches are held after Redis lost data under the control plane")
        recovering.add_metric([], _until(data["recovering"], now))
        yield from (workers, handles, desired, max_w, min_w, pending, at_quota, no_capacity, error, rate_limited,
                    recovering, by_pool, interrupted)
        yield from self._costs(data, now)

    def _costs(self, data: dict[str, Any], now: float) -> Iterator[Metric]:
        """What runs costs (fleet.state.costs), by cluster, pool and group ("" for none)."""
        hourly = GaugeMetricFamily("fleet_hourly_cost", "USD per hour of the handles in Redis and the launches "
                                   "in flight", labels=["cluster", "pool", "group"])
        total = CounterMetricFamily("fleet_cost", "USD the cluster's handles cost, from launch to confirmed stop "
                                    "(the live ones so far)", labels=["cluster", "pool", "group"])
        for cluster, raw in data["clusters"].items():
            spec = self.config.clusters[cluster]
            pending = []
            for v in raw["pending"]:
                try:
                    pending.append(LaunchRecord.decode(v))
                except (ValueError, KeyError, TypeError):
                    continue
            cost = tally(raw["cost"] or {}, pending, now)
            for declared in spec.pools and spec.pool_list:
                cost.pool(declared.name)
            for name, c in sorted(cost.pools.items()):
                labels = [cluster, name, spec.group or ""]
                hourly.add_metric(labels, c.hourly)
                total.add_metric(labels, c.total)
        yield from (hourly, total)

    # -- counters --------------------------------------------------------------------------
    def _counters(self, metrics: dict[str, str]) -> Iterator[Metric]:
        events: dict[tuple[str, str], float] = {}
        op_errors: dict[tuple[str, str, str], float] = {}
        dead: dict[str, float] = {}
        pooled: dict[str, dict[tuple[str, ...], float]] = defaultdict(dict)
        for field, value in metrics.items():
            parts = field.split("|")
            if parts[0] == "events" and len(parts) == 3:
                events[(parts[1], parts[2])] = _num(value)
            elif (parts[0] == "pool_launches" and len(parts) == 3) or (
                    parts[0] in ("fallbacks", "interruptions") and len(parts) == 4):
                pooled[parts[0]][tuple(parts[1:])] = _num(value)
            elif parts[0] == "op_errors" and len(parts) == 4:
                op_errors[(parts[1], parts[2], parts[3])] = _num(value)
            elif parts[0] == "dead_letters" and len(parts) == 2:
                dead[parts[1]] = _num(value)
            elif parts[0] == "unreadable" and len(parts) == 4:
                pooled["unreadable"][tuple(parts[1:])] = _num(value)
        clusters = sorted(set(self.config.clusters) | {c for c, _ in events})

        def count(cluster: str, *kinds: str) -> float:
            return sum(events.get((cluster, k), 0) for k in kinds)

        total = CounterMetricFamily("fleet_events", "Events by cluster and kind", labels=["cluster", "kind"])
        for (cluster, kind), n in sorted(events.items()):
            total.add_metric([cluster, kind], n)
        launches = CounterMetricFamily("fleet_launches", "Launches recorded (events, not workers)", labels=["cluster"])
        kills = CounterMetricFamily("fleet_kills", "Kills confirmed (events, not workers)", labels=["cluster"])
        replacements = CounterMetricFamily(
            "fleet_replacements", "Workers that died or never booted and are replaced (stopped + boot_timeout)",
            labels=["cluster"])
        failures = CounterMetricFamily("fleet_failures", "Failures by cause", labels=["cluster", "cause"])
        for cluster in clusters:
            launches.add_metric([cluster], count(cluster, "launched"))
            kills.add_metric([cluster], count(cluster, "killed"))
            replacements.add_metric([cluster], count(cluster, *(k.value for k in REPLACEMENT_KINDS)))
            for cause in FAILURE_CAUSES:
                failures.add_metric([cluster, cause], count(cluster, cause))
        errors = CounterMetricFamily("fleet_provider_errors", "Failed provider operations by exception class",
                                     labels=["provider", "op", "error"])
        for key, n in sorted(op_errors.items()):
            errors.add_metric(list(key), n)
        dead_letters = CounterMetricFamily(
            "fleet_dead_letters", "Messages on the control plane's queues that could not be processed and were set "
            "aside (fleet:<id>:dead_letters), by reason", labels=["reason"])
        for reason, n in sorted(dead.items()):
            dead_letters.add_metric([reason], n)
        pool_launches = CounterMetricFamily("fleet_pool_launches", "Workers launched, by pool",
                                            labels=["cluster", "pool"])
        fallbacks = CounterMetricFamily("fleet_fallbacks",
                                        "Workers launched in a later pool because this one was skipped, by cause",
                                        labels=["cluster", "pool", "cause"])
        interruptions = CounterMetricFamily("fleet_interruptions",
                                            "Workers the cloud reclaimed (counted as interrupted, not failed), by "
                                            "pool and cause", labels=["cluster", "pool", "cause"])
        unreadable = CounterMetricFamily("fleet_unreadable_inputs",
                                         "Inputs from outside (queue messages, tags, labels, operations) that could "
                                         "not be read and were skipped or set aside, by source and reason",
                                         labels=["cluster", "source", "reason"])
        for family, name in ((pool_launches, "pool_launches"), (fallbacks, "fallbacks"),
                             (interruptions, "interruptions"), (unreadable, "unreadable")):
            for labels, n in sorted(pooled[name].items()):
                family.add_metric(list(labels), n)
        yield from (total, launches, kills, replacements, failures, errors, dead_letters, pool_launches, fallbacks,
                    interruptions, unreadable)

    # -- histograms ------------------------------------------------------------------------
    def _histograms(self, metrics: dict[str, str]) -> Iterator[Metric]:
        ready: dict[str, dict[str, float]] = defaultdict(dict)
        ready_sum: dict[str, float] = defaultdict(float)
        ops: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        op_sum: dict[tuple[str, str], float] = defaultdict(float)
        replaced: dict[str, dict[str, float]] = defaultdict(dict)
        replaced_sum: dict[str, float] = defaultdict(float)
        for field, value in metrics.items():
            parts = field.split("|")
            kind = parts[0]
            if kind == "ready" and len(parts) == 3:
                ready[parts[1]][parts[2]] = _num(value)
            elif kind == "ready_sum" and len(parts) == 2:
                ready_sum[parts[1]] = _num(value)
            elif kind == "op" and len(parts) == 4:
                ops[(parts[1], parts[2])][parts[3]] = _num(value)
            elif kind == "op_sum" and len(parts) == 3:
                op_sum[(parts[1], parts[2])] = _num(value)
            elif kind == "replaced" and len(parts) == 3:
                replaced[parts[1]][parts[2]] = _num(value)
            elif kind == "replaced_sum" and len(parts) == 2:
                replaced_sum[parts[1]] = _num(value)
        # (ready_count / op_count are not needed: _count is the +Inf bucket, kept in step with them)
        ttr = HistogramMetricFamily("fleet_time_to_running_seconds",
                                    "Seconds from a worker's launch request to it running", labels=["cluster"])
        for cluster in sorted(set(self.config.clusters) | set(ready)):
            ttr.add_metric([cluster], _cumulative(ready.get(cluster, {}), READY_BUCKETS), ready_sum.get(cluster, 0.0))
        latency = HistogramMetricFamily("fleet_provider_operation_seconds",
                                        "Seconds per provider operation (run/status/kill/list)",
                                        labels=["provider", "op"])
        for key in sorted({(p, op) for p in self.providers() for op in OPS} | set(ops)):
            latency.add_metric(list(key), _cumulative(ops.get(key, {}), OP_BUCKETS), op_sum.get(key, 0.0))
        ttr_replaced = HistogramMetricFamily(
            "fleet_replacement_seconds", "Seconds from an interruption notice to a replacement worker running",
            labels=["cluster"])
        for cluster in sorted(replaced):
            ttr_replaced.add_metric([cluster], _cumulative(replaced[cluster], READY_BUCKETS), replaced_sum[cluster])
        yield from (ttr, latency, ttr_replaced)


def registry_for(config: FleetConfig, client: redis.Redis) -> CollectorRegistry:
    """A registry holding only this fleet's collector (no process/platform metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(config, client))
    return registry


def serve(config: FleetConfig, client: redis.Redis, port: int, addr: str = "127.0.0.1") -> tuple[Any, Any]:
    """Serve /metrics on `addr:port` (0: a free port; see server.server_port) from a daemon
    thread. Returns (server, thread): stop with server.shutdown(); server.server_close()."""
    return start_http_server(port, addr=addr, registry=registry_for(config, client))
