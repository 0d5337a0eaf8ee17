"""Every Redis key of a fleet, defined once. Everything that reads or writes Fleet's state (the
store, the holds and limits, the leases, the metrics collector, the CLI, the benchmarks) takes
its key names from here. `KEY_TABLE` lists them all; `docs/architecture.md` shows the same
table, and `tests/test_layout.py` (`test_the_docs_key_tables_are_the_keyspace`) checks the two agree.

All keys of fleet `<id>` start with `fleet:<id>:`. A cluster's keys are `fleet:<id>:<cluster>:<name>`;
cluster names cannot contain `:` (config.NAME_PATTERN), so the two never collide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class KeyInfo(NamedTuple):
    """One row of the key table: the key (relative to `fleet:<id>:`), its Redis type, what it holds."""

    key: str
    type: str
    holds: str


#: Per cluster: `fleet:<id>:<cluster>:<key>`.
CLUSTER_KEYS: tuple[KeyInfo, ...] = (
    KeyInfo("desired", "hash",
            "the desired number `n`, its `version` (only grows), `at`, and the autoscaler's `floor`"),
    KeyInfo("handles", "hash", "handle -> its record (`fleet.model.HandleRecord`)"),
    KeyInfo("index", "hash", "handle -> its status: what the sweep compares the provider's answer with"),
    KeyInfo("counts", "hash", "workers and handles by status (`<status>`, `<status>:h`), and `v` once built whole"),
    KeyInfo("pending", "hash", "launch id -> its record (`fleet.model.LaunchRecord`)"),
    KeyInfo("cost", "hash",
            "by pool: the run rate of the handles in Redis (`rate@<pool>`, micro-USD/h), the cost of those gone "
            "(`spent@<pool>`, USD) and the same by hour (`<hour>@<pool>`): `fleet.state.costs`"),
    KeyInfo("check", "string", "set while a follow-up check of new handles is queued; expires with its delay"),
    KeyInfo("series", "list", "samples `<time> <running> <desired>` taken by the sweep, newest first, capped"),
    KeyInfo("unknown", "hash",
            "live handles the provider lists that Redis does not know, with when each was first seen"),
    KeyInfo("cleanup", "hash", "dead handles whose remains still wait for a kill that succeeds"),
    KeyInfo("events", "stream", "the cluster's events (`fleet.model.EventKind`), capped"),
    KeyInfo("lock", "string", "the reconcile lease (`fleet.lease`)"),
    KeyInfo("queued", "string", "set while a reconcile task is queued: coalesces bursts of requests"),
    KeyInfo("again", "string", "set by a reconcile that found the lease taken: its holder reconciles once more"),
    KeyInfo("sweeping", "string", "the sweep lease"),
    KeyInfo("launch:<launch id>", "string", "the lease of the run task working on that launch"),
    KeyInfo("launch-retry:<launch id>", "string", "set while that launch's run task waits out its retry back-off"),
    KeyInfo("autoscale", "string", "the autoscaler's memory between sweeps (JSON)"),
    KeyInfo("at_quota", "string", "the time a quota hold ends"),
    KeyInfo("no_capacity", "string", "the time a no-capacity hold ends"),
    KeyInfo("at_budget", "string",
            "a budget hold (`fleet.budget`): JSON `until`, the cap (`cap`, `limit` USD/h) and the committed `rate`"),
    KeyInfo("error", "string", "a permanent provider error: JSON message, config fingerprint, time"),
    KeyInfo("unresponsive", "string", "the time a hold on the cluster's provider calls ends, after one timed out"),
    KeyInfo("pool:<pool>:at_quota", "string", "as `at_quota`, for one pool of a cluster that declares pools"),
    KeyInfo("pool:<pool>:no_capacity", "string", "as `no_capacity`, for one pool"),
    KeyInfo("pool:<pool>:error", "string", "as `error`, for one pool"),
    KeyInfo("pool:<pool>:unresponsive", "string", "as `unresponsive`, for one pool"),
    KeyInfo("notice", "hash", "handle -> when its interruption was noticed (until its replacement runs)"),
    KeyInfo("pools", "hash", "pool -> its provider and provider_options as the config last declared them"),
    KeyInfo("rollout", "hash", "the rollout's `state` (paused, stopped) with `reason` and `at`, and `active`"),
    KeyInfo("spec", "string", "what retiring the cluster needs: its pools, providers and options (no secrets)"),
    KeyInfo("retiring", "string", "set once the cluster, removed from the config, is being retired"),
    KeyInfo("declared", "string", "set, with a TTL, by every process whose config declares the cluster"),
)

#: Per fleet: `fleet:<id>:<key>`.
FLEET_KEYS: tuple[KeyInfo, ...] = (
    KeyInfo("epoch", "string", "a random value; a process that sees it vanish or change knows Redis lost its data"),
    KeyInfo("recovering", "string", "the time the recovery hold (no launch in the whole fleet) ends"),
    KeyInfo("replicated", "string", "a counter each mutating public task bumps before it waits for a replica (WAIT)"),
    KeyInfo("metrics", "hash", "every counter and histogram bucket (`fleet.counters`)"),
    KeyInfo("dead_letters", "list", "messages the control plane could not decode or dispatch, newest first, capped"),
    KeyInfo("clocks", "hash", "`<host>/<pid>` -> each control-plane process's clock offset (`fleet.clock`)"),
    KeyInfo("sweep_tick", "string", "set for half a sweep interval by each beat sweep: a backlog of them runs once"),
    KeyInfo("request:<task id>", "string",
            "a public request's fate (`applying`, `expired`, `abandoned`: `fleet.requests`), kept past its deadline"),
    KeyInfo("provider:<p>:hold", "string", "the time a rate-limit hold on provider p ends"),
    KeyInfo("provider:<p>:capacity", "sorted set", "instance types without capacity, scored by when their hold ends"),
    KeyInfo("provider:<p>:slot:<i>", "string", "the concurrent-launch slots of provider p (leases)"),
    KeyInfo("limits...", "(prefix)", "each provider's `ops_per_second` moving window (`fleet.limits`)"),
)

KEY_TABLE: tuple[KeyInfo, ...] = CLUSTER_KEYS + FLEET_KEYS


@dataclass(frozen=True)
class ClusterKeys:
    """The keys of one cluster of one fleet."""

    prefix: str  # fleet:<id>:<cluster>:

    def _k(self, name: str) -> str:
        return self.prefix + name

    @property
    def desired(self) -> str:
        return self._k("desired")

    @property
    def handles(self) -> str:
        return self._k("handles")

    @property
    def pending(self) -> str:
        return self._k("pending")

    @property
    def index(self) -> str:
        return self._k("index")

    @property
    def counts(self) -> str:
        return self._k("counts")

    @property
    def cost(self) -> str:
        return self._k("cost")

    @property
    def unknown(self) -> str:
        return self._k("unknown")

    @property
    def cleanup(self) -> str:
        return self._k("cleanup")

    @property
    def events(self) -> str:
        return self._k("events")

    @property
    def lock(self) -> str:
        return self._k("lock")

    @property
    def queued(self) -> str:
        return self._k("queued")

    @property
    def again(self) -> str:
        return self._k("again")

    @property
    def sweeping(self) -> str:
        return self._k("sweeping")

    @property
    def check(self) -> str:
        return self._k("check")

    @property
    def series(self) -> str:
        return self._k("series")

    def launch(self, launch_id: str) -> str:
        return self._k(f"launch:{launch_id}")

    def launch_retry(self, launch_id: str) -> str:
        """Set while a launch's run task waits out its retry back-off (see Launcher.retrying)."""
        return self._k(f"launch-retry:{launch_id}")

    @property
    def autoscale(self) -> str:
        return self._k("autoscale")

    @property
    def at_quota(self) -> str:
        return self._k("at_quota")

    @property
    def no_capacity(self) -> str:
        return self._k("no_capacity")

    @property
    def at_budget(self) -> str:
        return self._k("at_budget")

    @property
    def error(self) -> str:
        return self._k("error")

    @property
    def unresponsive(self) -> str:
        return self._k("unresponsive")

    @property
    def notice(self) -> str:
        return self._k("notice")

    @property
    def pools(self) -> str:
        return self._k("pools")

    @property
    def rollout(self) -> str:
        return self._k("rollout")

    @property
    def spec(self) -> str:
        return self._k("spec")

    @property
    def retiring(self) -> str:
        return self._k("retiring")

    @property
    def declared(self) -> str:
        return self._k("declared")

    def pool(self, pool: str) -> ClusterKeys:
        """The keys of the holds of one pool (`pool:<pool>:...`); the cluster's own for pool ""."""
        return ClusterKeys(f"{self.prefix}pool:{pool}:") if pool else self


