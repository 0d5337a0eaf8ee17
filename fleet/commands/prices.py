"""`fleet prices`: what one container of each pool of each cluster costs per hour, and where
that price comes from (`fleet.pool_prices`). Reads the config and asks the providers; needs no
Redis."""

from __future__ import annotations

import json

import click
from rich.table import Table

from fleet.commands.common import chosen_config, console
from fleet.pool_prices import PoolPrice, pool_prices, providers_of


def _row(p: PoolPrice) -> list[str]:
    q = p.quote
    if q is None:
        return [p.cluster, p.pool or "-", p.provider, "-", "-", "-", "-", f"[yellow]{p.problem}[/yellow]", "-"]
    price = q.price
    return [p.cluster, p.pool or "-", p.provider, q.type or "-", q.region or "-", price.market,
            f"{price.per_hour:.6g}", price.described, price.as_of.isoformat()]


@click.command("prices")
@click.argument("cluster", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def prices(cluster: str | None, as_json: bool) -> None:
    """Hourly price (USD) of one container of each pool of CLUSTER (default: every cluster), with
    its market, source and date."""
    config = chosen_config()
    if cluster is not None:
        config.spec(cluster)  # UnknownCluster, naming the declared ones
    names = [cluster] if cluster is not None else list(config.clusters)
    provider_for = providers_of(config)
    rows = [p for name in names for p in pool_prices(config, name, provider_for)]
    if as_json:
        click.echo(json.dumps([p.as_json() for p in rows], indent=2))
        return
    table = Table(title=f"fleet {config.fleet.id}: USD per container-hour", title_justify="left")
    for col in ("cluster", "pool", "provider", "type", "region", "market", "per hour", "source", "as of"):
        table.add_column(col, justify="right" if col == "per hour" else "left", overflow="fold")
    for p in rows:
        table.add_row(*_row(p))
    console.print(table)


COMMANDS = (prices,)
