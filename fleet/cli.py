"""The `fleet` command line."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import redis
from rich.console import Console
from rich.table import Table

from fleet import clock
from fleet.client import PublicTasks, masked, refused
from fleet.config import FleetConfig, config_path, load_config
from fleet.connection import access_error, connect
from fleet.control.queries import Queries
from fleet.errors import FleetError, InvalidRequest
from fleet.model import ClusterState
from fleet.progress import wait_converged
from fleet.requests import DEFAULT_TIMEOUT
from fleet.runtime import resolve_redis_url

console = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def _config_path() -> Path:
    ctx = click.get_current_context(silent=True)
    chosen = ctx.find_root().obj if ctx else None
    return Path(chosen) if chosen else config_path()


def _config() -> FleetConfig:
    return load_config(_config_path())


def _queries(config: FleetConfig) -> Queries:
    """Read-only views of the fleet in Redis: the CLI sends work only as public tasks."""
    return Queries.including_retired(config, connect(resolve_redis_url(config)))


class FleetGroup(click.Group):
    """Turns FleetError into `error: ...` and exit code 2 instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FleetError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # refused, broken, or silent (fleet.connection)
            why = access_error(exc) or f"cannot reach Redis: {exc}"  # a wrong password, a rejected certificate
            err.print(f"[red]error:[/red] {why}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except redis.ResponseError as exc:
            err.print(f"[red]error:[/red] {access_error(exc) or refused(exc)}", highlight=False, soft_wrap=True)
            sys.exit(2)


@click.group(cls=FleetGroup)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), envvar="FLEET_CONFIG",
              help="cluster spec file (default: $FLEET_CONFIG or ./fleet.toml)")
@click.version_option(package_name="fleet")
@click.pass_context
def main(ctx: click.Context, config_file: str | None) -> None:
    """Fleet keeps fleets of task-queue workers at the size you ask for."""
    ctx.obj = str(Path(config_file).resolve()) if config_file else None


@main.command()
@click.option("--control-workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="processes serving the public and control queues (a solo pool each; one per core at most)")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="processes serving the provider queues (a threads pool each, for slow cloud calls)")
def up(control_workers: int, workers: int) -> None:
    """Run the control plane: embedded Redis (unless configured), its workers and one beat."""
    from fleet.stack import Stack

    config = _config()
    stack = Stack(config, _config_path(), control_workers=control_workers, workers=workers)
    stopping = False

    def _stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    # Both explicitly: a shell that starts us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with stack:
        url = masked(stack.url)
        console.print(f"fleet [bold]{config.fleet.id}[/bold] control plane up; Redis at [cyan]{url}[/cyan]",
                      highlight=False)
        console.print(f"  state folder {stack.state_dir}; clusters: {', '.join(config.clusters) or 'none'}")
        console.print("  another service scales a cluster with:")
        console.print(f"    Celery(broker=URL, backend=URL).send_task('fleet.scale', args=['CLUSTER', N])  # URL: {url}"
                      + ("  (the password is in FLEET_REDIS_URL or fleet.redis_url)" if url != stack.url else ""),
                      highlight=False)
        console.print("  Ctrl-C stops the control plane (workers keep running and are found again next time)")
        while not stopping:
            for notice in stack.check():  # raises if a process died or Redis cannot be restarted
                err.print(f"[yellow]{notice}[/yellow]", highlight=False, soft_wrap=True)
            time.sleep(0.2)
        console.print("stopping the control plane ...")
    console.print("stopped")


def _workers(ctx: click.Context, param: click.Parameter, value: int) -> int:
    if value < 0:
        raise click.BadParameter(f"workers must be a non-negative integer, not {value}")
    return value


# ignore_unknown_options: "-1" reaches WORKERS (and is refused there), not "No such option: -1"
@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("cluster")
@click.argument("workers", type=int, callback=_workers)
@click.option("--wait", is_flag=True, help="show progress until the cluster has converged, or cannot")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="seconds to wait")
def scale(cluster: str, workers: int, wait: bool, timeout: float) -> None:
    """Ask the control plane for WORKERS workers in CLUSTER (through the `fleet.scale` task).
    With --wait, show progress until it has converged; exit 1 on timeout, or at once (with the
    reason) when it cannot converge: a permanent error, every pool held, a retired cluster."""
    config = _config()
    url = resolve_redis_url(config)
    # a wrong password or no Redis: said at once, as `fleet status` does (the Celery client
    # would retry its result backend for about 20 s, then blame Celery)
    connect(url).ping()
    queries = _queries(config)
    queries.config.spec(cluster)  # a retired cluster too: the control plane says why it refuses it
    reply = _call(config, "fleet.scale", cluster, workers)
    console.print(f"{cluster}: desired {reply['desired']} (version {reply['version']})")
    if wait and not wait_converged(queries.store, cluster, timeout, console, queries=queries):
        sys.exit(1)


