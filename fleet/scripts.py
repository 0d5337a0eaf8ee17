"""The store's Lua scripts, one `.lua` file each beside this module in `fleet/lua/`, read once per
process and registered once per Redis client (redis-py's `Script`: EVALSHA, with a reload on
NOSCRIPT after a Redis restart).

Scripts that write events or handles start with `lua/prelude.lua` (its KEYS and ARGV conventions
are at its top), preceded by constants generated here: the time-to-running buckets from
`fleet.counters`, and `fleet.model`'s live statuses and table of allowed handle transitions
(`model_constants`), so that the scripts check moves against the same table as Python. Scripts
that add, move or remove handles also get `lua/index.lua` (the status index and the counts).
Every script names its keys and args in a header and binds them to named locals.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

import redis

from fleet.counters import lua_constants
from fleet.model import LIVE, TRANSITIONS, HandleStatus

#: script name -> the shared parts it starts with, in order
SCRIPTS: dict[str, tuple[str, ...]] = {
    "claim": (),
    "desired": ("prelude",),
    "counts": ("prelude", "index"),
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


def model_constants() -> str:
    """The Lua lines that give the scripts `fleet.model.LIVE` (status -> true) and
    `fleet.model.TRANSITIONS` (status -> the statuses it may move to -> true), with '' standing
    for "not in Redis" (lua/prelude.lua may_move reads them)."""
    def name(status: HandleStatus | None) -> str:
        return "" if status is None else status.value

    def row(statuses: frozenset[HandleStatus | None]) -> str:
        return "{" + ", ".join(f"['{name(s)}'] = true" for s in sorted(statuses, key=name)) + "}"

    rows = ", ".join(f"['{name(old)}'] = {row(TRANSITIONS[old])}" for old in sorted(TRANSITIONS, key=name))
    return f"local LIVE = {row(LIVE)}\nlocal TRANSITIONS = {{{rows}}}\n"


@cache
def source(name: str) -> str:
    """The full text of script `name`, its shared parts first."""
    parts = SCRIPTS[name]
    head = lua_constants() + model_constants() if "prelude" in parts else ""
    return head + "".join(_read(p) for p in parts) + _read(name)


class Scripts:
    """Every script, registered on one client."""

    def __init__(self, client: redis.Redis) -> None:
        self._scripts = {name: client.register_script(source(name)) for name in SCRIPTS}

    def __getitem__(self, name: str) -> Any:
        return self._scripts[name]
