"""Read-only views of a fleet, from Redis and the configuration alone: what `fleet.status`
returns, the handles and events `fleet status` and `fleet events` show, the messages set aside,
and the clusters Redis still tracks that the config no longer declares. No dispatcher, no
provider: the CLI reads these directly, as any process may."""

from __future__ import annotations

from typing import Any

import redis

from fleet import clock
from fleet.config import ClusterSpec, FleetConfig
from fleet.deadletters import DeadLetters, summary
from fleet.holds import Holds
from fleet.model import ClusterState, HandleStatus, LaunchState, Summary
from fleet.reasons import why as why_words
from fleet.retire import with_retired
from fleet.store import Store


class Queries:
    def __init__(self, config: FleetConfig, client: redis.Redis, store: Store | None = None,
                 holds: Holds | None = None) -> None:
        self.config = config
        self.client = client
        self.store = store or Store(client, config.fleet.id)
        self.holds = holds or Holds(client, config.fleet.id)

    @classmethod
    def including_retired(cls, config: FleetConfig, client: redis.Redis) -> Queries:
        """Views of `config`'s clusters and of the retired ones Redis still tracks (`fleet.retire`)."""
        store = Store(client, config.fleet.id)
        try:
            gone = [c for c in store.tracked_clusters() if c not in config.clusters]
            config = with_retired(config, store.spec_records(gone))
        except redis.RedisError:
            pass  # the status itself will say that Redis cannot be read
        return cls(config, client, store)

    def status(self, cluster: Any, st: ClusterState | None = None) -> dict[str, Any]:
        """Desired, initializing, running, stopping, draining and pending workers of a cluster
        (from Redis: the counts, not the records, unless `st` is given), and why it cannot launch if
        it cannot (the `fleet.status` reply)."""
        spec = self.config.spec(cluster)
        summary = Summary(st.desired, st.counts, st.pending) if st else self.store.summary(cluster)
        summary_ = summary.as_dict(cluster)
        first = spec.pool_list[0]
        error = self.holds.error(cluster, first.name)
        budget_left, budget = self.holds.at_budget(cluster)
        summary_.update(
            provider=",".join(spec.providers), min_workers=spec.min_workers, max_workers=spec.max_workers,
            at_quota=round(self.holds.at_quota(cluster, first.name), 1),
            no_capacity=round(self.holds.no_capacity(cluster, first.name), 1),
            at_budget=round(budget_left, 1), budget=budget or None,
            recovering=round(self.holds.recovering(), 1),
            rate_limited=round(self.holds.provider_hold(first.provider), 1),
            unresponsive=round(self.holds.unresponsive(cluster, first.name), 1),
            error=error["message"] if error else None,
            unknown=self.store.unknown_workers(cluster),
            cleanup=self.store.cleanup_count(cluster),
            interrupted=summary.counts.interrupted,
            outdated=0 if cluster in self.config.retired else summary.counts.outdated(spec.revisions),
            clock_skew=self.clock_skew(),
        )
        summary_.update(self.cost(cluster))
        if cluster in self.config.retired:
            summary_["retired"] = True
        if spec.pools:
            summary_["pools"] = self.pools(cluster, spec, summary)
        return summary_

    def cost(self, cluster: str) -> dict[str, Any]:
        """`hourly_cost` (USD/h of the cluster's handles and launches in flight), `cost_total`
        (USD they cost so far, ever: `fleet.state.costs`) and the cluster's `group`."""
        spec = self.config.clusters.get(cluster)
        return {**self.store.cost(cluster).as_json(), "group": spec.group if spec else None}

    def clock_skew(self) -> list[dict[str, Any]]:
        """The control-plane processes whose clock is more than `fleet.clock.SKEW_WARN` seconds off
        Redis time: `{process, role, offset}` each (offset = Redis - host). Fleet keeps working
        (it only uses Redis time), but whatever else runs on such a host is off too."""
        return clock.skewed(self.client, self.config.fleet.id)

    def rollout(self, cluster: str) -> dict[str, Any]:
        """Where the cluster's rollout is: held (paused or stopped, and why), how many live
        workers are outdated, and the current revision of each pool."""
        spec = self.config.spec(cluster)
        summary = self.store.summary(cluster)
        state = self.store.rollout_state(cluster)
        outdated = 0 if cluster in self.config.retired else summary.counts.outdated(spec.revisions)
        shown = state.get("state") or ("rolling" if outdated else "idle")
        return {"cluster": cluster, "state": shown, "reason": state.get("reason"), "outdated": outdated,
                "desired": summary.desired.n if summary.desired else None,
                "running": summary.counts.of(HandleStatus.RUNNING),
                "updated": summary.counts.live - outdated,
                "max_surge": spec.rollout.surge(summary.desired.n if summary.desired else 0),
                "max_unavailable": spec.rollout.unavailable(summary.desired.n if summary.desired else 0),
                "revisions": {p.name or "-": spec.revision(p.name) for p in spec.pool_list},
                "by_revision": dict(sorted(summary.counts.revs.items()))}

    def pools(self, cluster: str, spec: ClusterSpec, summary: Summary) -> list[dict[str, Any]]:
        """Each pool of a cluster that declares pools: its workers by status, pending launches,
        cap, and why it is skipped for launches now (None: it is not)."""
        first = spec.pool_list[0].name
        out = []
        for pool in spec.pool_list:
            why = self.holds.skipped(cluster, spec.fingerprint, pool.name, pool.provider)
            by = {s.value: summary.counts.in_pool(pool.name, s, first) for s in HandleStatus}
            pending = sum(p.count for p in summary.pending.values()
                          if (p.pool or first) == pool.name and p.state is not LaunchState.CANCELLED)
            live = by["initializing"] + by["running"]
            if why is None and pool.max_workers is not None and live + by["draining"] + by["stopping"] \
                    + pending >= pool.max_workers:
                why = why_words("full")
            out.append({"pool": pool.name, "provider": pool.provider, "rank": spec.rank(pool.name),
                        "max_workers": pool.max_workers, **by, "pending": pending, "skipped": why})
        return out

    def detailed(self, clusters: list[str]) -> list[tuple[ClusterState, dict[str, Any]]]:
        """(snapshot, status) of each cluster, the snapshots read in one round trip."""
        states = self.store.read_many(clusters)
        return [(states[c], self.status(c, states[c])) for c in clusters]

    def with_handles(self, cluster: str, st: ClusterState, status: dict[str, Any]) -> dict[str, Any]:
        """The `fleet.status` shape plus every handle's record, readable, under "workers"."""
        return {**status, "workers": [{"handle": h, **r.readable()} for h, r in st.handles.items()]}

    def events(self, cluster: Any, count: int = 50) -> list[dict[str, Any]]:
        self.config.spec(cluster)
        return self.store.events(cluster, count)

    def dead_letters(self) -> DeadLetters:
        return summary(self.client, self.config.fleet.id)

    def forgotten_clusters(self) -> dict[str, int]:
        """Clusters with handles in Redis (live, or dead with remains to kill) that the config no
        longer declares -> handle count. Nothing sweeps or kills them (their provider options left
        with the config): an operator scales a cluster to 0 before removing it, or puts it back."""
        return {c: n for c, n in self.store.tracked_clusters().items() if c not in self.config.clusters}

    def retired(self) -> list[str]:
        """The retired clusters this view knows (removed from the config, still being drained)."""
        return sorted(self.config.retired)
