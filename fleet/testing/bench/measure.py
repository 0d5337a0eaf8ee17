"""What `fleet bench` measures with: Redis commands by INFO commandstats, the provider
operations the instrumentation counted, the machine, a process's memory."""

from __future__ import annotations

import os
import platform
from collections import Counter
from typing import Any, cast

import redis

from fleet.keys import Keyspace


def commandstats(client: redis.Redis) -> Counter[str]:
    """Calls per Redis command since the server started (commands run by scripts included)."""
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in client.info("commandstats").items()})


def delta(after: Counter[str], before: Counter[str], *, minus: Counter[str] | None = None) -> Counter[str]:
    out = Counter({k: after[k] - before.get(k, 0) for k in after})
    out["info"] = 0  # our own INFO calls
    out.subtract(minus or Counter())
    return +out


def op_counts(client: redis.Redis, fleet_id: str) -> Counter[str]:
    """Provider operations the instrumentation recorded: op -> count (all providers)."""
    raw = cast("dict[bytes, bytes]", client.hgetall(Keyspace(fleet_id).metrics))
    out: Counter[str] = Counter()
    for k, v in raw.items():
        key = k.decode()
        if key.startswith("op_count|"):
            _, _provider, op = key.split("|")
            out[op] += int(v)
    return out


def machine() -> dict[str, Any]:
    model, mem = "?", "?"
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "memory": mem, "python": platform.python_version(),
            "platform": platform.platform()}


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process, in KiB."""
    out = {}
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(("VmRSS", "VmHWM")):
                out[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return out
