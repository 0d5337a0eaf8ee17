"""The docs say what the code does, where a machine can check it: every metric the real collector
serves is in the metrics table of docs/operations.md, every key of a real `fleet.status` reply is
in the README's example and table, and every file the docs link to or name exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import redis

from fleet.config import load_config
from fleet.metrics import registry_for
from tests.conftest import ROOT

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def test_every_metric_the_collector_serves_is_in_the_operations_table(r: redis.Redis) -> None:
    config = load_config(ROOT / "fleet.toml")
    families = list(registry_for(config, r).collect())
    assert len(families) > 20  # Redis was read: not only fleet_redis_up
    text = (REPO / "docs" / "operations.md").read_text()
    start = text.index("Every metric (`fleet/metrics.py`)")
    table = text[start:text.index("\n\n", text.index("| metric |", start))]
    rows = [line for line in table.splitlines() if line.startswith("| `fleet_")]
    missing = []
    for family in families:
        name = family.name + ("_total" if family.type == "counter" else "")
        if not any(f"`{name}`" in row.split("|")[1] for row in rows):
            missing.append(name)
    assert not missing, f"metrics served but not in docs/operations.md: {missing}"


def _readme_status_example() -> dict[str, Any]:
    text = (REPO / "README.md").read_text()
    start = text.index('status = fleet.send_task("fleet.status"')
    block = text[start:text.index("```", start)].splitlines()[1:]
    return dict(ast.literal_eval("".join(line.lstrip("# ") for line in block)))


def test_every_key_of_a_real_status_reply_is_in_the_readme(fleet: Any, control_plane: Any) -> None:
    reply = control_plane.send_task("fleet.status", args=["single"]).get(timeout=20)
    example = _readme_status_example()
    assert set(example) == set(reply), f"README example {sorted(example)} vs reply {sorted(reply)}"
    text = (REPO / "README.md").read_text()
    table = text[text.index("`fleet.status(cluster)` returns"):text.index("To wait for a scale to finish")]
    keys = {k for row in table.splitlines() if row.startswith("| `") for k in re.findall(r"`([a-z_]+)`",
                                                                                        row.split("|")[1])}
    assert set(reply) | {"pools", "retired"} <= keys, sorted(set(reply) - keys)


def test_every_file_the_docs_link_to_or_name_exists() -> None:
    broken = []
    for doc in DOCS:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text):
            if not re.match(r"[a-z]+:", target) and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
        for name in re.findall(r"\b([A-Z][A-Z_]+\.md)\b", text):
            if not (REPO / name).exists():
                broken.append(f"{doc.relative_to(REPO)} names {name}")
    assert not broken, broken
