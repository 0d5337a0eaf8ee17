"""A handle's statuses and the one table of the moves between them (no I/O, no imports of
Fleet's own: `fleet.grammar` and `fleet.model` both build on it)."""

from __future__ import annotations

import enum


class HandleStatus(str, enum.Enum):
    """What Fleet knows of a handle (a container and its workers)."""

    INITIALIZING = "initializing"  # launched, not seen running yet
    RUNNING = "running"
    DRAINING = "draining"  # finishing its tasks before it is killed; not live for the planner
    STOPPING = "stopping"  # killed (or being killed); leaves Redis once the provider says stopped

    def __str__(self) -> str:
        return self.value


#: every status's stored value
STATUS_VALUES: frozenset[str] = frozenset(s.value for s in HandleStatus)
#: handle statuses whose workers count as live (observed) for the planner
LIVE: frozenset[HandleStatus] = frozenset({HandleStatus.INITIALIZING, HandleStatus.RUNNING})
#: handle statuses on their way out: they still count against max_workers
GOING: frozenset[HandleStatus] = frozenset({HandleStatus.DRAINING, HandleStatus.STOPPING})

#: The one table of allowed handle transitions: status -> the statuses it may move to. `None`
#: stands for "not in Redis": a handle enters as initializing (launched), stopping (launched by
#: a launch cancelled meanwhile) or as it was found (adopted), and leaves from any status (seen
#: stopped, or killed and confirmed). Every writer keeps to it and refuses (and logs) a move it
#: does not allow: the store's Python moves (`fleet.state.handles`), and the Lua scripts, which
#: carry it (`fleet.scripts.model_constants`, lua/prelude.lua `may_move`). tests/test_transitions.py
#: drives every writer and checks each move.
TRANSITIONS: dict[HandleStatus | None, frozenset[HandleStatus | None]] = {
    None: frozenset({HandleStatus.INITIALIZING, HandleStatus.RUNNING, HandleStatus.STOPPING}),
    HandleStatus.INITIALIZING: frozenset({HandleStatus.RUNNING, HandleStatus.DRAINING, HandleStatus.STOPPING, None}),
    HandleStatus.RUNNING: frozenset({HandleStatus.INITIALIZING, HandleStatus.DRAINING, HandleStatus.STOPPING, None}),
    # draining -> running: a drain called off (a retired cluster put back in the config)
    HandleStatus.DRAINING: frozenset({HandleStatus.RUNNING, HandleStatus.STOPPING, None}),
    HandleStatus.STOPPING: frozenset({None}),
}


def may_move(old: HandleStatus | None, new: HandleStatus | None) -> bool:
    return old == new or new in TRANSITIONS[old]
