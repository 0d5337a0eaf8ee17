"""Hourly caps (fleet.budget), on real Redis with inline tasks and the memory provider: a launch
that does not fit under a cap is cut to what fits, one that nothing of fits is refused and the
cluster held at budget (status and reasons say so, with the figures); a scale request above the
caps is accepted and capped; nothing running is killed to meet a lowered cap; bad caps are
configuration errors naming the field."""

from __future__ import annotations

import html
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fleet.cli import main
from fleet.config import load_config, parse_config
from fleet.console.app import create_app
from fleet.errors import ConfigError
from fleet.reasons import not_launching
from fleet.testing.inline import inline_manager
from tests.conftest import REDIS_URL, work


def _cluster(**extra: Any) -> dict[str, Any]:
    return {"provider": "memory", "max_workers": 10, "container": {"command": ["w"]}, "price_per_hour": 1.0,
            **extra}


def _manager(fid: str, clusters: dict[str, Any], **top: Any) -> tuple[Any, Any]:
    fleet = {"id": fid, "orphan_grace": 3600, **top.pop("fleet", {})}
    config = parse_config({"fleet": fleet, "providers": {"memory": {"ops_per_second": 10000}},
                           "clusters": clusters, **top}, "<test>")
    return inline_manager(config, REDIS_URL)


def _events(m: Any, cluster: str, kind: str) -> list[dict[str, str]]:
    raw = m.store.r.xrange(m.store.of(cluster).events)
    out = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in raw]
    return [e for e in out if e.get("kind") == kind]


def _handles(m: Any, cluster: str) -> int:
    return len(m.store.read(cluster).handles)


def test_a_launch_above_the_cluster_cap_is_cut_to_what_fits(fid: str) -> None:
    m, d = _manager(fid, {"a": _cluster(max_hourly_cost=2.5)})
    assert m.api.scale("a", 5)["desired"] == 5  # accepted as asked...
    capped = _events(m, "a", "budget_capped")  # ...and said to be capped
    assert capped and (capped[-1]["fits"], capped[-1]["cap"], capped[-1]["limit"]) == ("2", "cluster a", "2.5")
    work(d)
    assert _handles(m, "a") == 2 and m.store.cost("a").hourly == 2.0
    cut = _events(m, "a", "at_budget")
    assert len(cut) == 1 and (cut[0]["asked"], cut[0]["launched"], cut[0]["cap"]) == ("5", "2", "cluster a")
    assert (float(cut[0]["rate"]), float(cut[0]["limit"])) == (2.0, 2.5)
    status = m.api.status("a")
    assert status["desired"] == 5 and status["at_budget"] > 0 and status["pending"] == 0
    assert status["budget"] == {"cap": "cluster a", "rate": 2.0, "limit": 2.5}
    lines = [r.text for r in not_launching(status)]
    assert any(line.startswith("at budget: cluster a cap $2.50/h, $2.00/h committed, for ") for line in lines), lines


def test_a_launch_no_handle_of_fits_is_refused_and_the_cluster_held(fid: str) -> None:
    clusters = {"a": _cluster(group="team"), "b": _cluster(group="team", price_per_hour=2.0), "c": _cluster()}
    m, d = _manager(fid, clusters, groups={"team": {"max_hourly_cost": 3.0}}, fleet={"max_hourly_cost": 100.0})
    m.api.scale("a", 2)
    m.api.scale("b", 1)  # both fit when asked; a's launch, claimed first, leaves no room for b's
    assert not _events(m, "b", "budget_capped")
    runs = work(d)
    assert runs["run"] == 2 and _handles(m, "a") == 2 and _handles(m, "b") == 0
    refused = _events(m, "b", "at_budget")
    assert len(refused) == 1 and (refused[0]["launched"], refused[0]["cap"]) == ("0", "group team")
    status = m.api.status("b")
    assert status["at_budget"] > 0 and status["pending"] == 0 and status["budget"]["cap"] == "group team"
    assert "run" not in work(d)  # held: the reconcile plans no launch at once
    m.api.scale("c", 3)  # not in the group: only the fleet's cap covers it
    work(d)
    assert _handles(m, "c") == 3 and not _events(m, "c", "at_budget")


