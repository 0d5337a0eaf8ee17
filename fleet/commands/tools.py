"""The rest of `fleet`: `acl` (a least-privilege Redis user), `bench` (measurements), `demo`."""

from __future__ import annotations

import sys

import click

from fleet.commands.common import chosen_config, console


@click.command("acl")
@click.option("--role", type=click.Choice(["control", "read-only", "requester"]), required=True)
@click.option("--user", help="the ACL user's name (default: fleet-ROLE)")
def acl(role: str, user: str | None) -> None:
    """The `ACL SETUSER` line of a least-privilege Redis user in ROLE for this fleet (fleet.acl)."""
    from fleet.acl import setuser

    config = chosen_config()
    click.echo(setuser(role, config.fleet.id, user or f"fleet-{role}", config.fleet.public_queue))


@click.command("bench")
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


@click.command("demo")
@click.option("--workers", type=int, default=4, show_default=True)
@click.option("--jobs", type=int, default=20, show_default=True)
@click.option("--keep", is_flag=True, help="keep the demo's state folder")
def demo(workers: int, jobs: int, keep: bool) -> None:
    """The main job in one command: embedded stack, real Celery workers, jobs, scale to 0."""
    from fleet.demo.run import run_demo

    sys.exit(run_demo(workers=workers, jobs=jobs, keep=keep, console=console))


COMMANDS = (acl, bench, demo)
