"""The `aws_ecs` provider: one ECS Fargate task per container, `workers_per_container` workers in it.

Options (`provider_options`):
  cluster (required)          name or ARN of the ECS cluster to run tasks in.
  task_definition (required)  family, family:revision or ARN of a FARGATE-compatible task definition
                              (network mode awsvpc); it decides the image (`container.image` is not
                              used: ECS cannot override an image).
  container_name ("worker")   the worker container inside the task definition; it gets
                              `container.command` as its command and `container.env` plus the
                              identity as environment overrides. `container.secrets` (ssm:, or
                              secretsmanager: by ARN) cannot be overrides: they run a task
                              definition revision Fleet registers (providers/ecs_secrets.py).
  subnets (required, >= 1), security_groups, assign_public_ip (false)   the awsvpc network.
  stop_concurrency (10, 1..50)   StopTask calls in flight at once (ECS has no batch stop; AWS
                              throttles StopTask per account, and botocore's retries absorb that).
  market ("on-demand")        "spot" runs the tasks on Fargate Spot: RunTask gets
                              `capacityProviderStrategy` FARGATE_SPOT (weight 1) instead of
                              `launchType` FARGATE (RunTask takes one or the other, never both).
  capacity_provider_strategy  an explicit strategy instead: a list of {capacity_provider (FARGATE |
                              FARGATE_SPOT), weight (0..1000), base (0..100000)}; it must agree
                              with `market` when that is given too.
  region, endpoint_url, retry_mode (standard | adaptive), max_attempts   see providers/_aws.py.

Task size: the cluster's `hardware` rounded up to the cheapest valid Fargate CPU/memory pair
(`fargate_size`), set as task-level overrides; GPUs are refused (Fargate has none).

Identity: the handle is the task ARN. Tasks are tagged `fleet:id`, `fleet:cluster`, `fleet:launch`,
`fleet:workers` and `fleet:batch` (and `fleet:pool` when `Cluster.pool` is not ""), and their worker
container gets `FLEET_ID`, `FLEET_CLUSTER`, `FLEET_WORKERS` and `FLEET_LAUNCH_ID` (and `FLEET_POOL`).
`FLEET_HANDLE` is NOT set: one RunTask call starts up to 10 tasks with the same overrides, before
their ARNs exist. A worker that needs its handle reads the `TaskARN` field of
`$ECS_CONTAINER_METADATA_URI_V4/task` (the task metadata endpoint v4, which ECS provides to every
Fargate container).

Idempotency: every launch carries `startedBy` = "fleet-" + 30 hex characters derived from the
fleet id, cluster and launch id (and a `clientToken` per call). Before launching (except on a
launch's first attempt, `Cluster.first_attempt`), ListTasks on that `startedBy` (running and
stopped tasks) finds calls an earlier attempt already made, which are adopted rather than
repeated: a retry never launches twice, even where clientToken is not honoured. RunTask starts
at most 10 tasks a call (`launch_batch`); containers of another size (the one partial container)
get their own call because their FLEET_WORKERS differs. A RunTask that starts fewer tasks than
asked (its `failures` say why) ends the launch with what started: the capacity ran out, so no
further call is made, and Fleet launches the shortfall later (`AwsProvider.launch`, as aws_ec2
does). DescribeTasks is called in chunks of 100; a task it does not return (or lists under
`failures`) is stopped.

Pools: `list_workers`, `find_launch` and the listing of `observe` keep only the tasks tagged with
`Cluster.pool` (pool "": every task of the cluster, tagged or not). ListTasks cannot filter by tag,
so this is done on the DescribeTasks answer. `worker_status` and `kill_workers` work on task ARNs
whatever their pool: a handle's state does not depend on the pool the caller thinks it is in.

Interruptions: a task that ECS stops with `stopCode` "SpotInterruption" (Fargate Spot reclaims
it, after a two-minute SIGTERM warning) is STOPPED and, in `observe`, in `Observation.interrupted`
with `Cause.FARGATE_SPOT`. `observe` is one ListTasks and one DescribeTasks (per 100 tasks) for
the listing and the status together. A Fargate Spot RunTask refused for want of capacity (its
`failures` say "Capacity is unavailable at this time", or a RESOURCE:* reason) is a CapacityError
naming FARGATE_SPOT and the size, so Fleet takes the shortfall to another pool.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleet.deadline import progress
from fleet.errors import CapacityError, PermanentProviderError, ProviderError, QuotaExceeded, TransientProviderError
from fleet.pricing import Price, Quote
from fleet.provider import Cause, Cluster, ContainerSpec, Hardware, Observation, WorkerStatus
from fleet.secrets import AWS_SCHEMES
from providers import ecs_secrets, fargate_prices
from providers._aws import (
    AwsOptions,
    AwsProvider,
    LaunchCall,
    Made,
    aws_errors,
    chunks,
    error_code,
    raise_mapped,
    tag_dict,
    token,
)

log = logging.getLogger(__name__)

#: Valid Fargate task sizes: CPU units -> the memory sizes (MiB) allowed with it.
FARGATE_SIZES: tuple[tuple[int, tuple[int, ...]], ...] = (
    (256, (512, 1024, 2048)),
    (512, tuple(range(1024, 4096 + 1, 1024))),
    (1024, tuple(range(2048, 8192 + 1, 1024))),
    (2048, tuple(range(4096, 16384 + 1, 1024))),
    (4096, tuple(range(8192, 30720 + 1, 1024))),
    (8192, tuple(range(16384, 61440 + 1, 4096))),
    (16384, tuple(range(32768, 122880 + 1, 8192))),
)
STARTING = ("PROVISIONING", "PENDING", "ACTIVATING")
TAG_POOL = "fleet:pool"
#: a task's `stopCode` when Fargate Spot reclaimed it
SPOT_INTERRUPTION = "SpotInterruption"
#: RunTask failure reasons that mean "no capacity now" (Fargate and Fargate Spot)
CAPACITY_REASONS = ("capacity", "resource:")
PER_RUN_TASK = 10
PER_DESCRIBE = 100
HINTS = {
    "ClusterNotFoundException": "create the ECS cluster or fix provider_options.cluster",
    "PlatformTaskDefinitionIncompatibilityException":
        "provider_options.task_definition must be FARGATE-compatible (requiresCompatibilities FARGATE, awsvpc)",
    "PlatformUnknownException": "fix the Fargate platform version",
    "ClientException": "check provider_options task_definition, container_name, subnets and security_groups",
    "InvalidParameter": "check provider_options task_definition, container_name, subnets and security_groups; "
                        "with market spot or capacity_provider_strategy, associate those capacity providers "
                        "(FARGATE_SPOT) with the ECS cluster (ecs put-cluster-capacity-providers)",
}


class CapacityProviderItem(BaseModel):
    """One entry of a RunTask capacity provider strategy (ECS's CapacityProviderStrategyItem)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    capacity_provider: Literal["FARGATE", "FARGATE_SPOT"] = Field(description="a Fargate capacity provider")
    weight: int = Field(default=0, ge=0, le=1000, description="relative share of the tasks launched")
    base: int = Field(default=0, ge=0, le=100000, description="tasks placed here first")

    def api(self) -> dict[str, Any]:
        """The item as RunTask takes it."""
        item: dict[str, Any] = {"capacityProvider": self.capacity_provider, "weight": self.weight}
        if self.base:
            item["base"] = self.base
        return item


class ECSOptions(AwsOptions):
    cluster: str = Field(min_length=1, description="ECS cluster name or ARN")
    task_definition: str = Field(min_length=1, description="task definition family, family:revision or ARN")
    container_name: str = Field(default="worker", min_length=1, description="the worker container in it")
    subnets: tuple[str, ...] = Field(min_length=1, max_length=16, description="awsvpc subnets (at least one)")
    security_groups: tuple[str, ...] = Field(default=(), max_length=5, description="awsvpc security groups")
    assign_public_ip: bool = Field(default=False, description="give tasks a public IP (needed without NAT)")
    stop_concurrency: int = Field(default=10, ge=1, le=50, description="StopTask calls in flight at once")
    market: Literal["on-demand", "spot"] = Field(default="on-demand",
                                                 description="spot: Fargate Spot (capacity provider FARGATE_SPOT)")
    capacity_provider_strategy: tuple[CapacityProviderItem, ...] | None = Field(
        default=None, min_length=1, max_length=20, description="an explicit RunTask capacity provider strategy")

    @model_validator(mode="after")
    def _strategy_agrees(self) -> ECSOptions:
        items = self.capacity_provider_strategy
        if items is None:
            return self
        names = [i.capacity_provider for i in items]
        if len(set(names)) != len(names):
            raise ValueError("capacity_provider_strategy names a capacity provider twice")
        if not any(i.weight for i in items):
            raise ValueError("capacity_provider_strategy needs a weight above 0")
        if sum(1 for i in items if i.base) > 1:
            raise ValueError("capacity_provider_strategy: only one capacity provider may have a base")
        spot = "FARGATE_SPOT" in names
        if "market" in self.model_fields_set and spot != (self.market == "spot"):
            raise ValueError(f"market {self.market!r} disagrees with capacity_provider_strategy "
                             f"({'+'.join(names)}): give one of them, or make them agree")
        return self

    def strategy(self) -> tuple[dict[str, Any], ...] | None:
        """The capacityProviderStrategy RunTask gets, or None: launchType FARGATE."""
        if self.capacity_provider_strategy is not None:
            return tuple(i.api() for i in self.capacity_provider_strategy)
        if self.market == "spot":
            return ({"capacityProvider": "FARGATE_SPOT", "weight": 1},)
        return None

    def capacity_label(self, size: tuple[int, int]) -> str:
        """What a capacity error names as its instance type: the capacity providers and the
        Fargate size ("FARGATE 256/512", "FARGATE_SPOT 256/512")."""
        strategy = self.strategy()
        where = "+".join(i["capacityProvider"] for i in strategy) if strategy else "FARGATE"
        return f"{where} {size[0]}/{size[1]}"


def fargate_size(cpu: float, memory_mb: int) -> tuple[int, int]:
    """The cheapest valid Fargate (cpu units, memory MiB) with at least `cpu` vCPUs and
    `memory_mb` MiB: the smallest CPU that can hold the memory, then the smallest memory step."""
    units = math.ceil(cpu * 1024 - 1e-9)
    for task_cpu, memories in FARGATE_SIZES:
        if task_cpu >= units:
            for memory in memories:
                if memory >= memory_mb:
                    return task_cpu, memory
    raise PermanentProviderError(f"no Fargate task size fits cpu={cpu:g} memory_mb={memory_mb} (at most 16 vCPU "
                                 "and 120 GiB): lower the cluster's hardware")


def started_by(cluster: Cluster[ECSOptions], launch_id: str) -> str:
    """The `startedBy` marker of a launch (at most 36 characters)."""
    return token(cluster.fleet_id, cluster.name, launch_id, prefix="fleet-", length=36)


def _is_task_arn(handle: str) -> bool:
    return handle.startswith("arn:") and ":task/" in handle


def in_pool(task: dict[str, Any], cluster: Cluster[ECSOptions]) -> bool:
    """Whether `task` is tagged for this fleet, cluster and pool (pool "": any pool)."""
    tags = tag_dict(task.get("tags"))
    return (tags.get("fleet:id") == cluster.fleet_id and tags.get("fleet:cluster") == cluster.name
            and (not cluster.pool or tags.get(TAG_POOL) == cluster.pool))


def interrupted(task: dict[str, Any] | None) -> bool:
    """Whether Fargate Spot reclaimed `task` (or is reclaiming it: its two-minute warning)."""
    return task is not None and task.get("stopCode") == SPOT_INTERRUPTION


class ECSProvider(AwsProvider[ECSOptions]):
    options_model = ECSOptions
    first_check = 10.0  # a task is provisioning, then pending, while its image is pulled
    listing_grace = 5.0
    secret_schemes = AWS_SCHEMES  # through a task definition of Fleet's own (providers.ecs_secrets)

    service = "ecs"

    @classmethod
    def secret_problem(cls, ref: str) -> str | None:
        return super().secret_problem(ref) or ecs_secrets.secret_problem(ref)

    # -- prices ----------------------------------------------------------------------------
    def prices(self, cluster: Cluster[ECSOptions], hardware: Hardware) -> list[Quote]:
        """One task of the Fargate size `hardware` gets (`fargate_size`), in the cluster's region,
        per capacity provider it may run on (FARGATE on demand, FARGATE_SPOT spot), from the
        dated table (`fargate_prices`); [] where the table has no price. Calls no API."""
        cpu, memory = fargate_size(hardware.cpu, hardware.memory_mb)
        region = str(self.client(cluster).meta.region_name)  # resolves the region; makes no call
        strategy = cluster.options.strategy()
        quotes = []
        for name in [i["capacityProvider"] for i in strategy] if strategy else ["FARGATE"]:
            spot = name == "FARGATE_SPOT"
            per_hour = fargate_prices.task_price(region, cpu, memory, spot)
            if per_hour is not None:
                quotes.append(Quote(f"{name} {cpu}/{memory}", region,
                                    Price(per_hour, "table", fargate_prices.AS_OF, "spot" if spot else "on-demand")))
        return quotes

    # -- the contract ----------------------------------------------------------------------
    def run_workers(self, cluster: Cluster[ECSOptions], container: ContainerSpec, hardware: Hardware, count: int,
                    *, launch_id: str) -> list[str]:
        """`AwsProvider.launch` in RunTask calls of 10 tasks; an earlier attempt's calls are found
        by the launch's `startedBy` marker (running and stopped tasks)."""
        if hardware.gpus:
            raise PermanentProviderError(f"cluster {cluster.name!r} asks for GPUs, which Fargate does not offer: "
                                         "use aws_ec2 or set hardware.gpus = 0")
        size = fargate_size(hardware.cpu, hardware.memory_mb)
        marker = started_by(cluster, launch_id)
        return self.launch(
            cluster, container, count, launch_id=launch_id, per_call=PER_RUN_TASK,
            earlier=lambda: [(t["taskArn"], tag_dict(t.get("tags"))) for t in self._launched(cluster, marker)],
            make=lambda call: self._run(cluster, size, marker, call), noun="tasks")

    def _run(self, cluster: Cluster[ECSOptions], size: tuple[int, int], marker: str, call: LaunchCall) -> Made:
        """One RunTask of `call`: the tasks it started, fewer than asked when its `failures` say
        why; the typed error of its `failures` when it started none."""
        opts = cluster.options
        env = call.env(cluster)
        tags = {"fleet:id": cluster.fleet_id, "fleet:cluster": cluster.name, **call.tags()}
        if cluster.pool:
            tags[TAG_POOL] = cluster.pool
        vpc: dict[str, Any] = {"subnets": list(opts.subnets),
                               "assignPublicIp": "ENABLED" if opts.assign_public_ip else "DISABLED"}
        if opts.security_groups:
            vpc["securityGroups"] = list(opts.security_groups)
        strategy = opts.strategy()
        # RunTask refuses launchType together with a capacityProviderStrategy
        placement: dict[str, Any] = ({"capacityProviderStrategy": list(strategy)} if strategy
                                     else {"launchType": "FARGATE"})
        definition = ecs_secrets.task_definition(self.client(cluster), opts.task_definition, opts.container_name,
                                                 call.container.secrets)
        with aws_errors("ecs:RunTask", instance_type=opts.capacity_label(size), hints=HINTS):
            resp = self.client(cluster).run_task(
                cluster=opts.cluster, taskDefinition=definition, count=call.count, **placement,
                startedBy=marker, clientToken=call.token(),
                networkConfiguration={"awsvpcConfiguration": vpc},
                overrides={"cpu": str(size[0]), "memory": str(size[1]), "containerOverrides": [{
                    "name": opts.container_name, "command": list(call.container.command),
                    "environment": [{"name": k, "value": v} for k, v in env.items()]}]},
                tags=[{"key": k, "value": v} for k, v in tags.items()])
        tasks = resp.get("tasks", [])
        failures = resp.get("failures", [])
        if failures:
            reasons = "; ".join(sorted({f"{f.get('reason', '?')} {f.get('detail', '')}".strip() for f in failures}))
            log.warning("launch %s: RunTask started %d of %d tasks: %s", call.launch_id, len(tasks), call.count,
                        reasons)
            if not tasks:
                raise self._failure_error(reasons, opts.capacity_label(size))
        return [(t["taskArn"], call.workers) for t in tasks]

    @staticmethod
    def _failure_error(reasons: str, label: str) -> ProviderError:
        """The typed error of a RunTask that started nothing and said why in `failures`;
        `label` names the capacity asked for ("FARGATE_SPOT 256/512")."""
        text = f"ecs:RunTask started no task: {reasons}"
        lowered = reasons.lower()
        if any(r in lowered for r in CAPACITY_REASONS):
            return CapacityError(text, label)
        if "limit" in lowered or "quota" in lowered:
            return QuotaExceeded(text)
        return TransientProviderError(text)

    def launch_batch(self, cluster: Cluster[ECSOptions]) -> int:
        return PER_RUN_TASK

    def worker_status(self, cluster: Cluster[ECSOptions], handles: Sequence[str]) -> dict[str, WorkerStatus]:
        unique = list(dict.fromkeys(handles))
        seen = {t["taskArn"]: t for t in self._describe(cluster, [h for h in unique if _is_task_arn(h)])}
        return {h: self._status(seen.get(h)) for h in unique}

    @staticmethod
    def _status(task: dict[str, Any] | None) -> WorkerStatus:
        if task is None or task.get("desiredStatus") == "STOPPED":
            return WorkerStatus.STOPPED
        last = task.get("lastStatus", "")
        if last in STARTING:
            return WorkerStatus.INITIALIZING
        return WorkerStatus.RUNNING if last == "RUNNING" else WorkerStatus.STOPPED

    def kill_workers(self, cluster: Cluster[ECSOptions], handles: Sequence[str]) -> dict[str, bool | WorkerStatus]:
        """StopTask for each live task, `stop_concurrency` at a time (ECS has no batch stop).
        A stopped task's desired status is STOPPED at once, so each answer is its status."""
        unique = list(dict.fromkeys(handles))
        # Only tasks ECS knows and that are not stopping already get a StopTask: unknown is dead.
        live = [t["taskArn"] for t in self._describe(cluster, [h for h in unique if _is_task_arn(h)])
                if t.get("desiredStatus") != "STOPPED" and t.get("lastStatus") != "STOPPED"]
        result: dict[str, bool | WorkerStatus] = dict.fromkeys(unique, WorkerStatus.STOPPED)
        if live:
            workers = min(cluster.options.stop_concurrency, len(live))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fleet-ecs-stop") as pool:
                # list(): the first error (mapped) propagates, after every call has finished
                list(pool.map(lambda arn: self._stop(cluster, arn), live))
        return result

    def _stop(self, cluster: Cluster[ECSOptions], arn: str) -> None:
        try:
            self.client(cluster).stop_task(cluster=cluster.options.cluster, task=arn, reason="stopped by Fleet")
        except Exception as exc:  # noqa: BLE001 - raise_mapped re-raises anything not from AWS
            if error_code(exc) in ("InvalidParameterException", "ClientException") and "not found" in str(exc):
                return  # gone between DescribeTasks and StopTask
            raise_mapped(exc, "ecs:StopTask", hints=HINTS)

    def find_launch(self, cluster: Cluster[ECSOptions], launch_id: str) -> list[str]:
        live = [t for t in self._launched(cluster, started_by(cluster, launch_id))
                if self._status(t) != WorkerStatus.STOPPED]
        return [t["taskArn"] for t in sorted(live, key=lambda t: t["taskArn"])
                for _ in range(self.tagged_workers(cluster, tag_dict(t.get("tags"))))]

    def list_workers(self, cluster: Cluster[ECSOptions]) -> dict[str, int]:
        arns = self._list(cluster, desired="RUNNING")
        return self._listed(cluster, arns, {t["taskArn"]: t for t in self._describe(cluster, arns)})

    def observe(self, cluster: Cluster[ECSOptions], handles: Sequence[str]) -> Observation:
        """One ListTasks and one DescribeTasks (per 100 tasks) for the listing and every status:
        the handles asked and the listed tasks are described together. A task stopped with
        stopCode SpotInterruption is interrupted (Cause.FARGATE_SPOT)."""
        arns = self._list(cluster, desired="RUNNING")
        asked = list(dict.fromkeys(handles))
        tasks = {t["taskArn"]: t for t in self._describe(
            cluster, dict.fromkeys([*(h for h in asked if _is_task_arn(h)), *arns]))}
        listed = self._listed(cluster, arns, tasks)
        status = {h: self._status(tasks.get(h)) for h in dict.fromkeys([*asked, *listed])}
        return Observation(listed, status,
                           {h: Cause.FARGATE_SPOT for h in status if interrupted(tasks.get(h))})

    def _listed(self, cluster: Cluster[ECSOptions], arns: Iterable[str],
                tasks: dict[str, dict[str, Any]]) -> dict[str, int]:
        """Of the listed `arns`, the live tasks of this fleet, cluster and pool, with their
        worker counts (`tasks`: what DescribeTasks said, by ARN)."""
        out: dict[str, int] = {}
        for arn in arns:
            task = tasks.get(arn)
            if task is not None and in_pool(task, cluster) and self._status(task) != WorkerStatus.STOPPED:
                out[arn] = self.tagged_workers(cluster, tag_dict(task.get("tags")))
        return out

    # -- listing ---------------------------------------------------------------------------
    def _launched(self, cluster: Cluster[ECSOptions], marker: str) -> list[dict[str, Any]]:
        """Every task (running or stopped) of this fleet, cluster and pool that a launch started
        (found by its `startedBy` marker), with tags."""
        arns = self._list(cluster, desired="RUNNING", started=marker) + self._list(cluster, desired="STOPPED",
                                                                                  started=marker)
        return [t for t in self._describe(cluster, list(dict.fromkeys(arns))) if in_pool(t, cluster)]

    def _list(self, cluster: Cluster[ECSOptions], *, desired: str, started: str | None = None) -> list[str]:
        kwargs: dict[str, Any] = {"cluster": cluster.options.cluster, "desiredStatus": desired}
        if started:
            kwargs["startedBy"] = started
        arns: list[str] = []
        with aws_errors("ecs:ListTasks", hints=HINTS):
            for page in self.client(cluster).get_paginator("list_tasks").paginate(**kwargs):
                arns.extend(page.get("taskArns", []))
                progress()  # call_timeout bounds each page, not the listing of the whole fleet
        return arns

    def _describe(self, cluster: Cluster[ECSOptions], arns: Iterable[str]) -> list[dict[str, Any]]:
        """DescribeTasks (with tags) in chunks of 100; tasks ECS does not know are left out."""
        arns = list(arns)
        tasks: list[dict[str, Any]] = []
        for chunk in chunks(arns, PER_DESCRIBE):
            with aws_errors("ecs:DescribeTasks", hints=HINTS):
                resp = self.client(cluster).describe_tasks(cluster=cluster.options.cluster, tasks=list(chunk),
                                                           include=["TAGS"])
            wanted = set(chunk)
            tasks.extend(t for t in resp.get("tasks", []) if t.get("taskArn") in wanted)
            progress()
        return tasks