def test_a_lowered_cap_kills_nothing_that_runs(fid: str) -> None:
    m, d = _manager(fid, {"a": _cluster()})
    m.api.scale("a", 4)
    work(d)
    assert _handles(m, "a") == 4
    m2, d2 = _manager(fid, {"a": _cluster()}, fleet={"max_hourly_cost": 2.0})
    m2.api.scale("a", 5)
    work(d2)
    assert _handles(m2, "a") == 4 and not _events(m2, "a", "killed")
    assert m2.api.status("a")["at_budget"] > 0  # no room at all: held at once
    m2.api.scale("a", 3)  # a scale-down still works
    work(d2)
    assert _handles(m2, "a") == 3


@pytest.mark.parametrize(("top", "field"), [
    ({"fleet": {"max_hourly_cost": -1}}, "fleet.max_hourly_cost: Input should be greater than 0"),
    ({"clusters": {"a": {"max_hourly_cost": 0}}}, "clusters.a.max_hourly_cost: Input should be greater than 0"),
    ({"groups": {"g": {"max_hourly_cost": -2}}}, "groups.g.max_hourly_cost: Input should be greater than 0"),
    ({"clusters": {"a": {"price_per_hour": None, "max_hourly_cost": 5}}},
     "clusters.a.max_hourly_cost: cluster 'a' has no price"),
    ({"clusters": {"a": {"price_per_hour": None}}, "groups": {"g": {"max_hourly_cost": 5}}},
     "groups.g.max_hourly_cost: cluster 'a' has no price"),
    ({"clusters": {"a": {"group": "nope"}}, "groups": {"g": {}}}, "clusters.a.group: unknown group 'nope'"),
])
def test_bad_caps_are_refused_naming_the_field(top: dict[str, Any], field: str) -> None:
    cluster = {**_cluster(group="g"), **top.pop("clusters", {}).get("a", {})}
    cluster = {k: v for k, v in cluster.items() if v is not None}
    data = {"fleet": {"id": "f", **top.pop("fleet", {})}, "clusters": {"a": cluster}, "groups": {"g": {}}, **top}
    with pytest.raises(ConfigError) as err:
        parse_config(data, "<test>")
    assert field in str(err.value)


def test_free_providers_take_a_cap() -> None:
    cluster = {"provider": "local", "container": {"command": ["w"]}, "max_hourly_cost": 1.0}
    assert parse_config({"fleet": {"id": "f"}, "clusters": {"a": cluster}}).clusters["a"].max_hourly_cost == 1.0


def test_status_and_the_console_say_at_budget_with_the_figures(tmp_path: Path, fid: str) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(textwrap.dedent(f"""
        [fleet]
        id = "{fid}"
        [groups.team]
        max_hourly_cost = 1.5
        [clusters.web]
        provider = "memory"
        price_per_hour = 1.0
        group = "team"
        [clusters.web.container]
        command = ["worker"]
        """))
    config = load_config(path)
    m, d = inline_manager(config, REDIS_URL)
    m.api.scale("web", 3)
    work(d)
    assert _handles(m, "web") == 1
    want = "at budget: group team cap $1.50/h, $1.00/h committed, for"
    cli = CliRunner().invoke(main, ["--config", str(path), "status", "web"], env={"FLEET_REDIS_URL": REDIS_URL})
    assert cli.exit_code == 0 and want in " ".join(cli.output.split()), cli.output
    as_json = CliRunner().invoke(main, ["--config", str(path), "status", "web", "--json"],
                                 env={"FLEET_REDIS_URL": REDIS_URL})
    assert '"at_budget"' in as_json.output and '"group team"' in as_json.output, as_json.output
    page = create_app(config, REDIS_URL).test_client().get("/clusters/web")
    assert want in html.unescape(page.text), page.text
