"""The store's Lua scripts, one `.lua` file each beside this module in `fleet/lua/`, read once per
process and registered once per Redis client (redis-py's `Script`: EVALSHA, with a reload on
NOSCRIPT after a Redis restart).

Scripts that write events start with `lua/prelude.lua` (its KEYS and ARGV conventions are at its
top), preceded by the time-to-running buckets from `fleet.counters`.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

import redis

from fleet.counters import lua_constants

#: script name -> whether it starts with the event prelude
SCRIPTS: dict[str, bool] = {
    "claim": False, "record": True, "status": True, "killed": True, "cleanup_due": True, "adopt": True,
}


@cache
def source(name: str) -> str:
    """The full text of script `name` (prelude included where it needs one)."""
    body = files("fleet").joinpath("lua", f"{name}.lua").read_text()
    if not SCRIPTS[name]:
        return body
    return lua_constants() + files("fleet").joinpath("lua", "prelude.lua").read_text() + body


class Scripts:
    """Every script, registered on one client."""

    def __init__(self, client: redis.Redis) -> None:
        self._scripts = {name: client.register_script(source(name)) for name in SCRIPTS}

    def __getitem__(self, name: str) -> Any:
        return self._scripts[name]