def _call(config: FleetConfig, task: str, *args: Any) -> Any:
    """Send a public task by name to this fleet and wait for its reply (a FleetError if it fails,
    `NotApplied` only when it is sure never to be applied). FLEET_REQUEST_TIMEOUT (seconds,
    default 30) is how long it waits, and when the request expires."""
    raw = os.environ.get("FLEET_REQUEST_TIMEOUT") or str(DEFAULT_TIMEOUT)
    try:
        timeout = float(raw)
    except ValueError:
        timeout = math.nan
    if not 0 < timeout <= 3600:
        raise InvalidRequest(f"FLEET_REQUEST_TIMEOUT must be a number of seconds in (0, 3600], got {raw[:20]!r}")
    return PublicTasks.of(config, resolve_redis_url(config), timeout).call(task, *args)


@main.command()
@click.argument("cluster")
@click.argument("handle")
@click.option("--release", is_flag=True, help="release a held handle")
def hold(cluster: str, handle: str, release: bool) -> None:
    """Never kill HANDLE of CLUSTER automatically (until --release)."""
    config = _config()
    reply = _call(config, "fleet.hold", cluster, handle, not release)
    console.print(f"{cluster}/{handle}: {'held' if reply['hold'] else 'released'}")


@main.command()
@click.argument("cluster")
@click.argument("handle")
def drain(cluster: str, handle: str) -> None:
    """Drain HANDLE of CLUSTER: stop consuming, finish its tasks, then go (it is replaced)."""
    config = _config()
    _call(config, "fleet.drain_handle", cluster, handle)
    console.print(f"{cluster}/{handle}: draining")


@main.command()
@click.argument("cluster")
@click.argument("handle")
def kill(cluster: str, handle: str) -> None:
    """Kill HANDLE of CLUSTER now, held or not (it is replaced)."""
    config = _config()
    _call(config, "fleet.kill_handle", cluster, handle)
    console.print(f"{cluster}/{handle}: killed")


@main.command()
@click.argument("cluster")
@click.option("--pause", "action", flag_value="pause", help="no more outdated workers replaced until --resume")
@click.option("--resume", "action", flag_value="resume", help="go on after a pause or a stop")
@click.option("--status", "action", flag_value="status", help="only show where the rollout is")
def rollout(cluster: str, action: str | None) -> None:
    """Replace CLUSTER's outdated workers (launched from an older spec, or past max_lifetime):
    new ones first, up to max_surge above desired, then the old ones drained and killed. A
    changed spec rolls out by itself; this resumes a stopped or paused rollout, or shows it."""
    config = _config()
    s = _call(config, "fleet.rollout", cluster, action or "start")
    why = f" ({s['reason']})" if s.get("reason") else ""
    console.print(f"{cluster}: rollout {s['state']}{why}: {s['outdated']} outdated, {s['updated']} updated, "
                  f"desired {s['desired'] if s['desired'] is not None else '-'}, running {s['running']} "
                  f"(max_surge {s['max_surge']}, max_unavailable {s['max_unavailable']})")
    for pool, rev in s["revisions"].items():
        console.print(f"  pool {pool}: revision {rev}")
    for rev, n in s["by_revision"].items():
        console.print(f"  {n} live worker(s) of revision {rev}")


