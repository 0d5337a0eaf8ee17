"""What Fleet knows, read from Redis and the config: `fleet status`, `clusters`, `providers`,
`events`. The why-not-launching lines are `fleet.reasons.not_launching`'s, as the console's."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import click
from rich.table import Table

from fleet import clock
from fleet.commands.common import chosen_config, console, ctrl_c_stops, err, views
from fleet.control.queries import Queries
from fleet.model import ClusterState
from fleet.reasons import not_launching

#: how `fleet status` marks a reason of each level (rich markup)
MARKUP = {"error": "[red]{}[/red]", "held": "[yellow]{}[/yellow]", "note": "{}"}


def _pool_line(pool: dict[str, Any]) -> str:
    why = f" [yellow]skipped: {pool['skipped']}[/yellow]" if pool["skipped"] else ""
    cap = f" of {pool['max_workers']}" if pool["max_workers"] is not None else ""
    return (f"pool {pool['pool']} ({pool['provider']}): running {pool['running']}{cap}, initializing "
            f"{pool['initializing']}, draining {pool['draining']}, stopping {pool['stopping']}, "
            f"pending {pool['pending']}{why}")


def _table(state: ClusterState, s: dict[str, Any], now: float) -> Table:
    """One cluster's table; `now` is Redis time (`fleet.clock`), as the records' times are."""
    flags = [MARKUP[r.level].format(r.text) for r in not_launching(s, pools=False)]
    flags += [_pool_line(pool) for pool in s.get("pools", [])]
    desired = s["desired"] if s["desired"] is not None else "-"
    title = (f"{s['cluster']} ({s['provider']}): desired {desired}, initializing {s['initializing']}, running "
             f"{s['running']}, draining {s['draining']}, stopping {s['stopping']}, pending {s['pending']}")
    if "hourly_cost" in s:
        title += f"; ${s['hourly_cost']:.2f}/h, ${s['cost_total']:.2f} so far"
    table = Table(title=title + "".join(f"\n  {f}" for f in flags), title_justify="left")
    pooled = bool(s.get("pools"))
    for col in ("handle", "workers", "status", "for", "launch") + (("pool",) if pooled else ()):
        table.add_column(col)
    first = s["pools"][0]["pool"] if pooled else ""
    for handle, rec in sorted(state.handles.items(), key=lambda kv: kv[1].since):
        status = rec.status.value + (f" ({rec.interrupted})" if rec.interrupted else "")
        row = [handle, str(rec.workers), status, f"{now - rec.since:.0f}s", rec.launch[:12]]
        table.add_row(*row, *((rec.pool or first,) if pooled else ()))
    return table


@click.command("status")
@click.argument("cluster", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--watch", is_flag=True, help="a live table, refreshed every second, until Ctrl-C")
def status(cluster: str | None, as_json: bool, watch: bool) -> None:
    """Desired, initializing and running workers, and the handles, per cluster."""
    queries = views(chosen_config())
    config = queries.config  # retired clusters included
    if cluster:
        config.spec(cluster)
    names = [cluster] if cluster else list(config.clusters)

    def tables() -> list[Table]:
        now = clock.now(queries.client)
        return [_table(st, s, now) for st, s in queries.detailed(names)]

    if as_json:
        # the `fleet.status` task's shape, plus every handle's record (readable names) under "workers"
        out = [queries.with_handles(c, st, s) for c, (st, s) in zip(names, queries.detailed(names))]
        click.echo(json.dumps(out[0] if cluster else out, indent=2))
    elif watch:
        ctrl_c_stops()
        try:
            _watch(tables)
        except KeyboardInterrupt:
            pass
    else:
        for table in tables():
            console.print(table)
        _warn_dead_letters(queries)
        _warn_clock_skew(queries)
        if not cluster:
            _warn_forgotten(queries)


def _warn_clock_skew(queries: Queries) -> None:
    for entry in queries.clock_skew():
        err.print(f"[yellow]{clock.describe(entry)}[/yellow]", soft_wrap=True, highlight=False)


def _watch(tables: Callable[[], list[Table]]) -> None:
    """Every second, the tables: a live table on a terminal; else (a pipe, a file) each refresh
    as plain text under a time line, flushed, so that a reader sees it at once. Until Ctrl-C."""
    from rich.console import Group
    from rich.live import Live

    if console.is_terminal:
        with Live(Group(*tables()), console=console, refresh_per_second=2) as live:
            while True:
                time.sleep(1)
                live.update(Group(*tables()))
    while True:
        console.print(f"-- {time.strftime('%Y-%m-%d %H:%M:%S')}", highlight=False)
        for table in tables():
            console.print(table)
        console.file.flush()
        time.sleep(1)


def _warn_dead_letters(queries: Queries) -> None:
    dead = queries.dead_letters()
    if dead.count:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(dead.newest_at)) if dead.newest_at else "?"
        err.print(f"[yellow]{dead.count} message(s) on the control plane's queues could not be processed and were "
                  f"set aside in {queries.store.keys.dead_letters}; the newest ({when}, queue "
                  f"{dead.newest_queue}): {dead.newest_reason}[/yellow]", soft_wrap=True, highlight=False)


def _warn_forgotten(queries: Queries) -> None:
    for name, n in sorted(queries.forgotten_clusters().items()):
        err.print(f"[yellow]cluster {name!r} is not in the config but Redis still tracks {n} of its handles "
                  f"(live, or dead with remains to kill): nothing sweeps or kills them. Put it back, scale it "
                  f"to 0, then remove it.[/yellow]",
                  soft_wrap=True)


@click.command("clusters")
def clusters() -> None:
    """The clusters the config declares."""
    config = chosen_config()
    table = Table(title=f"fleet {config.fleet.id} ({config.source})", title_justify="left")
    for col in ("cluster", "provider", "workers/container", "min", "max", "boot timeout", "command"):
        table.add_column(col)
    for name, spec in config.clusters.items():
        table.add_row(name, ",".join(spec.providers), str(spec.workers_per_container), str(spec.min_workers),
                      str(spec.max_workers), f"{spec.boot_timeout:g}s", " ".join(spec.container.command))
    console.print(table)


@click.command("providers")
def providers() -> None:
    """Providers registered in the `fleet.providers` entry-point group."""
    from fleet.registry import available

    table = Table()
    table.add_column("provider")
    table.add_column("implemented by")
    for name, ep in sorted(available().items()):
        table.add_row(name, ep.value)
    console.print(table)


@click.command("events")
@click.argument("cluster")
@click.option("-n", "count", type=int, default=50, show_default=True, help="how many, newest last")
def events(cluster: str, count: int) -> None:
    """The newest events of CLUSTER (launches, kills, deaths, errors)."""
    config = chosen_config()
    for e in views(config).events(cluster, count):
        at = time.strftime("%H:%M:%S", time.localtime(e.pop("at")))
        kind = e.pop("kind")
        console.print(f"{at} [bold]{kind:<12}[/bold] " + " ".join(f"{k}={v}" for k, v in e.items()), highlight=False)


COMMANDS = (status, clusters, providers, events)
