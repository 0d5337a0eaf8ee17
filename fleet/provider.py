"""The provider contract: the three methods a cloud must implement for Fleet to manage it.

A provider launches, inspects and kills *workers*. Several workers may share one container (or VM):
they then share one *handle* and live and die together. Fleet's managed layer (`fleet.reconcile`)
does all the bookkeeping (desired number, scale-up and scale-down planning, replacement of dead
workers); a provider only does what it is told, idempotently.

Assumptions every provider may rely on, and every caller must honour:

* **Idempotency by launch id.** `run_workers` receives a `launch_id`. A second call with the same
  launch id (a redelivered task, a retry after a timeout) must not launch again: it returns the
  handles of the first call (cloud client tokens, deterministic names, or a lookup by a launch tag
  before creating).
* **An unknown outcome is an error, never a short list.** When a call that may have launched
  workers gets no answer (a lost reply, a timeout, a 5xx, a connection reset), raise a
  `TransientProviderError`: Fleet keeps the launch counted and retries it with the same launch id,
  which finds what the lost call made. Return fewer handles than asked only when the cloud said
  that it launched no more (a capacity or quota answer, an all-or-nothing call that failed).
* **Asking by launch id.** `find_launch` tells which workers a launch made, without launching;
  Fleet asks it before it gives up a launch that was cancelled after a run task had started it.
* **First attempts.** `cluster.first_attempt` is True only when no earlier run task took this
  launch: a provider may then skip its look-up of what an earlier attempt made. Whenever Fleet
  cannot be sure (a retry, a redelivery, a re-sent launch), it is False.
* **Eventual consistency.** `worker_status` may lag behind `run_workers` and `kill_workers`. Fleet
  re-asks on every sweep; a provider must not invent a state it has not observed.
* **Unknown means stopped.** A handle the provider cannot find is `STOPPED`, in `worker_status`
  and in `kill_workers` (killing it succeeds).
* **Keyed, never positional.** Results are dicts keyed by handle, never lists matched by position.
* **Identity.** Every worker gets `FLEET_ID`, `FLEET_CLUSTER`, `FLEET_HANDLE` and `FLEET_WORKERS`
  (the number of workers in its container) in its environment, and every cloud resource is tagged
  with the fleet id, the cluster and the launch id, so `list_workers` can find it after a restart.
* **Pools.** A cluster may launch through several pools (`fleet.config.PoolSpec`); the pool a call
  is about is `cluster.pool` ("" for a cluster that declares none). A provider that tags its
  resources tags them with the pool too when it is not "", and then lists only that pool's
  resources: two pools of one cluster may use the same provider (spot and on-demand EC2).
* **Interruptions.** A cloud that reclaims workers (spot, preemptible) says so in
  `Observation.interrupted` (handles it saw reclaimed or about to be), and, for notices that no
  status shows (EC2's interruption warnings on an SQS queue), in `interruptions`. Fleet replaces
  an interrupted worker before it goes and counts it as interrupted, not failed; it calls
  `acknowledge` only after it recorded the notices, so a notice lost with a crash comes again.
  Providers without interruptions implement neither.
* **Typed errors.** Raise the `fleet.errors.ProviderError` subclasses: `RateLimited` (with
  `retry_after`), `QuotaExceeded`, `CapacityError`, `TransientProviderError`,
  `PermanentProviderError`. Anything else is treated as transient.
* **No secrets in arguments.** Credentials come from the SDK's own chain (environment, profiles,
  metadata), never from a cluster spec or a task argument.
* **Secrets by reference.** `container.secrets` maps a variable name to a reference
  (`fleet.secrets`), never a value. A provider serves the schemes of `secret_schemes`: it has the
  VM or task fetch the value at boot with its own identity, or reads `env:`/`file:` at launch and
  hands the value straight to the process. A secret's value goes into no VM metadata, task
  definition, override or tag; neither it nor a `container.env` value into an error or a log.

Cross-cutting concerns (rate limiting, metrics, fault injection) wrap a provider; they are not
written into each one.
"""

from __future__ import annotations

import enum
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from fleet.inputs import slug
from fleet.pricing import Quote
from fleet.secrets import check_name, check_ref

log = logging.getLogger(__name__)


class WorkerStatus(str, enum.Enum):
    """The three states of the seed contract."""

    INITIALIZING = "initializing"
    RUNNING = "running"
    STOPPED = "stopped"


