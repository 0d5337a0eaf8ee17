"""The store's Lua scripts, one `.lua` file each beside this module in `fleet/lua/`, read once per
process and registered once per Redis client (redis-py's `Script`: EVALSHA, with a reload on
NOSCRIPT after a Redis restart).

Scripts that write events start with `lua/prelude.lua` (its KEYS and ARGV conventions are at its
top), preceded by the time-to-running buckets from `fleet.counters`; scripts that add, move or
remove handles also get `lua/index.lua` (the status index and the counts).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

import redis

from fleet.counters import lua_constants

#: script name -> the shared parts it starts with, in order
SCRIPTS: dict[str, tuple[str, ...]] = {
    "claim": (),
    "desired": ("prelude",),
    "counts": ("index",),
    "record": ("prelude", "index"),
    "status": ("prelude", "index"),
    "killed": ("prelude", "index"),
    "cleanup_due": ("prelude",),
    "adopt": ("prelude", "index"),
    "interrupt": ("prelude", "index"),
    "expire": ("prelude", "index"),
    "sample": (),
    "admit": (),
    "abandon": (),
    "owner": (),
}


def _read(name: str) -> str:
    return files("fleet").joinpath("lua", f"{name}.lua").read_text()


@cache
def source(name: str) -> str:
    """The full text of script `name`, its shared parts first."""
    parts = SCRIPTS[name]
    head = lua_constants() if "prelude" in parts else ""
    return head + "".join(_read(p) for p in parts) + _read(name)


class Scripts:
    """Every script, registered on one client."""

    def __init__(self, client: redis.Redis) -> None:
        self._scripts = {name: client.register_script(source(name)) for name in SCRIPTS}

    def __getitem__(self, name: str) -> Any:
        return self._scripts[name]
