"""Prices with a known source and age: the shipped tables are dated and cover every built-in type,
the operator's overrides win and are validated, and `fleet prices` shows each pool's price: free
for local, the dated table for on-demand EC2, DescribeSpotPriceHistory (moto's server) for spot,
and the table with the failure said when that call fails."""

from __future__ import annotations

import json
import socket
from datetime import date
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner

from fleet.cli import main
from fleet.config import load_config
from fleet.errors import ConfigError
from fleet.pool_prices import pool_prices, price_of
from providers import ec2_prices, fargate_prices, gce_prices
from providers.aws_ecs import fargate_size
from providers.ec2_options import DEFAULT_CATALOGUE as EC2_CATALOGUE
from providers.gce_options import DEFAULT_CATALOGUE as GCE_CATALOGUE
from tests.kits.aws import FAKE_ENV, REGION, AwsWorld

TODAY = date.today()
#: what moto's DescribeSpotPriceHistory answers for every type and zone
MOTO_SPOT, MOTO_DAY = 0.00001, date(2006, 1, 2)

LOCAL = """
[fleet]
id = "prices"
[clusters.web]
provider = "local"
[clusters.web.container]
command = ["sleep", "1"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """A terminal wide enough for the table's every cell on one line (a narrow one folds them)."""
    from fleet.commands.common import console

    monkeypatch.setattr(console, "width", 200)


def run(path: Path, *args: str) -> Any:
    result = CliRunner().invoke(main, ["--config", str(path), "prices", *args])
    assert result.exit_code == 0, result.output
    return result


def ec2_config(tmp_path: Path, extra: str = "", **options: Any) -> Path:
    opts = ", ".join(f"{k} = {json.dumps(v)}" for k, v in options.items())
    return write(tmp_path, f"""
[fleet]
id = "prices"
[clusters.batch]
provider = "aws_ec2"
provider_options = {{ {opts} }}
[clusters.batch.container]
command = ["celery", "worker"]
{extra}""")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the tables ----------------------------------------------------------------------------

def test_every_table_is_dated_and_prices_every_built_in_type() -> None:
    for as_of in (ec2_prices.AS_OF, gce_prices.AS_OF, fargate_prices.AS_OF):
        assert date(2024, 1, 1) <= as_of <= TODAY
    for region in ("us-east-1", "us-west-2", "eu-west-1", "eu-central-1"):
        assert {t.name for t in EC2_CATALOGUE} <= set(ec2_prices.ON_DEMAND[region]), region
        assert all(p > 0 for p in ec2_prices.ON_DEMAND[region].values())
        assert all(0 < x for x in fargate_prices.ON_DEMAND[region] + fargate_prices.SPOT[region])
        assert fargate_prices.SPOT[region] < fargate_prices.ON_DEMAND[region]
    assert {t.name for t in GCE_CATALOGUE} <= set(gce_prices.ON_DEMAND["us-central1"]) == set(gce_prices.SPOT[
        "us-central1"])
    for name, price in gce_prices.ON_DEMAND["europe-west1"].items():
        assert 0 < gce_prices.SPOT["europe-west1"][name] < price
    assert len(gce_prices.ON_DEMAND["europe-west1"]) >= len(GCE_CATALOGUE) - 1  # a2 is not offered there


def test_the_built_in_catalogues_are_ordered_by_the_reference_regions_prices() -> None:
    assert {t.name: t.price for t in EC2_CATALOGUE} == {
        t.name: ec2_prices.ON_DEMAND["us-east-1"][t.name] for t in EC2_CATALOGUE}
    assert {t.name: t.price for t in GCE_CATALOGUE} == {
        t.name: gce_prices.ON_DEMAND["us-central1"][t.name] for t in GCE_CATALOGUE}


