"""What a `fleet bench` run found: its targets (met or not; a scale that did not converge is
a gate that fails the run) and its tables."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

from fleet.testing.bench.cloud import MODELLED_LATENCY

SECTIONS = ("convergence", "running", "throughput", "sweep", "cloud", "containers")


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of issue 13 (and the earlier ones still measured), from this run's figures;
    first, one per scale of every section: that it converged (a `gate`: see `failed_targets`)."""
    out: list[dict[str, Any]] = []

    def add(target: str, value: Any, met: bool, gate: bool = False) -> None:
        out.append({"target": target, "value": value, "met": met, **({"gate": True} if gate else {})})

    for section, scale, n, phase in converging(results):
        add(f"{section}: {scale} scale to {n} converged" if scale else f"{section}: scale to {n} converged",
            phase.get("seconds"), bool(phase.get("converged")), gate=True)
    conv = results.get("convergence", {})
    rows = conv.get("rows", [])
    if len(rows) > 1:
        big = rows[-1]
        worst = max(big["per_worker_ratio_up"], big["per_worker_ratio_down"])
        add(f"time per worker at N={big['n']} within 1.5x of N={rows[0]['n']}", worst, worst <= 1.5)
        peak = max(conv.get("memory", {}).get("peak_kib", {"-": 0}).values()) / 1024
        add(f"peak control-plane RSS at {big['n']} handles <= 200 MiB", round(peak), peak <= 200)
    sweep = results.get("sweep", {}).get("rows", [])
    ten = {r["handles"]: r for r in sweep if r["clusters"] == 10}
    if 100_000 in ten:
        add("steady sweep of 100,000 handles over 10 clusters <= 0.5 s", ten[100_000]["steady"]["seconds"],
            ten[100_000]["steady"]["seconds"] <= 0.5)
    if len(ten) > 1:
        few, many = ten[min(ten)]["steady"]["redis_commands"], ten[max(ten)]["steady"]["redis_commands"]
        add(f"steady sweep Redis commands at {max(ten)} handles <= 1.1x those at {min(ten)}", [few, many],
            many <= 1.1 * few)
    running = results.get("running", {})
    for cluster, label in (("loc", "local"), ("mem", "memory")):
        if cluster in running:
            r = running[cluster]
            add(f"fleet.scale to all running, {label} N={r['n']}: median <= 1 s", r["median"], r["median"] <= 1.0)
    thr = results.get("throughput", {})
    if "ratio" in thr:
        one = thr["processes_1"]["scale_per_second"]
        add(">= 500 fleet.scale/s by one control-plane worker process", one, one >= 500)
        add("fleet.scale/s over Celery-defaults no-op/s (same run) >= 0.9", thr["ratio"], thr["ratio"] >= 0.9)
    cloud = results.get("cloud", {}).get("providers", {})
    if "ec2" in cloud:
        ec2 = cloud["ec2"]
        add("EC2 0 -> N -> 0: <= 11 mutating calls", ec2["mutating"], ec2["mutating"] <= 11)
        add("EC2 0 -> N -> 0: <= 12 calls in all", ec2["mutating"] + ec2["reads"], ec2["mutating"] + ec2["reads"] <= 12)
    if "gce" in cloud:
        calls = Counter(cloud["gce"]["up"]["calls"]) + Counter(cloud["gce"]["down"]["calls"])
        inserts = calls["insert"] + calls["bulk_insert"]
        add("GCE 0 -> N -> 0: <= 20 insert calls", inserts, inserts <= 20)
    stops = cloud.get("ecs", {}).get("stops")
    if stops:
        modelled = stops["modelled_latency"]["speedup"]
        add(f"ECS StopTask calls >= 4x faster than sequential ({MODELLED_LATENCY * 1000:.0f} ms API round trip)",
            modelled, modelled >= 4)
        add("ECS StopTask calls against moto itself (CPU-bound here): faster than sequential",
            stops["moto"]["speedup"], stops["moto"]["speedup"] >= 1)
    cont = results.get("containers", {})
    if "ratio" in cont:
        add("real containers overhead ratio <= 1.10", cont["ratio"], cont["ratio"] <= 1.10)
    return out


def converging(results: dict[str, Any]) -> Iterator[tuple[str, str, int, dict[str, Any]]]:
    """(section, cluster or "", target size, its phase's figures) of every scale a section made
    and waited for: each must have converged."""
    for row in results.get("convergence", {}).get("rows", []):
        yield "convergence", "", row["n"], row["up"]
        yield "convergence", "", 0, row["down"]
    cloud = results.get("cloud", {})
    for provider, row in cloud.get("providers", {}).items():
        yield "cloud", provider, cloud["n"], row["up"]
        yield "cloud", provider, 0, row["down"]
    cont = results.get("containers", {})
    if "fleet_up" in cont:
        yield "containers", "docker", cont["n"], cont["fleet_up"]
        yield "containers", "docker", 0, cont["fleet_down"]


