"""The memory provider's records, seen from outside the process that holds them.

A control plane of real processes keeps the `memory` provider's records (`providers.memory.World`)
in its provider worker. Imported there (`celery -A tasks worker --include
tests.kits.memory_census`, with `FLEET_MEMORY_CENSUS` naming a file), this module writes every
world of that process to the file as JSON whenever it changes (every 20 ms at most, atomically):
`launches` (launch id -> handles, one entry per launch id ever run), `live` (the handles it holds
now, not exited), `calls` and `high_water`. `read_census` reads the latest. Without the variable
(the control worker) it does nothing.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

VARIABLE = "FLEET_MEMORY_CENSUS"
EVERY = 0.02


def snapshot() -> dict[str, Any]:
    """Every world of this process: fleet id -> its launches, live handles, calls and high water."""
    from providers.memory import MemoryProvider

    with MemoryProvider._worlds_lock:
        worlds = dict(MemoryProvider._worlds)
    out: dict[str, Any] = {}
    for fleet_id, world in worlds.items():
        with world.lock:
            out[fleet_id] = {"launches": {k: list(v) for k, v in world.launches.items()},
                             "live": sorted(h for h in world.workers if h not in world.exited),
                             "calls": dict(world.calls), "high_water": dict(world.high_water)}
    return out


def _run(path: Path) -> None:
    last = ""
    while True:
        try:
            text = json.dumps(snapshot(), sort_keys=True)
            if text != last:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps({"at": time.time(), "worlds": json.loads(text)}))
                os.replace(tmp, path)
                last = text
        except Exception:  # noqa: BLE001 - a census must never take the worker down; try again
            pass
        time.sleep(EVERY)


def read_census(path: Path, fleet_id: str) -> dict[str, Any]:
    """The latest census of `fleet_id`'s world (empty lists and counters if none was written)."""
    try:
        worlds = json.loads(path.read_text())["worlds"]
    except (OSError, ValueError, KeyError):
        worlds = {}
    return worlds.get(fleet_id) or {"launches": {}, "live": [], "calls": {}, "high_water": {}}


def settled(path: Path, fleet_id: str, quiet: float = 0.3, timeout: float = 10.0) -> dict[str, Any]:
    """The census once it has not changed for `quiet` seconds (what the provider holds at rest)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            age = time.time() - json.loads(path.read_text())["at"]
        except (OSError, ValueError, KeyError):
            age = 0.0
        if age >= quiet or time.monotonic() > deadline:
            return read_census(path, fleet_id)
        time.sleep(0.05)


if os.environ.get(VARIABLE):
    threading.Thread(target=_run, args=(Path(os.environ[VARIABLE]),), name="memory-census", daemon=True).start()
