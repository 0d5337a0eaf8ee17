"""Values Fleet reads from outside itself (a cloud's tags and labels, queue messages, operations),
read so that one bad value never stops the others.

Anyone allowed to tag an instance, label a container or write to a queue can put anything there.
Each such value is judged on its own: the readers here answer None for a value they cannot
read (never raise), and the provider that asked skips the item or treats it safely and counts
it (`Provider.unreadable`: a log line without the value, and the metrics field
`unreadable|{cluster}|{source}|{reason}`, exported as `fleet_unreadable_inputs`).
"""

from __future__ import annotations

import re
from typing import Any

#: the most workers one container may hold (ClusterSpec.workers_per_container's bound)
MAX_WORKERS = 1024
_COUNT = re.compile(r"[1-9][0-9]{0,3}")  # ASCII digits only: int() also takes "٣", " 3", "1_0"
#: a spec revision as `ClusterSpec.revision` writes it (hex), with room for a longer hash
_REVISION = re.compile(r"[0-9a-f]{1,64}")
_INDEX = re.compile(r"[0-9]{1,6}")
_SLUG = re.compile(r"[^a-z0-9_]+")


def worker_count(raw: Any, default: int = 1) -> int | None:
    """The worker count a tag or label says (absent: `default`); None unless it is a whole
    number from 1 to MAX_WORKERS in ASCII digits (a huge one would make a handle list of that
    length, see `Provider.find_launch`)."""
    if raw is None:
        return default
    if isinstance(raw, str) and _COUNT.fullmatch(raw) and int(raw) <= MAX_WORKERS:
        return int(raw)
    return None


def revision(raw: Any) -> str | None:
    """A spec revision a tag or label says; None for anything but one (absent included)."""
    return raw if isinstance(raw, str) and _REVISION.fullmatch(raw) else None


def call_index(raw: Any) -> int | None:
    """The index of a launch's call a tag says (`fleet:batch`); None for anything else."""
    return int(raw) if isinstance(raw, str) and _INDEX.fullmatch(raw) else None


def slug(text: str) -> str:
    """`text` as a metrics field part and label value: lower case, [a-z0-9_] only, short."""
    return _SLUG.sub("_", text.lower()).strip("_")[:40] or "unknown"
