"""Random clusters as the planners see them (`fleet.planners.ClusterView`), for the planners'
property tests: pure values, no Redis. A view's records come through a loader that counts its
calls, so a test can say when a planner read them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from fleet.config import ClusterSpec
from fleet.model import LIVE, ClusterState, Desired, HandleRecord, HandleStatus, LaunchRecord, LaunchState
from fleet.planners.view import ClusterView

NOW = 1000.0
STATUSES = [HandleStatus.RUNNING] * 4 + [HandleStatus.INITIALIZING, HandleStatus.DRAINING, HandleStatus.STOPPING]


@dataclass
class Loader:
    """The live records of a cluster, handed out as the store does; counts its calls."""

    records: Mapping[str, HandleRecord]
    calls: int = field(default=0)

    def __call__(self) -> dict[str, HandleRecord]:
        self.calls += 1
        return {h: r for h, r in self.records.items() if r.status in LIVE}


def view_of(spec: ClusterSpec, records: Mapping[str, HandleRecord], pending: Mapping[str, LaunchRecord] | None = None,
            desired: int | None = None, **kw: Any) -> tuple[ClusterView, Loader]:
    """The view of a cluster with `records` (every status) and `pending`, its counts as the
    store keeps them, and the loader of its records."""
    pending = pending or {}
    want = Desired(desired, 1, 0.0) if desired is not None else None
    loader = Loader(records)
    counts = ClusterState(want, dict(records), dict(pending)).counts
    return ClusterView(spec, want, counts, pending, now=kw.pop("now", NOW), load_records=loader, **kw), loader


def spec_of(pools: int = 2, **kw: Any) -> ClusterSpec:
    """A cluster of `pools` pools (0: one `provider`), with the settings `kw`."""
    base: dict[str, Any] = {"container": {"command": ["work"]}, **kw}
    if pools:
        base["pools"] = [{"name": f"p{i}", "provider": "memory", "provider_options": {"market": i}, **extra}
                         for i, extra in enumerate(base.pop("pool_extra", [{}] * pools))]
    else:
        base["provider"] = "memory"
    return ClusterSpec.model_validate(base)


@st.composite
def specs(draw: st.DrawFn, rebalance: bool | None = None) -> ClusterSpec:
    """Clusters of one to three pools, with or without queues, drains, idle timeouts, caps,
    priorities, a rebalance and a rollout setting."""
    pools = draw(st.integers(0, 3))
    max_workers = draw(st.integers(0, 30))
    kw: dict[str, Any] = {"max_workers": max_workers, "min_workers": draw(st.integers(0, max_workers)) // 2,
                          "workers_per_container": draw(st.sampled_from([1, 1, 2, 4]))}
    if pools:
        kw["pool_extra"] = [draw(st.fixed_dictionaries({}, optional={
            "max_workers": st.integers(0, 12), "priority": st.integers(0, 2), "weight": st.integers(1, 3)}))
            for _ in range(pools)]
    with_rebalance = draw(st.booleans()) if rebalance is None else rebalance
    if pools >= 2 and with_rebalance:
        kw["rebalance"] = {"max_in_flight": draw(st.integers(1, 3))}
    if draw(st.booleans()):
        kw["queues"] = ["q"]
        kw["drain_timeout"] = draw(st.sampled_from([0.0, 60.0]))
        if draw(st.booleans()):
            kw.update(autoscale={}, idle_timeout=30.0)
    kw["rollout"] = {"max_surge": draw(st.sampled_from([1, 2, "25%", "50%"])),
                     "max_unavailable": draw(st.sampled_from([0, 1, "10%"]))}
    return spec_of(pools, **kw)


@st.composite
def views(draw: st.DrawFn, spec: st.SearchStrategy[ClusterSpec] | None = None,
          outdated: bool = True) -> tuple[ClusterView, Loader]:
    """A random cluster: handles of every status in its pools (some held, busy, interrupted,
    idle, of an older revision when `outdated`), pending launches of every state, a desired
    number or none, pools held, unknown workers, a rollout paused or not, retired or not."""
    s = draw(spec if spec is not None else specs())
    pools = [p.name for p in s.pool_list]
    current = sorted(s.revisions)
    revs = [*current, ""] + (["old", "expired"] if outdated else [])
    records: dict[str, HandleRecord] = {}
    for i in range(draw(st.integers(0, 12))):
        status = draw(st.sampled_from(STATUSES))
        records[f"h{i}"] = HandleRecord(
            draw(st.sampled_from([1, 1, 2, 4])), status, since=float(draw(st.integers(0, 999))),
            busy=draw(st.sampled_from([0, 0, 1, 3])), hold=draw(st.integers(0, 6)) == 0,
            pool=draw(st.sampled_from(pools)),
            interrupted="spot" if status is HandleStatus.DRAINING and draw(st.booleans()) else "",
            rev=draw(st.sampled_from(revs)), born=float(draw(st.integers(0, 999))),
            idle_since=draw(st.sampled_from([None, 900.0, 990.0])))
    pending = {f"l{i}": LaunchRecord(draw(st.integers(1, 5)), draw(st.sampled_from(list(LaunchState))),
                                     float(draw(st.integers(0, 999))), pool=draw(st.sampled_from(pools)))
               for i in range(draw(st.integers(0, 4)))}
    blocked = {p: draw(st.sampled_from([None, None, None, "no capacity", "at quota"])) for p in pools}
    return view_of(s, records, pending, desired=draw(st.one_of(st.none(), st.integers(0, 35))), blocked=blocked,
                   unknown=draw(st.sampled_from([0, 0, 0, 1, 3])), retired=draw(st.integers(0, 9)) == 0,
                   rollout_held=draw(st.sampled_from([None, None, "paused", "stopped"])))