@main.command("console")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on; any but loopback needs FLEET_CONSOLE_TOKEN")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="port (0: a free one)")
@click.option("--read-only", is_flag=True, help="show everything, allow no action")
def console_cmd(host: str, port: int, read_only: bool) -> None:
    """Serve the web console (clusters, handles, events, actions; JSON on every route) until Ctrl-C."""
    import os

    from fleet.console.app import ConsoleSettings, create_app, is_loopback, serve

    config = _config()
    token = os.environ.get("FLEET_CONSOLE_TOKEN") or None
    if not is_loopback(host) and not token:
        raise FleetError(f"the console on {host} needs authentication: set FLEET_CONSOLE_TOKEN in the environment "
                         "(never in the config file), or listen on 127.0.0.1")
    url = resolve_redis_url(config)
    server = serve(create_app(config, url, ConsoleSettings(token=token, read_only=read_only)), host, port)
    auth = "token from FLEET_CONSOLE_TOKEN" if token else "no authentication (loopback only)"
    console.print(f"console of fleet {config.fleet.id} at http://{host}:{server.effective_port}/ ({auth}"
                  f"{', read-only' if read_only else ''}); Redis {masked(url)}", highlight=False)
    _ctrl_c_stops()
    try:
        server.run()
    except KeyboardInterrupt:
        server.close()


@main.command()
@click.option("--port", type=int, default=9100, show_default=True, help="port of the /metrics endpoint")
@click.option("--addr", default="127.0.0.1", show_default=True, help="address to listen on (0.0.0.0: all)")
def metrics(port: int, addr: str) -> None:
    """Serve the fleet's Prometheus metrics (read from Redis at each scrape) until Ctrl-C."""
    from fleet.metrics import serve

    config = _config()
    server, thread = serve(config, connect(resolve_redis_url(config)), port, addr)
    console.print(f"metrics of fleet {config.fleet.id} at http://{addr}:{server.server_port}/metrics")
    _ctrl_c_stops()
    try:
        thread.join()
    except KeyboardInterrupt:
        server.shutdown()


@main.command()
@click.argument("cluster")
def clear(cluster: str) -> None:
    """Forget CLUSTER's permanent provider error and its quota and capacity holds (and end a
    fleet-wide recovery hold), so that it launches again."""
    config = _config()
    config.spec(cluster)
    reply = _call(config, "fleet.clear", cluster)
    console.print(f"{cluster}: {'cleared' if reply['cleared'] else 'nothing to clear'}")


def _table(state: ClusterState, s: dict[str, Any], now: float) -> Table:
    """One cluster's table; `now` is Redis time (`fleet.clock`), as the records' times are."""
    flags = [f"[red]error: {s['error']}[/red]"] if s["error"] else []
    flags += [f"[yellow]at quota for {s['at_quota']:.0f}s[/yellow]"] if s["at_quota"] else []
    flags += [f"[yellow]no capacity for {s['no_capacity']:.0f}s[/yellow]"] if s["no_capacity"] else []
    flags += [f"[yellow]rate-limited for {s['rate_limited']:.0f}s[/yellow]"] if s["rate_limited"] else []
    flags += [f"[yellow]provider not answering: calls held for {s['unresponsive']:.0f}s[/yellow]"] \
        if s.get("unresponsive") else []
    flags += [f"[yellow]recovering for {s['recovering']:.0f}s[/yellow]"] if s["recovering"] else []
    flags += [f"{s['unknown']} unknown workers being checked"] if s["unknown"] else []
    flags += [f"{s['cleanup']} dead handles' remains still to kill"] if s["cleanup"] else []
    flags += [f"{s['interrupted']} interrupted workers being replaced"] if s.get("interrupted") else []
    for pool in s.get("pools", []):
        why = f" [yellow]skipped: {pool['skipped']}[/yellow]" if pool["skipped"] else ""
        cap = f" of {pool['max_workers']}" if pool["max_workers"] is not None else ""
        flags.append(f"pool {pool['pool']} ({pool['provider']}): running {pool['running']}{cap}, initializing "
                     f"{pool['initializing']}, draining {pool['draining']}, stopping {pool['stopping']}, "
                     f"pending {pool['pending']}{why}")
    flags += ["[yellow]retired: removed from the config; its workers are being drained and killed, then it "
              "leaves Redis (put it back to keep them)[/yellow]"] if s.get("retired") else []
    flags += [f"{s['outdated']} outdated workers being replaced (fleet rollout {s['cluster']} --status)"] \
        if s.get("outdated") else []
    desired = s["desired"] if s["desired"] is not None else "-"
    title = (f"{s['cluster']} ({s['provider']}): desired {desired}, initializing {s['initializing']}, running "
             f"{s['running']}, draining {s['draining']}, stopping {s['stopping']}, pending {s['pending']}")
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


