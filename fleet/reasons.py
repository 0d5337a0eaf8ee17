"""Why a cluster does not launch now, and what else about it needs a look, in the one wording
that `fleet status`, the console and the `fleet.status` reply share.

`why` words one hold: alone, it is what a pool's `skipped` says in the status (the values
docs/pools.md lists, kept as they are); with the seconds left, it is a cluster's reason.
`not_launching` lists a cluster's reasons from its `fleet.status` reply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

#: a hold (its key in the `fleet.status` reply, or "full") -> its words in a pool's `skipped`
WORDS = {
    "at_quota": "at quota",
    "no_capacity": "no capacity",
    "at_budget": "at budget",
    "rate_limited": "rate limited",
    "unresponsive": "unresponsive",
    "recovering": "recovering from a loss of Redis data",
    "full": "full",
}
#: a hold a `fleet.status` reply gives the seconds left of -> its words with them, in the
#: order a cluster's reasons show them
LASTING = {
    "at_quota": "at quota for {:.0f} s more",
    "no_capacity": "no capacity for {:.0f} s more",
    "at_budget": "at budget for {:.0f} s more",
    "rate_limited": "rate-limited for {:.0f} s more",
    "unresponsive": "provider not answering: calls held for {:.0f} s",
    "recovering": "recovering after a loss of Redis data for {:.0f} s more",
}

Level = Literal["error", "held", "note"]


class Reason(NamedTuple):
    """One line of why: `kind` is the status key it comes from ("pool" for a pool's); `level`
    is "error" (an operator must act), "held" (it ends by itself), or "note" (worth knowing)."""

    kind: str
    level: Level
    text: str


def why(kind: str, seconds: float | None = None, detail: str = "") -> str:
    """The words for hold `kind` (a key of WORDS, or "error" with its message in `detail`);
    with `seconds` (a key of LASTING), how long it lasts too: "at quota", "at quota for 12 s more"."""
    if kind == "error":
        return f"error: {detail}"
    return WORDS[kind] if seconds is None else LASTING[kind].format(seconds)


def at_budget(seconds: float, figures: Mapping[str, Any]) -> str:
    """A budget hold in words, with its figures (`fleet.holds.Holds.at_budget`): "at budget: group
    g cap $2.00/h, $1.80/h committed, for 12 s more"."""
    if not figures.get("cap"):
        return why("at_budget", seconds)
    return (f"at budget: {figures['cap']} cap ${float(figures.get('limit') or 0):.2f}/h, "
            f"${float(figures.get('rate') or 0):.2f}/h committed, for {seconds:.0f} s more")


def not_launching(s: Mapping[str, Any], *, pools: bool = True) -> list[Reason]:
    """Why the cluster of `fleet.status` reply `s` does not launch now, and what else needs a
    look (unknown workers, remains to kill, interrupted or outdated workers, retirement), in
    the order to show them; empty: nothing to say. `pools=False` leaves out the pools skipped
    (for a caller that shows every pool on a line of its own)."""
    out = [Reason("error", "error", why("error", detail=str(s["error"])))] if s.get("error") else []
    out += [Reason(kind, "held", at_budget(s[kind], s.get("budget") or {}) if kind == "at_budget"
                   else why(kind, s[kind])) for kind in LASTING if s.get(kind)]
    if s.get("unknown"):
        out.append(Reason("unknown", "note", f"{s['unknown']} unknown workers being checked"))
    if s.get("cleanup"):
        out.append(Reason("cleanup", "note", f"{s['cleanup']} dead handles' remains still to kill"))
    if s.get("interrupted"):
        out.append(Reason("interrupted", "note", f"{s['interrupted']} interrupted workers being replaced"))
    if pools:
        out += [Reason("pool", "held", f"pool {p['pool']} skipped: {p['skipped']}")
                for p in s.get("pools", []) if p.get("skipped")]
    if s.get("outdated"):
        out.append(Reason("outdated", "note", f"rollout: {s['outdated']} outdated worker(s) being replaced "
                                              f"(fleet rollout {s['cluster']} --status)"))
    if s.get("retired"):
        out.append(Reason("retired", "held", "retired: removed from the config; its workers are being drained and "
                                             "killed, then it leaves Redis (put it back to keep them)"))
    return out
