"""Cluster specs: valid files load; every kind of bad file is a ConfigError naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from fleet.cli import main
from fleet.config import load_config
from fleet.errors import ConfigError

GOOD = """
[fleet]
id = "prod"
[clusters.web]
provider = "local"
workers_per_container = 2
min_workers = 1
max_workers = 10
[clusters.web.container]
command = ["celery", "-A", "app", "worker"]
[clusters.web.hardware]
cpu = 2
memory_mb = 2048
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


def test_good_file_loads_with_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    web = config.clusters["web"]
    assert (config.fleet.id, config.fleet.sweep_interval) == ("prod", 5.0)
    assert (web.workers_per_container, web.min_workers, web.max_workers, web.hardware.cpu) == (2, 1, 10, 2.0)
    from providers.local import LocalProvider

    assert LocalProvider.validate_options(web.provider_options).kill_grace == 10.0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "change, where",
    [
        (("max_workers = 10", "max_workers = -1"), "clusters.web.max_workers"),
        (("max_workers = 10", "max_workers = 0"), "below min_workers"),
        (("max_workers = 10", "max_workers = 'ten'"), "clusters.web.max_workers"),
        (('provider = "local"', 'provider = "nimbus"'), "clusters.web.provider: no provider named 'nimbus'"),
        (("memory_mb = 2048", "memory_mb = 2048\ndisk = 5"), "clusters.web.hardware.disk"),
        (('command = ["celery", "-A", "app", "worker"]', "command = []"), "clusters.web.container.command"),
        (("[clusters.web.hardware]", "[clusters.web.provider_options]\nkill_grace = -1\n[clusters.web.hardware]"),
         "clusters.web.provider_options.kill_grace"),
        (('id = "prod"', 'id = "bad id!"'), "fleet.id"),
        (("clusters.web", 'clusters."bad name"'), "cluster name 'bad name'"),
        (("[fleet]", "[fleet]\nsweep_interval = 0"), "fleet.sweep_interval"),
        (("[fleet]", "[flet]\n[fleet]"), "flet"),
        (("max_workers = 10", 'max_workers = 10\nqueues = ["celery", ""]'), "clusters.web.queues.1"),
        (("max_workers = 10", 'max_workers = 10\nbroker_url = "sentinel://127.0.0.1:26379/0"'),
         "cluster 'web': a sentinel:// broker_url needs fleet.redis_sentinel_master"),
    ],
)
def test_bad_files_name_the_file_cluster_and_field(tmp_path: Path, change: tuple[str, str], where: str) -> None:
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and where in str(info.value)


def test_malformed_toml(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "\n[clusters.web\n")
    with pytest.raises(ConfigError, match="malformed TOML"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.toml")


def test_cli_reports_a_bad_config_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("max_workers = 10", "max_workers = -1"))
    result = CliRunner().invoke(main, ["--config", str(path), "clusters"])
    assert result.exit_code == 2
    assert "clusters.web.max_workers" in result.output and "Traceback" not in result.output


POOLS = """
[fleet]
id = "f1"
[clusters.batch]
max_workers = 10
rebalance = { max_in_flight = 2 }
pools = [
  { name = "spot", provider = "memory", max_workers = 6 },
  { name = "od", provider = "local", provider_options = { kill_grace = 1 }, weight = 2 },
  { name = "first", provider = "memory", priority = 0 },
]
[clusters.batch.container]
command = ["w"]
"""


def test_pools_load_in_order_of_preference(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(POOLS)
    spec = load_config(path).spec("batch")
    assert [p.name for p in spec.pool_list] == ["spot", "first", "od"]  # priority 0 ties with position 0
    assert [spec.rank(p.name) for p in spec.pool_list] == [0, 0, 1]
    assert spec.providers == ("memory", "local") and spec.provider is None
    assert spec.pool("spot").max_workers == 6 and spec.rebalance and spec.rebalance.max_in_flight == 2
    single = load_config(write(tmp_path, GOOD)).spec("web")
    assert [(p.name, p.provider) for p in single.pool_list] == [("", single.provider)]


@pytest.mark.parametrize("change,message", [
    ('{ name = "od", provider = "local", provider_options = { kill_grace = 1 }, weight = 2 }',
     "clusters.batch.pools.1.provider_options.kill_grace"),
    ('{ name = "spot", provider = "local" }', "pool names must differ: spot"),
    ('{ name = "od", provider = "nope" }', "clusters.batch.pools.1.provider"),
    ('{ name = "o:d", provider = "local" }', "pools.1.name"),
])
def test_bad_pools_are_refused_with_where(tmp_path: Path, change: str, message: str) -> None:
    text = POOLS.replace('{ name = "od", provider = "local", provider_options = { kill_grace = 1 }, weight = 2 }',
                         change.replace("kill_grace = 1", "kill_grace = -1"))
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(path)


def test_provider_and_pools_exclude_each_other(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(POOLS.replace("max_workers = 10\n", 'max_workers = 10\nprovider = "memory"\n'))
    with pytest.raises(ConfigError, match="either `provider`"):
        load_config(path)
    path.write_text(POOLS.replace('pools = [', 'pools_ = [').replace("rebalance = { max_in_flight = 2 }\n", ""))
    with pytest.raises(ConfigError):
        load_config(path)