@dataclass(frozen=True)
class Keyspace:
    """The keys of fleet `fleet_id`."""

    fleet_id: str

    @property
    def prefix(self) -> str:
        return f"fleet:{self.fleet_id}:"

    def cluster(self, name: str) -> ClusterKeys:
        return ClusterKeys(f"{self.prefix}{name}:")

    @property
    def epoch(self) -> str:
        return self.prefix + "epoch"

    @property
    def recovering(self) -> str:
        return self.prefix + "recovering"

    @property
    def replicated(self) -> str:
        return self.prefix + "replicated"

    @property
    def metrics(self) -> str:
        return self.prefix + "metrics"

    @property
    def dead_letters(self) -> str:
        return self.prefix + "dead_letters"

    @property
    def clocks(self) -> str:
        return self.prefix + "clocks"

    @property
    def sweep_tick(self) -> str:
        return self.prefix + "sweep_tick"

    def request(self, task_id: str) -> str:
        """The fate of one public request (`fleet.requests`)."""
        return self.prefix + "request:" + task_id

    @property
    def limits_prefix(self) -> str:
        return self.prefix + "limits"

    def provider_hold(self, provider: str) -> str:
        return f"{self.prefix}provider:{provider}:hold"

    def provider_capacity(self, provider: str) -> str:
        return f"{self.prefix}provider:{provider}:capacity"

    def provider_slot(self, provider: str, slot: int) -> str:
        return f"{self.prefix}provider:{provider}:slot:{slot}"

    def cluster_of(self, key: bytes | str, kind: str) -> str | None:
        """The cluster name of `key` if it is that cluster's `kind` key (e.g. "handles"), else None."""
        text = key.decode() if isinstance(key, bytes) else key
        suffix = ":" + kind
        if not (text.startswith(self.prefix) and text.endswith(suffix)):
            return None
        name = text[len(self.prefix):-len(suffix)]
        return name if name and ":" not in name else None

    def pattern(self, kind: str) -> str:
        """A SCAN pattern for every cluster's `kind` key."""
        return f"{self.prefix}*:{kind}"


def queue_owner(queue: str) -> str:
    """The one key outside every fleet's prefix: which fleet's control plane consumes the public
    queue `queue` of this Redis database (its fleet id, with a TTL its heartbeat renews:
    `fleet.owner`)."""
    return f"fleet-queue:{queue}:owner"
