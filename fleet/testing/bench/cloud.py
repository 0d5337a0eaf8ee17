"""`fleet bench` section 5, `cloud`: API calls to scale 0 -> N -> 0 on aws_ec2 (on-demand and
spot), aws_ecs (moto server) and gce (fleet.testing.backends.gce's fake), through the managed
layer in this process (`fleet.testing.inline`), beside one call per instance; and ECS's
StopTask calls beside a sequential loop of them. Cloud SDKs are imported when used."""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleet.embedded import EmbeddedRedis

EC2_MUTATING = {"RunInstances", "TerminateInstances", "StopInstances", "CreateTags", "CreateFleet",
                "CreateLaunchTemplate"}
ECS_MUTATING = {"RunTask", "StopTask", "TagResource"}
GCE_MUTATING = {"insert", "bulk_insert", "delete"}


def section_cloud(work: Path, n: int, say: Callable[[str], None]) -> dict[str, Any]:
    from fleet.config import parse_config
    from fleet.control.reconciler import LAUNCH_CHUNK
    from fleet.testing.backends.aws import moto_world
    from fleet.testing.backends.gce import FakeGCE
    from fleet.testing.inline import drive, inline_manager

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's access log

    server = EmbeddedRedis(work / "cloud-redis", persist=False, die_with_parent=True)
    url = server.start()
    fake = FakeGCE()
    fake.ready_after_reads = 0
    gce_url = fake.start()
    rows: dict[str, Any] = {}
    try:
        with moto_world() as aws:
            fid = "k" + uuid.uuid4().hex[:8]
            common = {"max_workers": n, "boot_timeout": 3600, "container": {"command": ["worker"]}}
            data = {"fleet": {"id": fid, "launch_timeout": 600, "orphan_grace": 3600},
                    "providers": {p: {"ops_per_second": 10000, "concurrent_launches": 64}
                                  for p in ("aws_ec2", "aws_ecs", "gce")},
                    "clusters": {
                        "ec2": {**common, "provider": "aws_ec2", "provider_options": aws.ec2_options()},
                        # spot over the 6 cheapest fitting types: instant EC2 Fleets, not RunInstances
                        "ec2spot": {**common, "provider": "aws_ec2",
                                    "provider_options": aws.ec2_options(market="spot")},
                        "ecs": {**common, "provider": "aws_ecs", "hardware": {"cpu": 0.25, "memory_mb": 512},
                                "provider_options": aws.ecs_options()},
                        "gce": {**common, "provider": "gce", "provider_options": {
                            "project": "fleet-bench", "zone": "bench-zone-a", "api_endpoint": gce_url,
                            "anonymous": True,
                            "source_image": "projects/debian-cloud/global/images/family/debian-12",
                            "operation_timeout": 60, "retry_deadline": 5}},
                    }}
            config = parse_config(data, "<bench>")
            manager, dispatcher = inline_manager(config, url)
            for cluster, mutating in (("ec2", EC2_MUTATING), ("ec2spot", EC2_MUTATING), ("ecs", ECS_MUTATING),
                                      ("gce", GCE_MUTATING)):
                calls: Counter[str] = Counter()
                if cluster == "gce":
                    fake.reset_counters()
                else:
                    provider: Any = manager.pool.raw(config.spec(cluster).pool_list[0].provider)
                    client = provider.client(manager.pool.cluster(cluster))
                    client.meta.events.register("before-call",
                                                lambda model, calls=calls, **_: calls.update([model.name]))
                row: dict[str, Any] = {}
                for phase, target in (("up", n), ("down", 0)):
                    say(f"cloud: {cluster}: scale to {target} ...")
                    calls.clear()
                    if cluster == "gce":
                        fake.reset_counters()
                    result = drive(manager, dispatcher, cluster, target, timeout=600)
                    seen = Counter(fake.calls) if cluster == "gce" else Counter(calls)
                    row[phase] = {**result, "mutating": sum(v for k, v in seen.items() if k in mutating),
                                  "reads": sum(v for k, v in seen.items() if k not in mutating), "calls": dict(seen)}
                row["mutating"] = row["up"]["mutating"] + row["down"]["mutating"]
                row["reads"] = row["up"]["reads"] + row["down"]["reads"]
                row["baseline_mutating"] = 2 * n  # one run and one terminate per instance
                rows[cluster] = row
            rows["ecs"]["stops"] = _ecs_stops(manager, dispatcher, aws, n, rows["ecs"]["down"]["seconds"], say)
    finally:
        fake.stop()
        server.stop()
    return {"n": n, "launch_chunk": LAUNCH_CHUNK, "providers": rows}


#: the round trip modelled for a cloud API called from outside the provider's network (seconds)
MODELLED_LATENCY = 0.05


def _ecs_stops(manager: Any, dispatcher: Any, aws: Any, n: int, fleet_down: float,
               say: Callable[[str], None]) -> dict[str, Any]:
    """Fleet's scale-down of `n` ECS tasks (concurrent StopTask calls) beside a plain sequential
    loop of StopTask over `n` tasks, against moto as it is and with a modelled API round trip
    (MODELLED_LATENCY, added in botocore's before-send: a sleep releases the GIL, as a network
    wait does). moto answers StopTask from this process, so without latency both are bound by
    its CPU, not by waiting."""
    from fleet.testing.inline import drive

    provider: Any = manager.pool.raw("aws_ecs")
    ref = manager.pool.cluster("ecs")
    client = provider.client(ref)
    opts = ref.options
    vpc = {"awsvpcConfiguration": {"subnets": list(opts.subnets), "securityGroups": list(opts.security_groups)}}

    def sequential() -> float:
        arns: list[str] = []
        for _ in range(0, n, 10):
            started = client.run_task(cluster=opts.cluster, taskDefinition=opts.task_definition, count=10,
                                      launchType="FARGATE", networkConfiguration=vpc)
            arns += [t["taskArn"] for t in started["tasks"]]
        begun = time.perf_counter()
        for arn in arns[:n]:
            client.stop_task(cluster=opts.cluster, task=arn, reason="bench")
        return time.perf_counter() - begun

    def latency(**_: Any) -> None:
        time.sleep(MODELLED_LATENCY)

    say(f"cloud: ecs: {n} StopTask calls one after another ...")
    plain = sequential()
    out: dict[str, Any] = {"n": n, "concurrency": opts.stop_concurrency,
                           "moto": {"sequential_seconds": round(plain, 2), "fleet_seconds": fleet_down,
                                    "speedup": round(plain / fleet_down, 2)}}
    say(f"cloud: ecs: again with a {MODELLED_LATENCY * 1000:.0f} ms API round trip ...")
    drive(manager, dispatcher, "ecs", n, timeout=600)
    client.meta.events.register("before-send", latency)
    try:
        fleet = drive(manager, dispatcher, "ecs", 0, timeout=600)["seconds"]
        slow = sequential()
    finally:
        client.meta.events.unregister("before-send", latency)
    out["modelled_latency"] = {"round_trip_seconds": MODELLED_LATENCY, "sequential_seconds": round(slow, 2),
                               "fleet_seconds": fleet, "speedup": round(slow / fleet, 2)}
    return out