def failed_targets(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The gates not met (a scale that did not converge): each fails the run (exit status 1)."""
    return [t for t in found if t.get("gate") and not t["met"]]


def render(results: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    m = results["machine"]
    console.print(f"fleet bench on {m['cpu']}, {m['cores']} cores, {m['memory']}, Python {m['python']}")
    for name in SECTIONS:
        data = results.get(name)
        if data is None:
            continue
        if "skipped" in data or "error" in data:
            console.print(f"[yellow]{name}: {data.get('skipped') or data.get('error')}[/yellow]")
            continue
        table = Table(title=name, title_justify="left")
        if name == "convergence":
            for col in ("N", "up s", "down s", "us/worker up / down", "vs smallest N", "Redis cmds up / down",
                        "Celery msgs up / down", "provider calls up / down"):
                table.add_column(col)
            for r in data["rows"]:
                up, down = r["up"], r["down"]
                table.add_row(str(r["n"]), f"{up['seconds']:.2f}" + ("" if up["converged"] else " (timeout)"),
                              f"{down['seconds']:.2f}" + ("" if down["converged"] else " (timeout)"),
                              f"{r['us_per_worker_up']} / {r['us_per_worker_down']}",
                              f"{r['per_worker_ratio_up']} / {r['per_worker_ratio_down']}",
                              f"{up['redis_commands']} / {down['redis_commands']}",
                              f"{up['celery_messages']} / {down['celery_messages']}",
                              f"{sum(up['provider_calls'].values())} / {sum(down['provider_calls'].values())}")
            peaks = data.get("memory", {}).get("peak_kib", {})
            table.caption = ("peak RSS: " + ", ".join(f"{role} {kib / 1024:.0f} MiB" for role, kib in peaks.items())
                             + f"; sweep every {data['sweep_interval']} s")
        elif name == "running":
            for col in ("provider", "N", "median s", "max s", "runs s"):
                table.add_column(col)
            for cluster, label in (("loc", "local"), ("mem", "memory")):
                r = data[cluster]
                table.add_row(label, str(r["n"]), f"{r['median']:.3f}", f"{r['max']:.3f}",
                              " ".join(f"{t:.2f}" for t in r["seconds"]))
            table.caption = f"sweep every {data['sweep_interval']} s (Fleet's default)"
        elif name == "sweep":
            for col in ("handles", "clusters", "first sweep s", "steady sweep s", "of which provider s",
                        "round trips", "per cluster", "Redis cmds"):
                table.add_column(col)
            for r in data["rows"]:
                s = r["steady"]
                table.add_row(str(r["handles"]), str(r["clusters"]), f"{r['first']['seconds']:.3f}",
                              f"{s['seconds']:.3f}", f"{s['provider_seconds']:.3f}", str(s["round_trips"]),
                              str(s["round_trips_per_cluster"]), str(s["redis_commands"]))
        elif name == "throughput":
            for col in ("requests", "fleet.scale /s, 1 process", "2 processes", "Celery defaults no-op /s",
                        "ratio", "Fleet no-op /s", "Redis cmds/request"):
                table.add_column(col)
            one, two = data["processes_1"], data["processes_2"]
            table.add_row(str(data["requests"]), str(one["scale_per_second"]), str(two["scale_per_second"]),
                          str(data["celery_defaults_noop_per_second"]), str(data["ratio"]),
                          str(one["fleet_noop_per_second"]), str(one["redis_commands_per_request"]))
        elif name == "cloud":
            for col in ("provider", "N", "mutating", "reads", "baseline mutating", "up s", "down s", "calls"):
                table.add_column(col)
            for p, r in data["providers"].items():
                calls = Counter(r["up"]["calls"]) + Counter(r["down"]["calls"])
                table.add_row(p, str(data["n"]), str(r["mutating"]), str(r["reads"]), str(r["baseline_mutating"]),
                              f"{r['up']['seconds']:.1f}", f"{r['down']['seconds']:.1f}",
                              ", ".join(f"{k} {v}" for k, v in sorted(calls.items())))
            stops = data["providers"].get("ecs", {}).get("stops")
            if stops:
                m, lat = stops["moto"], stops["modelled_latency"]
                ms = lat["round_trip_seconds"] * 1000
                table.caption = (f"ECS {stops['n']} StopTask: sequential {m['sequential_seconds']} s, Fleet "
                                 f"{m['fleet_seconds']} s ({m['speedup']}x); with a {ms:.0f} ms round trip: "
                                 f"{lat['sequential_seconds']} s vs {lat['fleet_seconds']} s ({lat['speedup']}x)")
        elif name == "containers":
            for col in ("N", "docker SDK loop s", "Fleet up s", "ratio", "Fleet down s"):
                table.add_column(col)
            table.add_row(str(data["n"]), f"{data['baseline_seconds']:.2f}", f"{data['fleet_up']['seconds']:.2f}",
                          str(data["ratio"]), f"{data['fleet_down']['seconds']:.2f}")
        console.print(table)
    if results.get("targets"):
        table = Table(title="targets", title_justify="left")
        for col in ("target", "value", "met"):
            table.add_column(col)
        for t in results["targets"]:
            table.add_row(t["target"], json.dumps(t["value"]), "yes" if t["met"] else "[red]no[/red]")
        console.print(table)
