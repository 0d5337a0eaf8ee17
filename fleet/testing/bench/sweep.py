"""`fleet bench` section 4, `sweep`: one full sweep (`Sweeper.sweep_cluster` per cluster, in
this process, a no-op dispatcher) over many handles and clusters; Redis round trips counted
by a counting connection class, commands from INFO commandstats, the provider's time apart."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from fleet.embedded import EmbeddedRedis
from fleet.testing.bench.measure import commandstats, delta
from fleet.testing.counting import counting_client
from fleet.wrappers import ProviderWrapper


class _Dispatcher:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def run(self, *a: Any) -> None:
        self.calls["run"] += 1

    def kill(self, *a: Any) -> None:
        self.calls["kill"] += 1

    def reconcile(self, *a: Any) -> None:
        self.calls["reconcile"] += 1

    def drain(self, *a: Any) -> None:
        self.calls["drain"] += 1

    def check(self, *a: Any) -> None:
        self.calls["check"] += 1


class _Timed(ProviderWrapper):
    """Sums the seconds spent in the provider it wraps (to report Fleet's own time apart)."""

    seconds = 0.0

    def _call(self, op: str, cluster: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(cluster, *args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started


def _time_provider(wrapped: ProviderWrapper) -> _Timed:
    """Put a _Timed right around the raw provider under `wrapped`'s wrappers."""
    layer = wrapped
    while isinstance(layer.inner, ProviderWrapper):
        layer = layer.inner
    timer = _Timed(layer.inner, layer.name)
    layer.inner = timer
    return timer


def section_sweep(work: Path, cases: tuple[tuple[int, int], ...], say: Callable[[str], None]) -> dict[str, Any]:
    from fleet.config import parse_config
    from fleet.manager import Manager
    from providers.memory import MemoryProvider

    server = EmbeddedRedis(work / "sweep-redis", persist=False, die_with_parent=True)
    url = server.start()
    rows = []
    try:
        plain = redis.Redis.from_url(url)
        for handles, clusters in cases:
            say(f"sweep: {handles} handles over {clusters} clusters: seeding ...")
            plain.flushdb()
            MemoryProvider.reset()
            fid = "s" + uuid.uuid4().hex[:8]
            names = [f"c{i:03d}" for i in range(clusters)]
            data = {"fleet": {"id": fid, "launch_timeout": 600},
                    "providers": {"memory": {"ops_per_second": 10000}},
                    "clusters": {c: {"provider": "memory", "max_workers": 1_000_000, "boot_timeout": 36000,
                                     "container": {"command": ["worker"]}} for c in names}}
            config = parse_config(data, "<bench>")
            counted, tally = counting_client(url)
            dispatcher = _Dispatcher()
            manager = Manager(config, counted, dispatcher, url=url)
            raw = manager.pool.raw("memory")
            per = handles // clusters
            for c in names:
                spec, ref = config.spec(c), manager.pool.cluster(c)
                for start in range(0, per, 5000):
                    count = min(5000, per - start)
                    lid = uuid.uuid4().hex
                    got = raw.run_workers(ref, spec.container, spec.hardware, count, launch_id=lid)
                    manager.store.record_launch(c, lid, got)
                manager.store.set_desired(c, per)
            timer = _time_provider(manager.pool.get("memory"))
            row: dict[str, Any] = {"handles": handles, "clusters": clusters}
            for label in ("first", "steady"):  # first: every handle turns running; steady: nothing changes
                say(f"sweep: {handles} handles over {clusters} clusters: {label} sweep ...")
                before, sent, timer.seconds = commandstats(plain), tally.round_trips, 0.0
                started = time.perf_counter()
                for c in names:
                    manager.sweeper.sweep_cluster(c)
                elapsed = time.perf_counter() - started
                cmds = delta(commandstats(plain), before)
                row[label] = {"seconds": round(elapsed, 3), "provider_seconds": round(timer.seconds, 3),
                              "fleet_seconds": round(elapsed - timer.seconds, 3),
                              "round_trips": tally.round_trips - sent,
                              "round_trips_per_cluster": round((tally.round_trips - sent) / clusters, 1),
                              "redis_commands": sum(cmds.values())}
            row["running"] = sum(s.counts.of("running") for s in manager.store.summaries(names).values())
            rows.append(row)
            counted.connection_pool.disconnect()
    finally:
        server.stop()
        MemoryProvider.reset()
    return {"rows": rows}
