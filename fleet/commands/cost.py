"""`fleet cost`: what the fleet's clusters cost, from Redis (`fleet.state.costs`): the run rate
(USD/h of the handles in Redis and of the launches in flight) and the cost so far (ever, or
since a time), by cluster, pool or group (a cluster's `group`; "-" for none)."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import click
from rich.table import Table

from fleet.commands.common import chosen_config, console, views
from fleet.config import FleetConfig
from fleet.errors import InvalidRequest
from fleet.state.costs import COST_HOURS
from fleet.store import Store

By = Literal["cluster", "pool", "group"]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(text: str) -> float:
    """A duration such as `90m`, `24h`, `7d` (or plain seconds) -> seconds, up to `COST_HOURS`."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise InvalidRequest(f"--since takes a duration such as 30m, 24h or 7d, got {text[:20]!r}")
    value = float(match[1]) * _UNITS[match[2] or "s"]
    if not 0 < value <= COST_HOURS * 3600:
        raise InvalidRequest(f"--since must be more than 0 and at most {COST_HOURS // 24} days")
    return value


def group_of(config: FleetConfig, cluster: str) -> str:
    """The cluster's group ("-" for none, or a cluster no longer in the config)."""
    spec = config.clusters.get(cluster)
    return (spec.group if spec else None) or "-"


def cost_rows(config: FleetConfig, store: Store, by: By = "cluster", since: float | None = None,
              clusters: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per cluster, (cluster, pool) or group: `hourly_cost` (USD/h) and `cost_total`
    (USD; since `since` seconds ago, None: ever)."""
    names = clusters if clusters is not None else sorted(set(config.clusters) | set(store.tracked_clusters()))
    start = store.now() - since if since is not None else None
    costs = store.costs(names, start)
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    for cluster, cost in costs.items():
        pools = cost.pools.items() if by == "pool" else [("", cost)]
        for pool, c in pools:
            group = group_of(config, cluster)
            key = {"cluster": (cluster,), "pool": (cluster, pool), "group": (group,)}[by]
            row = rows.setdefault(key, {"cluster": cluster, "pool": pool, "group": group,
                                        "hourly_cost": 0.0, "cost_total": 0.0}
                                  if by != "group" else {"group": group, "hourly_cost": 0.0, "cost_total": 0.0})
            row["hourly_cost"] += c.hourly
            row["cost_total"] += c.total
    for row in rows.values():
        row["hourly_cost"], row["cost_total"] = round(row["hourly_cost"], 6), round(row["cost_total"], 6)
    return [rows[k] for k in sorted(rows)]


@click.command("cost")
@click.option("--since", "since", default=None, help="only the cost since this long ago (30m, 24h, 7d)")
@click.option("--by", "by", type=click.Choice(["cluster", "pool", "group"]), default="cluster", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def cost(since: str | None, by: By, as_json: bool) -> None:
    """What the fleet runs costs: USD per hour now, and USD spent (ever, or --since), by
    cluster, pool or group."""
    config = chosen_config()
    window = seconds(since) if since is not None else None
    rows = cost_rows(config, views(config).store, by, window)
    if as_json:
        click.echo(json.dumps({"since": since, "by": by, "rows": rows}, indent=2))
        return
    spent = f"USD since {since} ago" if since else "USD so far"
    table = Table(title=f"fleet {config.fleet.id}: what runs costs", title_justify="left")
    cols = {"cluster": ["cluster"], "pool": ["cluster", "pool"], "group": ["group"]}[by]
    for col in (*cols, "USD/h", spent):
        table.add_column(col, justify="right" if col.startswith("USD") else "left")
    for row in rows:
        table.add_row(*[row[c] or "-" for c in cols], f"{row['hourly_cost']:.4f}", f"{row['cost_total']:.4f}")
    console.print(table)


COMMANDS = (cost,)