class ContainerSpec(BaseModel):
    """What a worker container runs. `image` is used by container providers only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: tuple[str, ...] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    image: str = ""
    #: environment variable name -> a reference to its value (`fleet.secrets`): never the value
    secrets: dict[Annotated[str, AfterValidator(check_name)], Annotated[str, AfterValidator(check_ref)]] = Field(
        default_factory=dict, max_length=100)

    @model_validator(mode="after")
    def _distinct(self) -> ContainerSpec:
        both = sorted(set(self.env) & set(self.secrets))
        if both:
            raise ValueError(f"{', '.join(both)}: in both env and secrets; keep each in one of them")
        return self


class Hardware(BaseModel):
    """What each container needs (all workers of a container share it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu: float = Field(default=1.0, gt=0, le=1024)
    memory_mb: int = Field(default=1024, gt=0, le=64 * 1024 * 1024)
    gpus: int = Field(default=0, ge=0, le=64)


class NoOptions(BaseModel):
    """Provider options of a provider that takes none."""

    model_config = ConfigDict(extra="forbid", frozen=True)


#: A provider's options model (its `options_model`).
O = TypeVar("O", bound=BaseModel)  # noqa: E741 - the options type, read as "Options"


@dataclass(frozen=True)
class Cluster(Generic[O]):
    """The cluster a provider call is about, as the provider sees it: `options` are the cluster's
    `provider_options`, validated by that provider's `options_model` (so a `Provider[LocalOptions]`
    gets a `Cluster[LocalOptions]`)."""

    fleet_id: str
    name: str
    workers_per_container: int
    options: O
    #: instance types the cloud recently had no capacity for: a provider that picks types from a
    #: catalogue must pick the next eligible one instead (see fleet.catalogue.cheapest_fit)
    excluded_types: frozenset[str] = frozenset()
    #: True only on the first attempt of a launch (see the module's "First attempts")
    first_attempt: bool = False
    #: the pool this call is about ("": the cluster declares no pools); see the module's "Pools"
    pool: str = ""
    #: the revision of the spec a launch is made from (`ClusterSpec.revision`; "" outside a
    #: launch): a provider that tags its resources tags them with it too, and reports it back in
    #: `Observation.revisions`, so that a rollout still knows after Redis lost its data
    revision: str = ""

    def identity_env(self, handle: str, workers: int) -> dict[str, str]:
        """The FLEET_* environment every worker of `handle` must get."""
        env = {
            "FLEET_ID": self.fleet_id,
            "FLEET_CLUSTER": self.name,
            "FLEET_HANDLE": handle,
            "FLEET_WORKERS": str(workers),
        }
        if self.pool:
            env["FLEET_POOL"] = self.pool
        if self.revision:
            env["FLEET_REVISION"] = self.revision
        return env

    def containers_for(self, count: int) -> list[int]:
        """Split `count` workers into full containers and at most one partial one (last)."""
        per = self.workers_per_container
        full, rest = divmod(count, per)
        return [per] * full + ([rest] if rest else [])


class Cause(str, enum.Enum):
    """Why a cloud reclaims a worker (`Interruption.cause`, `Observation.interrupted`)."""

    SPOT_INTERRUPTION = "spot_interruption"  # EC2's two-minute warning, or a spot instance it reclaimed
    REBALANCE = "rebalance_recommendation"  # EC2: the instance is at elevated risk of interruption
    PREEMPTED = "preempted"  # GCE: a spot or preemptible VM was preempted
    FARGATE_SPOT = "fargate_spot"  # ECS: a Fargate Spot task stopped with stopCode SpotInterruption

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Interruption:
    """A notice that the cloud will reclaim (or did reclaim) handle `handle`."""

    handle: str
    cause: Cause
    #: when the cloud takes the worker (Unix seconds), if the notice says
    deadline: float | None = None
    #: the provider's token for `acknowledge` (an SQS receipt handle); opaque to Fleet
    receipt: str = ""


@dataclass(frozen=True)
class Observation:
    """One look at a cluster, for a sweep: `listed` is what `list_workers` says (None: this
    provider cannot list), `status` the status of every handle asked and every handle listed,
    `interrupted` the handles the cloud reclaimed or is about to reclaim, with the cause."""

    listed: dict[str, int] | None
    status: dict[str, WorkerStatus]
    interrupted: Mapping[str, Cause] = field(default_factory=dict)
    #: the revision each listed handle was launched from, where its tags say (optional)
    revisions: Mapping[str, str] = field(default_factory=dict)


#: `ProviderContext.report`'s signature: (cluster, source, reason, how many)
Report = Callable[[str, str, str, int], None]


@dataclass(frozen=True)
class ProviderContext:
    """What a provider instance is built with: the fleet it serves, a folder it may write to, and
    where it counts the inputs from outside it could not read (`Provider.unreadable`; None: only
    logged)."""

    fleet_id: str
    state_dir: Path
    report: Report | None = field(default=None, compare=False)


def import_sdk(module: str, extra: str) -> Any:
    """Import a cloud SDK lazily; a missing one is a PermanentProviderError saying what to install."""
    import importlib

    from fleet.errors import PermanentProviderError

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PermanentProviderError(f"this provider needs {module}: pip install 'fleet[{extra}]'", str(exc)) from None


class Provider(ABC, Generic[O]):
    """Base class of every provider, typed by its options model: `class MyProvider(Provider[MyOptions])`
    with `options_model = MyOptions`. Implement the three abstract methods; override the rest
    only when you have something faster or more precise."""

    #: pydantic model that validates a cluster's `provider_options`; extra keys are refused.
    options_model: ClassVar[type[BaseModel]] = NoOptions
    #: Seconds after launch during which a STOPPED report for an initializing handle is taken
    #: for the cloud's eventual consistency (not yet listed), not for a death.
    listing_grace: ClassVar[float] = 0.0
    #: Seconds one call may take before Fleet gives up on it (a `ProviderTimeout`); the operator
    #: may set another per provider (`[providers.<name>] call_timeout`). Make it exceed the
    #: longest call this provider makes on purpose (its own waits and retries included).
    call_timeout: ClassVar[float] = 30.0
    #: Seconds after a launch at which its workers may be running. Fleet asks the new handles'
    #: status then, and again at twice the delay while any is initializing, until the delay
    #: reaches `sweep_interval` (the sweep takes over): fast providers' workers are seen running
    #: at once without a shorter sweep interval for everybody. Slow ones leave it above it.
    first_check: ClassVar[float] = 30.0
    #: The `container.secrets` reference schemes this provider can serve (`fleet.secrets`);
    #: a cluster whose secrets use another is refused at config load. None by default.
    secret_schemes: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, context: ProviderContext) -> None:
        self.context = context

    @classmethod
    def secret_problem(cls, ref: str) -> str | None:
        """Why this provider cannot serve the (valid) secret reference `ref`; None if it can.
        Default: its scheme is not in `secret_schemes`. Override to refuse some forms too."""
        from fleet.secrets import parse_ref

        scheme = parse_ref(ref).scheme
        if scheme in cls.secret_schemes:
            return None
        can = ", ".join(f"{s}:" for s in sorted(cls.secret_schemes)) or "none"
        return f"this provider cannot serve {scheme}: references (it serves: {can})"

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> BaseModel:
        """Validate a cluster's `provider_options`; raises pydantic's ValidationError."""
        return cls.options_model.model_validate(dict(options))

    @abstractmethod
    def run_workers(
        self,
        cluster: Cluster[O],
        container: ContainerSpec,
        hardware: Hardware,
        count: int,
        *,
        launch_id: str,
    ) -> list[str]:
        """Launch `count` workers and return one handle per worker (`len(result) == count`).

        Workers that share a container share a handle, so a handle repeats once per worker in
        it; pack them as `cluster.containers_for(count)` says (full containers, at most one
        partial one). Calling again with the same `launch_id` launches nothing new and returns
        the same handles. If fewer workers could be launched than asked, return those that were
        and raise nothing; Fleet launches the shortfall later.
        """

    @abstractmethod
    def worker_status(self, cluster: Cluster[O], handles: Sequence[str]) -> dict[str, WorkerStatus]:
        """Status of each of the unique `handles`, keyed by handle; unknown handles are STOPPED."""

    @abstractmethod
    def kill_workers(self, cluster: Cluster[O], handles: Sequence[str]) -> Mapping[str, bool | WorkerStatus]:
        """Kill every worker of each handle; True per handle once it is dead or going away.

        Idempotent: a handle that is already dead or was never known is a success (True). False
        (or an exception) means try again later; Fleet keeps such a handle as stopping.
        Instead of True, a provider whose kill answer says where each handle now is may return
        that `WorkerStatus` (STOPPED: gone): Fleet then takes it as `worker_status`'s answer and
        does not ask. True: Fleet asks `worker_status` at once.
        """

    def is_initializing(self, cluster: Cluster[O], handles: Sequence[str]) -> dict[str, bool]:
        return self._is(cluster, handles, WorkerStatus.INITIALIZING)

    def is_running(self, cluster: Cluster[O], handles: Sequence[str]) -> dict[str, bool]:
        return self._is(cluster, handles, WorkerStatus.RUNNING)

    def is_stopped(self, cluster: Cluster[O], handles: Sequence[str]) -> dict[str, bool]:
        return self._is(cluster, handles, WorkerStatus.STOPPED)

    def observe(self, cluster: Cluster[O], handles: Sequence[str]) -> Observation:
        """What `list_workers` says, and the status of `handles` and of every listed handle: the
        sweep's look at a cluster. Override when one cloud call answers both (EC2: one
        DescribeInstances)."""
        listed = self.list_workers(cluster)
        asked = list(dict.fromkeys([*handles, *(listed or {})]))
        return Observation(listed, dict(self.worker_status(cluster, asked)) if asked else {})

    def launch_batch(self, cluster: Cluster[O]) -> int:
        """Containers one cloud call launches at most (0: no such limit, or one per call). Fleet
        sizes each launch as a multiple of it, so that no call of a large scale-up is left part
        filled (EC2's `batch_size`)."""
        return 0

    def list_workers(self, cluster: Cluster[O]) -> dict[str, int] | None:
        """Every live handle this provider holds for `cluster.fleet_id` and `cluster.name`, with
        its worker count, found by tag or label (not from Fleet's memory). None: cannot list."""
        return None

    def find_launch(self, cluster: Cluster[O], launch_id: str) -> list[str] | None:
        """The handles of every worker that exists (in any state but gone) from the launch
        `launch_id`, one per worker as `run_workers` returns them; [] when it made none. Never
        launches. None: this provider cannot tell (Fleet then calls `run_workers` again with the
        same launch id, which returns what the launch made, or makes it, and kills the result)."""
        return None

    def prices(self, cluster: Cluster[O], hardware: Hardware) -> list[Quote]:
        """What one container (VM) of `cluster`'s pool costs per hour: one `Quote` per kind a launch
        may make with `hardware` (each type it may use, preferred first), in the pool's market.
        Never raises for a price the cloud would not give: answer a stand-in and say why in its
        `note`. The config's overrides are applied over this by Fleet (`fleet.pool_prices`).
        Default: [] (no price known)."""
        return []

    @classmethod
    def price_keys(cls, options: BaseModel | None) -> frozenset[str] | None:
        """The names `[providers.<name>] prices` may price for a pool with `options` (None: any
        pool of this provider): its instance types. None: this provider prices no types (an entry
        there is a config error; use `price_per_hour`). Default: None."""
        return None

    def interruptions(self, cluster: Cluster[O]) -> list[Interruption]:
        """Interruption notices that no status shows yet (EC2's warnings on the cluster's SQS
        queue), for this cluster and pool. Receiving must not delete: Fleet calls `acknowledge`
        with the notices once it recorded them (a crash in between means they come again, and
        recording one twice changes nothing). Notices about handles Fleet does not know are
        acknowledged all the same. Default: none."""
        return []

    def acknowledge(self, cluster: Cluster[O], notices: Sequence[Interruption]) -> None:
        """Forget notices `interruptions` returned (delete their SQS messages). Default: nothing."""

    def unreadable(self, cluster: Cluster[O], source: str, reason: str, n: int = 1) -> None:
        """Count `n` inputs from outside (a queue message, a tag, a label, an operation) of
        `source` that could not be read, for `reason`, and were skipped, set aside or treated
        safely (see fleet.inputs): a warning without the value (it is not ours to log) and the
        context's `report`. Never raises: a count must not cost the items beside it."""
        log.warning("%s of cluster %s: %d unreadable input(s) skipped or set aside: %s", source, cluster.name, n,
                    reason)
        if self.context.report is not None:
            try:
                self.context.report(cluster.name, slug(source), slug(reason), n)
            except Exception as exc:  # noqa: BLE001 - the count is best effort, the sweep is not
                log.warning("cannot count unreadable inputs of %s: %s", cluster.name, exc)

    def _is(self, cluster: Cluster[O], handles: Sequence[str], wanted: WorkerStatus) -> dict[str, bool]:
        status = self.worker_status(cluster, list(dict.fromkeys(handles)))
        return {h: status.get(h, WorkerStatus.STOPPED) == wanted for h in handles}
