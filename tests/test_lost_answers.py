"""Lost cloud answers against a real control plane: an EC2 cluster behind a proxy in front of
moto's server that lets RunInstances calls land and then loses their answers (with an outage that
defeats botocore's retries), while a watcher counts the instances at moto itself ten times a
second. Fleet must never pass `max_workers` as EC2 counts, never launch a launch twice, and leave
nothing behind, whether the lost call is a launch's first, a later one of several, or one whose
launch is cancelled while its answer is missing."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from fleet.testing.plane import Plane, plane
from tests.kits.aws import REGION, moto_world
from tests.kits.aws_faults import FaultProxy

MAX = 6


def live_instances(ec2: Any, fleet_id: str, *, states: tuple[str, ...] = ("pending", "running")) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    filters = [{"Name": "tag:fleet:id", "Values": [fleet_id]}, {"Name": "tag:fleet:cluster", "Values": ["web"]},
               {"Name": "instance-state-name", "Values": list(states)}]
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for reservation in page["Reservations"]:
            out.extend(reservation["Instances"])
    return out


def settled(p: Plane, ec2: Any, n: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        s = p.call("fleet.status", "web")
        live = len(live_instances(ec2, p.fleet_id))
        if (s["desired"], s["running"], s["pending"], s["initializing"], s["stopping"], s["unknown"], live) == (
                n, n, 0, 0, 0, 0, n):
            return
        assert time.monotonic() < deadline, f"not settled at {n}: {s}, {live} live at EC2"
        time.sleep(0.3)


def test_lost_run_instances_answers_never_pass_max_workers_nor_leak(tmp_path: Path) -> None:
    with moto_world() as world, FaultProxy(world.url, outage=3.0) as proxy:
        import boto3

        ec2 = boto3.client("ec2", endpoint_url=world.url, region_name=REGION)
        with plane(tmp_path, f"""
            [clusters.web]
            provider = "aws_ec2"
            max_workers = {MAX}
            boot_timeout = 120
            [clusters.web.container]
            command = ["worker"]
            [clusters.web.provider_options]
            ami = "{world.ami}"
            region = "{REGION}"
            endpoint_url = "{proxy.url}"
            batch_size = 2                  # a launch of 6 is three RunInstances calls
            max_attempts = 2
            """, fleet="""
            sweep_interval = 0.5
            orphan_grace = 2
            launch_timeout = 15
            kill_retry = 0.5
            [providers.aws_ec2]
            ops_per_second = 200
            """) as p:
            peak, over, stop = [0], [], threading.Event()

            def watch() -> None:
                while not stop.is_set():
                    n = len(live_instances(ec2, p.fleet_id))
                    peak[0] = max(peak[0], n)
                    if n > MAX:
                        over.append(n)
                    time.sleep(0.1)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            try:
                for skip in (1, 0, 2):  # lose a later call, the first one, the last one
                    lost = proxy.lost
                    proxy.lose(1, skip=skip)
                    p.call("fleet.scale", "web", MAX)
                    settled(p, ec2, MAX)
                    assert proxy.lost == lost + 1
                    p.call("fleet.scale", "web", 0)
                    settled(p, ec2, 0)
                # a lost answer, and the launch cancelled while nobody knows what it made
                lost = proxy.lost
                proxy.lose(1, skip=1)
                p.call("fleet.scale", "web", MAX)
                deadline = time.monotonic() + 30
                while proxy.lost == lost:
                    assert time.monotonic() < deadline, "no answer was lost"
                    time.sleep(0.02)
                p.call("fleet.scale", "web", 1)
                settled(p, ec2, 1)
                p.call("fleet.scale", "web", MAX)
                settled(p, ec2, MAX)
                p.call("fleet.scale", "web", 0)
                settled(p, ec2, 0)
            finally:
                stop.set()
                watcher.join()
            print(f"lost answers: {proxy.lost} RunInstances answers lost, {proxy.calls['replayed']} replayed by "
                  f"ClientToken, peak {peak[0]}/{MAX} instances at EC2")
            assert not over, f"max_workers {MAX} passed at EC2: {over[:5]}"
            assert peak[0] == MAX
            # no launch made more instances than it asked for (so none was made twice)
            events = [e for _, e in p.r.xrange(p.keys.cluster("web").events)]
            asked = {e[b"launch"].decode(): int(e[b"workers"]) for e in events if e[b"kind"] == b"launch"}
            made = Counter(next(t["Value"] for t in i["Tags"] if t["Key"] == "fleet:launch")
                           for i in live_instances(ec2, p.fleet_id, states=("pending", "running", "shutting-down",
                                                                            "terminated", "stopping", "stopped")))
            assert made and all(n <= asked.get(lid, 0) for lid, n in made.items()), (made, asked)
            assert proxy.calls["replayed"] + proxy.lost >= 4
            assert p.stack.check() == []
