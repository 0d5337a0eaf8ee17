"""The provider limits bite across control-plane processes: two `celery -A tasks worker` processes
sweep and launch four clusters of one provider at once, and the provider's own journal (every
call, with its start and end, from every process) shows at most `concurrent_launches` launch
calls in flight at any instant and at most `ops_per_second` calls started in any second."""

from __future__ import annotations

import json
from pathlib import Path

from fleet.testing.plane import plane
from tests.conftest import wait_for

CLUSTERS = ("a", "b", "c", "d")
OPS_PER_SECOND = 5
SLOTS = 2
SLEEPER = json.dumps(["sh", "-c", "exec sleep 600"])


def test_ops_per_second_and_concurrent_launches_hold_across_two_worker_processes(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    clusters = "".join(f"""
        [clusters.{name}]
        provider = "faulty"
        max_workers = 2
        [clusters.{name}.container]
        command = {SLEEPER}
        [clusters.{name}.provider_options]
        inner = "local"
        inner_options = {{ kill_grace = 1 }}
        slow_seconds = 1.5            # launches last long enough to overlap
        journal = "{journal}"
        """ for name in CLUSTERS)
    with plane(tmp_path, clusters, workers=2, fleet=f"""
        sweep_interval = 0.5
        [providers.faulty]
        ops_per_second = {OPS_PER_SECOND}
        concurrent_launches = {SLOTS}
        """) as p:
        p.wait_ready("worker-2")
        for name in CLUSTERS:  # a burst: four launches at once, beside four clusters' sweeps
            p.call("fleet.scale", name, 2)
        wait_for(lambda: all(p.call("fleet.status", c)["running"] == 2 for c in CLUSTERS), timeout=120,
                 interval=0.5, what="every cluster running")
        for name in CLUSTERS:
            p.call("fleet.scale", name, 0)
        wait_for(lambda: all(p.call("fleet.status", c)["handles"] == 0 for c in CLUSTERS), timeout=120,
                 interval=0.5, what="every cluster at 0")
    calls = [(op, float(a), float(b), int(pid)) for op, a, b, pid in
             (line.split() for line in journal.read_text().splitlines())]
    runs = sorted((a, b) for op, a, b, _ in calls if op == "run")
    assert len(runs) >= len(CLUSTERS)
    assert len({pid for *_, pid in calls}) == 2  # both processes called the provider
    # concurrent launches: the most run calls in flight at one instant
    edges = sorted([(a, 1) for a, _ in runs] + [(b, -1) for _, b in runs])
    in_flight = most = 0
    for _, step in edges:
        in_flight += step
        most = max(most, in_flight)
    assert most == SLOTS, f"{most} launches in flight at once (limit {SLOTS})"
    # operations per second: call starts in any window of 0.9 s (a little under the limiter's
    # second, for the time between taking a token and the call reaching the provider)
    starts = sorted(a for _, a, _, _ in calls)
    busiest = max(sum(1 for t in starts[i:] if t - s < 0.9) for i, s in enumerate(starts))
    assert busiest <= OPS_PER_SECOND, f"{busiest} calls started within 0.9 s (limit {OPS_PER_SECOND}/s)"
    assert busiest >= OPS_PER_SECOND - 1  # the demand was above the limit: it did bite
