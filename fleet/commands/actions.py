"""The control plane and what it is asked to do: `fleet up`, `scale`, `hold`, `drain`, `kill`,
`rollout`, `clear`. Every request goes as a public task (`common.call`), as any service sends it."""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

import click

from fleet.client import masked
from fleet.commands.common import call, chosen_config, chosen_path, console, err, views
from fleet.connection import connect
from fleet.progress import wait_converged
from fleet.runtime import resolve_redis_url


@click.command("up")
@click.option("--control-workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="processes serving the public and control queues (a solo pool each; one per core at most)")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="processes serving the provider queues (a threads pool each, for slow cloud calls)")
def up(control_workers: int, workers: int) -> None:
    """Run the control plane: embedded Redis (unless configured), its workers and one beat."""
    from fleet.stack import Stack

    config = chosen_config()
    stack = Stack(config, chosen_path(), control_workers=control_workers, workers=workers)
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
@click.command("scale", context_settings={"ignore_unknown_options": True})
@click.argument("cluster")
@click.argument("workers", type=int, callback=_workers)
@click.option("--wait", is_flag=True, help="show progress until the cluster has converged, or cannot")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="seconds to wait")
def scale(cluster: str, workers: int, wait: bool, timeout: float) -> None:
    """Ask the control plane for WORKERS workers in CLUSTER (through the `fleet.scale` task).
    With --wait, show progress until it has converged; exit 1 on timeout, or at once (with the
    reason) when it cannot converge: a permanent error, every pool held, a retired cluster."""
    config = chosen_config()
    url = resolve_redis_url(config)
    # a wrong password or no Redis: said at once, as `fleet status` does (the Celery client
    # would retry its result backend for about 20 s, then blame Celery)
    connect(url).ping()
    queries = views(config)
    queries.config.spec(cluster)  # a retired cluster too: the control plane says why it refuses it
    reply = call(config, "fleet.scale", cluster, workers)
    console.print(f"{cluster}: desired {reply['desired']} (version {reply['version']})")
    if wait and not wait_converged(queries.store, cluster, timeout, console, queries=queries):
        sys.exit(1)


@click.command("hold")
@click.argument("cluster")
@click.argument("handle")
@click.option("--release", is_flag=True, help="release a held handle")
def hold(cluster: str, handle: str, release: bool) -> None:
    """Never kill HANDLE of CLUSTER automatically (until --release)."""
    config = chosen_config()
    reply = call(config, "fleet.hold", cluster, handle, not release)
    console.print(f"{cluster}/{handle}: {'held' if reply['hold'] else 'released'}")


@click.command("drain")
@click.argument("cluster")
@click.argument("handle")
def drain(cluster: str, handle: str) -> None:
    """Drain HANDLE of CLUSTER: stop consuming, finish its tasks, then go (it is replaced)."""
    config = chosen_config()
    call(config, "fleet.drain_handle", cluster, handle)
    console.print(f"{cluster}/{handle}: draining")


@click.command("kill")
@click.argument("cluster")
@click.argument("handle")
def kill(cluster: str, handle: str) -> None:
    """Kill HANDLE of CLUSTER now, held or not (it is replaced)."""
    config = chosen_config()
    call(config, "fleet.kill_handle", cluster, handle)
    console.print(f"{cluster}/{handle}: killed")


@click.command("rollout")
@click.argument("cluster")
@click.option("--pause", "action", flag_value="pause", help="no more outdated workers replaced until --resume")
@click.option("--resume", "action", flag_value="resume", help="go on after a pause or a stop")
@click.option("--status", "action", flag_value="status", help="only show where the rollout is")
def rollout(cluster: str, action: str | None) -> None:
    """Replace CLUSTER's outdated workers (launched from an older spec, or past max_lifetime):
    new ones first, up to max_surge above desired, then the old ones drained and killed. A
    changed spec rolls out by itself; this resumes a stopped or paused rollout, or shows it."""
    config = chosen_config()
    s = call(config, "fleet.rollout", cluster, action or "start")
    why = f" ({s['reason']})" if s.get("reason") else ""
    console.print(f"{cluster}: rollout {s['state']}{why}: {s['outdated']} outdated, {s['updated']} updated, "
                  f"desired {s['desired'] if s['desired'] is not None else '-'}, running {s['running']} "
                  f"(max_surge {s['max_surge']}, max_unavailable {s['max_unavailable']})")
    for pool, rev in s["revisions"].items():
        console.print(f"  pool {pool}: revision {rev}")
    for rev, n in s["by_revision"].items():
        console.print(f"  {n} live worker(s) of revision {rev}")


@click.command("clear")
@click.argument("cluster")
def clear(cluster: str) -> None:
    """Forget CLUSTER's permanent provider error and its quota and capacity holds (and end a
    fleet-wide recovery hold), so that it launches again."""
    config = chosen_config()
    config.spec(cluster)
    reply = call(config, "fleet.clear", cluster)
    console.print(f"{cluster}: {'cleared' if reply['cleared'] else 'nothing to clear'}")


COMMANDS = (up, scale, hold, drain, kill, rollout, clear)