# -- overrides ------------------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "where"), [
    ('[providers.aws_ec2]\nprices = { "m6i.lrage" = 0.1 }', "providers.aws_ec2.prices.m6i.lrage: provider"),
    ('[providers.aws_ec2]\nprices = { "t3.micro" = -0.1 }', "providers.aws_ec2.prices.t3.micro: Input should be"),
    ('[providers.local]\nprices = { "x" = 1 }', "providers.local.prices: provider 'local' has no instance types"),
    ('[providers.nosuch]\nprices = { "x" = 1 }', "providers.nosuch.prices: no provider named 'nosuch'"),
    ("[clusters.batch]\nprice_per_hour = -1", "clusters.batch.price_per_hour: Input should be"),
    ("[clusters.batch]\nprice_per_hour = nan", "clusters.batch.price_per_hour: Input should be"),
])
def test_a_bad_price_is_a_config_error_naming_the_field(tmp_path: Path, extra: str, where: str) -> None:
    path = ec2_config(tmp_path, ami="ami-1", region=REGION)
    if extra.startswith("[clusters.batch]"):  # a setting of the cluster: under its header
        path.write_text(path.read_text().replace('provider = "aws_ec2"\n', 'provider = "aws_ec2"\n' + extra.split("\n")[1]
                                                 + "\n"))
    else:
        path.write_text(path.read_text() + extra + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert where in str(caught.value)


def test_a_bad_pool_price_names_the_pool(tmp_path: Path) -> None:
    path = write(tmp_path, LOCAL.replace('provider = "local"\n', "") + """
[[clusters.web.pools]]
name = "a"
provider = "local"
price_per_hour = -2
""")
    with pytest.raises(ConfigError, match=r"clusters\.web\.pools\.0\.price_per_hour"):
        load_config(path)


def test_the_pool_price_wins_over_the_clusters_which_wins_over_the_free_price(tmp_path: Path) -> None:
    path = write(tmp_path, LOCAL.replace('provider = "local"\n', "price_per_hour = 0.25\n") + """
[[clusters.web.pools]]
name = "own"
provider = "local"
price_per_hour = 0.5
[[clusters.web.pools]]
name = "shared"
provider = "local"
""")
    config = load_config(path)
    got = {p.pool: p.quote.price for p in pool_prices(config, "web") if p.quote}
    assert (got["own"].per_hour, got["own"].source, got["own"].note) == (
        0.5, "config", "clusters.web.pools.0.price_per_hour")
    assert (got["shared"].per_hour, got["shared"].source, got["shared"].as_of) == (0.25, "config", TODAY)
    assert price_of(config, "web", "own") == got["own"]


# -- `fleet prices` -------------------------------------------------------------------------

def test_fleet_prices_of_a_local_cluster_is_free(tmp_path: Path) -> None:
    path = write(tmp_path, LOCAL)
    [row] = json.loads(run(path, "web", "--json").output)
    assert (row["provider"], row["price"]["per_hour"], row["price"]["source"], row["price"]["market"]) == (
        "local", 0.0, "free", "on-demand")
    assert row["price"]["as_of"] == TODAY.isoformat()
    table = run(path).output
    assert "web" in table and "free" in table and "on-demand" in table
    result = CliRunner().invoke(main, ["--config", str(path), "prices", "nope"])
    assert result.exit_code == 2 and "unknown cluster" in result.output


def test_fleet_prices_of_on_demand_ec2_is_the_dated_table_and_an_override_wins(
        tmp_path: Path, aws_world: AwsWorld) -> None:
    path = ec2_config(tmp_path, **aws_world.ec2_options())
    [row] = json.loads(run(path, "--json").output)
    assert (row["type"], row["region"], row["price"]["market"], row["price"]["source"]) == (
        "t3.micro", REGION, "on-demand", "table")
    assert (row["price"]["per_hour"], row["price"]["as_of"]) == (
        ec2_prices.ON_DEMAND[REGION]["t3.micro"], ec2_prices.AS_OF.isoformat())
    path = ec2_config(tmp_path, '[providers.aws_ec2]\nprices = { "t3.micro" = 0.002 }', **aws_world.ec2_options())
    [row] = json.loads(run(path, "--json").output)
    assert (row["price"]["per_hour"], row["price"]["source"], row["price"]["note"]) == (
        0.002, "config", "providers.aws_ec2.prices")


def test_fleet_prices_of_spot_ec2_asks_describe_spot_price_history(tmp_path: Path, aws_world: AwsWorld) -> None:
    path = ec2_config(tmp_path, **aws_world.ec2_options(market="spot"))
    rows = json.loads(run(path, "batch", "--json").output)
    assert [r["type"] for r in rows] == ["t3.micro", "t3.small", "t3.medium", "c6i.large", "m6i.large", "r6i.large"]
    for r in rows:  # moto's answer, dated as moto dates it: not the table's
        assert (r["price"]["source"], r["price"]["per_hour"], r["price"]["market"], r["price"]["as_of"]) == (
            "DescribeSpotPriceHistory", MOTO_SPOT, "spot", MOTO_DAY.isoformat())
    table = run(path, "batch").output
    assert "DescribeSpotPriceHistory" in table
    assert "1e-05" in table
    for secret in (FAKE_ENV["AWS_SECRET_ACCESS_KEY"], FAKE_ENV["AWS_SESSION_TOKEN"], FAKE_ENV["AWS_ACCESS_KEY_ID"]):
        assert secret not in table and secret not in json.dumps(rows)


def test_spot_ec2_falls_back_to_the_on_demand_table_when_the_call_fails(tmp_path: Path, aws_world: AwsWorld) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    path = ec2_config(tmp_path, **aws_world.ec2_options(market="spot", endpoint_url=dead, max_attempts=1))
    rows = json.loads(run(path, "--json").output)
    assert len(rows) == 6
    for r in rows:
        assert (r["price"]["source"], r["price"]["market"], r["price"]["as_of"]) == (
            "table", "spot", ec2_prices.AS_OF.isoformat())
        assert r["price"]["per_hour"] == ec2_prices.ON_DEMAND[REGION][r["type"]]
        assert r["price"]["note"].startswith("on-demand price: DescribeSpotPriceHistory failed")
    output = run(path).output
    assert "DescribeSpotPriceHistory failed" in output and FAKE_ENV["AWS_SECRET_ACCESS_KEY"] not in output


def test_spot_prices_are_cached_for_their_ttl(aws_world: AwsWorld) -> None:
    client = boto3.client("ec2", endpoint_url=aws_world.url, region_name=REGION)
    calls: list[str] = []
    client.meta.events.register("before-call.ec2.DescribeSpotPriceHistory", lambda **_: calls.append("call"))
    now = [1000.0]
    cache = ec2_prices.SpotPrices(ttl=600, clock=lambda: now[0])
    assert cache.get(client, "moto", ["t3.micro"]) == {"t3.micro": (MOTO_SPOT, MOTO_DAY)}
    now[0] += 599
    cache.get(client, "moto", ["t3.micro"])
    assert len(calls) == 1
    cache.get(client, "moto", ["t3.micro", "t3.small"])  # only the new type is asked for
    now[0] += 2
    cache.get(client, "moto", ["t3.micro"])
    assert len(calls) == 3


def test_fargate_and_gce_prices_come_from_their_tables(tmp_path: Path, aws_world: AwsWorld) -> None:
    ecs = {**aws_world.ecs_options(), "market": "spot"}
    path = write(tmp_path, f"""
[fleet]
id = "prices"
[clusters.tasks]
provider = "aws_ecs"
provider_options = {json.dumps(ecs).replace('":', '" =')}
[clusters.tasks.container]
command = ["celery", "worker"]
[clusters.vms]
provider = "gce"
provider_options = {{ project = "p", zone = "europe-west1-b", source_image = "i", market = "spot" }}
[clusters.vms.container]
command = ["celery", "worker"]
""")
    config = load_config(path)
    [task] = pool_prices(config, "tasks")
    cpu, memory = fargate_size(1, 1024)
    assert task.quote is not None
    assert (task.quote.type, task.quote.price.market, task.quote.price.source) == (
        f"FARGATE_SPOT {cpu}/{memory}", "spot", "table")
    assert task.quote.price.per_hour == fargate_prices.task_price(REGION, cpu, memory, spot=True)
    [vm] = pool_prices(config, "vms")
    assert vm.quote is not None
    assert (vm.quote.type, vm.quote.region, vm.quote.price.market, vm.quote.price.as_of) == (
        "e2-medium", "europe-west1", "spot", gce_prices.AS_OF)
    assert vm.quote.price.per_hour == gce_prices.SPOT["europe-west1"]["e2-medium"]
