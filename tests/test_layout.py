"""The layout's rules, checked on the code: one keyspace whose table the docs show, one table of
handle transitions that the Lua status script keeps to, and imports without cycles that keep the
core free of cloud SDKs and test code."""

from __future__ import annotations

import ast
import random
import re
import time
import uuid
from pathlib import Path

import redis

from fleet.keys import CLUSTER_KEYS, FLEET_KEYS
from fleet.model import TRANSITIONS, HandleRecord, HandleStatus, may_move
from fleet.store import Store

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fleet", "tasks", "providers")


def doc_keys(heading: str) -> set[str]:
    """The key names in the first table after `heading` in docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    after = text[text.index(heading):]
    rows = re.findall(r"^\| `([^`]+)` \|", after.split("\n\n|", 1)[1].split("\n\n", 1)[0], re.MULTILINE)
    return set(rows)


def test_the_docs_key_tables_are_the_keyspace() -> None:
    assert doc_keys("Per cluster, under") == {k.key for k in CLUSTER_KEYS}
    assert doc_keys("Per fleet, under") == {k.key for k in FLEET_KEYS}


def test_the_status_script_keeps_to_the_transition_table(r: redis.Redis) -> None:
    """Random provider reports, through the real script, on handles in every status: each record
    moves only as fleet.model.TRANSITIONS allows (gone counts as None)."""
    store = Store(r, "l" + uuid.uuid4().hex[:8])
    rng = random.Random(7)
    statuses = list(HandleStatus)
    reports = ["initializing", "running", "stopped"]
    for round_ in range(30):
        handles = {f"h{round_}-{i}": rng.choice(statuses) for i in range(12)}
        for h, s in handles.items():
            since = time.time() - rng.choice([0, 100])  # inside or past the listing grace
            r.hset(store.of("c").handles, h, HandleRecord(1, s, since, "l").encode())
        store.apply_status("c", {h: rng.choice(reports) for h in handles}, grace=10.0)
        after = store.read("c").handles
        for h, was in handles.items():
            now = after[h].status if h in after else None
            assert may_move(was, now), f"{was} -> {now}"
        r.delete(store.of("c").handles, store.of("c").cleanup)
    r.delete(*r.keys(f"fleet:{store.fleet_id}:*") or ["-"])
    assert all(None in TRANSITIONS[s] for s in statuses)  # every status may leave


def imports() -> dict[str, set[str]]:
    """module -> the project modules it imports (at module level or inside functions)."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         # `from fleet import grammar` imports the module fleet.grammar
                         else [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                         if isinstance(node, ast.ImportFrom) and node.module and not node.level
                         else [])
                found |= {n for n in names if n.split(".")[0] in (*PACKAGES, "tests")}
            graph[module] = found
    return graph


def test_no_import_cycles() -> None:
    graph = imports()
    known = set(graph)

    def resolve(name: str) -> str | None:  # `from fleet.x import y` may name a module or a member
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    edges = {m: {t for n in targets if (t := resolve(n)) and t != m} for m, targets in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])


def test_the_core_imports_no_cloud_sdk_and_no_tests() -> None:
    banned = ("tests", "boto3", "botocore", "google", "docker", "moto")
    for path in (ROOT / "fleet").rglob("*.py"):
        if "testing" in path.relative_to(ROOT).parts:
            continue  # fleet.testing holds the backends, their SDKs imported when used
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad = [n for n in names if n.split(".")[0] in banned]
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