@main.command()
@click.argument("cluster", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--watch", is_flag=True, help="a live table, refreshed every second, until Ctrl-C")
def status(cluster: str | None, as_json: bool, watch: bool) -> None:
    """Desired, initializing and running workers, and the handles, per cluster."""
    queries = _queries(_config())
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
        _ctrl_c_stops()
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


def _ctrl_c_stops() -> None:
    """Ctrl-C (SIGINT) stops a command that runs until Ctrl-C, even if it was started where
    SIGINT is ignored (`cmd &` in a shell without job control)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


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


@main.command()
def clusters() -> None:
    """The clusters the config declares."""
    config = _config()
    table = Table(title=f"fleet {config.fleet.id} ({config.source})", title_justify="left")
    for col in ("cluster", "provider", "workers/container", "min", "max", "boot timeout", "command"):
        table.add_column(col)
    for name, spec in config.clusters.items():
        table.add_row(name, ",".join(spec.providers), str(spec.workers_per_container), str(spec.min_workers),
                      str(spec.max_workers), f"{spec.boot_timeout:g}s", " ".join(spec.container.command))
    console.print(table)


@main.command()
def providers() -> None:
    """Providers registered in the `fleet.providers` entry-point group."""
    from fleet.registry import available

    table = Table()
    table.add_column("provider")
    table.add_column("implemented by")
    for name, ep in sorted(available().items()):
        table.add_row(name, ep.value)
    console.print(table)


@main.command()
@click.argument("cluster")
@click.option("-n", "count", type=int, default=50, show_default=True, help="how many, newest last")
def events(cluster: str, count: int) -> None:
    """The newest events of CLUSTER (launches, kills, deaths, errors)."""
    config = _config()
    for e in _queries(config).events(cluster, count):
        at = time.strftime("%H:%M:%S", time.localtime(e.pop("at")))
        kind = e.pop("kind")
        console.print(f"{at} [bold]{kind:<12}[/bold] " + " ".join(f"{k}={v}" for k, v in e.items()), highlight=False)


@main.command()
@click.option("--role", type=click.Choice(["control", "read-only", "requester"]), required=True)
@click.option("--user", help="the ACL user's name (default: fleet-ROLE)")
def acl(role: str, user: str | None) -> None:
    """The `ACL SETUSER` line of a least-privilege Redis user in ROLE for this fleet (fleet.acl)."""
    from fleet.acl import setuser

    config = _config()
    click.echo(setuser(role, config.fleet.id, user or f"fleet-{role}", config.fleet.public_queue))


@main.command()
@click.option("--quick", is_flag=True,
              help="tiny sizes; skips the cloud and containers sections unless --only names them")
@click.option("--only", "only", multiple=True,
              type=click.Choice(["convergence", "sweep", "throughput", "cloud", "containers"]),
              help="run only this section (repeatable)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="also write the figures to this JSON file")
def bench(quick: bool, only: tuple[str, ...], json_path: str | None) -> None:
    """Measure Fleet on this machine: convergence, sweep cost, scale throughput, cloud API calls,
    real containers; prints tables, then the figures as one line of JSON."""
    from fleet.testing.bench import run_bench

    sys.exit(run_bench(quick=quick, only=only, json_path=json_path, console=console))


@main.command()
@click.option("--workers", type=int, default=4, show_default=True)
@click.option("--jobs", type=int, default=20, show_default=True)
@click.option("--keep", is_flag=True, help="keep the demo's state folder")
def demo(workers: int, jobs: int, keep: bool) -> None:
    """The main job in one command: embedded stack, real Celery workers, jobs, scale to 0."""
    from fleet.demo.run import run_demo

    sys.exit(run_demo(workers=workers, jobs=jobs, keep=keep, console=console))


if __name__ == "__main__":
    main()
