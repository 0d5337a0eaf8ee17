"""The grammar of a cluster's status index and counts hash: the one place that says which field
a handle makes, and what a move changes. Every Python reader and writer of the two hashes uses
it (`fleet.model.Counts`, `fleet.model.ClusterState.counts`, `fleet.state.handles`); the Lua
scripts follow the same rule through `count_fields` and `index_value` in lua/prelude.lua
(tests/test_state_cost.py checks that both keep the counts the records make).

    index:  handle -> `<status>`, or `<status>@<pool>` for a handle recorded under a pool
    counts: `<status>`        workers of the handles in that status
            `<status>:h`      handles in that status
            `<status>@<pool>` workers of the handles recorded under a pool, by status
            `int`             workers of the handles the cloud reclaims (still in Redis)
            `r:<rev>`         workers of the live (fleet.model.LIVE) handles launched from rev
            `v`               1 once built: counts without it are rebuilt from the records

A handle adds `fields(handle, its status)` to the counts; a move from one status to another
(`None`: not in Redis) changes them by `moved(handle, old, new)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal, NamedTuple, Protocol

from fleet.status import LIVE, STATUS_VALUES

#: the field that says the counts are whole
WHOLE = "v"
#: the field of the interrupted handles' workers
INTERRUPTED = "int"
_HANDLES, _POOL, _REV = ":h", "@", "r:"


class Counted(Protocol):
    """What the counts read of a handle (fleet.model.HandleRecord is one)."""

    @property
    def workers(self) -> int: ...
    @property
    def pool(self) -> str: ...
    @property
    def rev(self) -> str: ...
    @property
    def interrupted(self) -> str: ...


def index_value(status: str, pool: str) -> str:
    """The index's value for a handle in `status`, recorded under `pool` ("" for none)."""
    return f"{status!s}{_POOL}{pool}" if pool else str(status)


def split_index(value: str) -> tuple[str, str]:
    """An index value -> (status, pool); pool "" for a handle recorded without one."""
    status, _, pool = value.partition(_POOL)
    return status, pool


def fields(handle: Counted, status: str | None) -> dict[str, int]:
    """What `handle` adds to the counts while it is in `status` (None: not in Redis, nothing)."""
    if status is None:
        return {}
    s, w = str(status), handle.workers
    out = {s: w, s + _HANDLES: 1}
    if handle.pool:
        out[s + _POOL + handle.pool] = w
    if handle.interrupted:
        out[INTERRUPTED] = w
    if handle.rev and s in LIVE:
        out[_REV + handle.rev] = w
    return out


def moved(handle: Counted, old: str | None, new: str | None) -> dict[str, int]:
    """What moving `handle` from status `old` to `new` changes in the counts (fields it leaves
    unchanged are left out)."""
    delta = {name: -n for name, n in fields(handle, old).items()}
    add(delta, fields(handle, new))
    return {name: n for name, n in delta.items() if n}


def add(into: dict[str, int], more: Mapping[str, int]) -> dict[str, int]:
    """Add the counts `more` to `into` (in place); returns `into`."""
    for name, n in more.items():
        into[name] = into.get(name, 0) + n
    return into


def total(handles: Iterable[tuple[Counted, str | None]]) -> dict[str, int]:
    """The counts (without `v`) that these (handle, its status) make."""
    out: dict[str, int] = {}
    for handle, status in handles:
        add(out, fields(handle, status))
    return out


class Field(NamedTuple):
    """One field of the counts, parsed: `status` for workers, handles and pool fields; `name`
    the pool or the revision."""

    kind: Literal["workers", "handles", "pool", "interrupted", "rev", "whole"]
    status: str = ""
    name: str = ""


def parse(name: str) -> Field | None:
    """A counts field's name -> what it counts (None: no field of this grammar, ignored)."""
    if name == WHOLE:
        return Field("whole")
    if name == INTERRUPTED:
        return Field("interrupted")
    if name.startswith(_REV):
        return Field("rev", name=name[len(_REV):]) if len(name) > len(_REV) else None
    statuses = STATUS_VALUES
    status, _, pool = name.partition(_POOL)
    if pool:
        return Field("pool", status, pool) if status in statuses else None
    if name.endswith(_HANDLES) and name[:-len(_HANDLES)] in statuses:
        return Field("handles", name[:-len(_HANDLES)])
    return Field("workers", name) if name in statuses else None
