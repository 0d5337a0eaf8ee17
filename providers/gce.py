"""Google Compute Engine: one VM per handle, through google-cloud-compute's REST transport.

Options (`provider_options`):

* `project`, `zone` (required): where instances live.
* `source_image` (required): boot image, e.g. `projects/cos-cloud/global/images/family/cos-stable`
  (an image with Docker when `container.image` is set).
* `machine_type`: an explicit machine type; otherwise the cheapest type of `catalogue` (a list of
  `fleet.catalogue.InstanceType`, default: a built-in list of e2/n2 types with relative prices)
  that fits the cluster's `hardware` (one container = one VM).
* `network` (default `global/networks/default`), `subnetwork`, `external_ip` (default true),
  `service_account_email` + `scopes`, `disk_size_gb`.
* `market`: `standard` (default), `spot` (Spot VMs, deleted when preempted) or `preemptible`.
  The older booleans `spot = true` / `preemptible = true` mean the same; a setting that
  contradicts `market` is refused.
* `api_endpoint`: another Compute endpoint, scheme included (tests: `http://127.0.0.1:PORT`).
* `anonymous`: use anonymous credentials (only for a local fake server). Otherwise credentials
  come from application default credentials (the SDK's chain), never from options.
* `page_size` (list page size), `operation_timeout` (the bounded wait for the bulkInsert
  operations of a launch, seconds; deletes are not waited for), `retry_deadline` (how long
  api_core retries transient errors, seconds).

Identity: the instance name is the handle, `fleet-<launch id>-<index>` (deterministic, so a
retried launch finds its instances by name). Labels `fleet-id`, `fleet-cluster`, `fleet-launch`
and `fleet-workers` mark every instance, and `fleet-pool` when `Cluster.pool` is not "" (values
lowercased and hashed when GCE would refuse them). The `startup-script` metadata exports
FLEET_ID, FLEET_CLUSTER, FLEET_WORKERS, FLEET_LAUNCH_ID (FLEET_POOL with a pool) and the
container's env, and FLEET_HANDLE (the VM's name, read from the metadata server), runs the
worker (`docker run --network host` of `container.image`, or the command itself, `${VAR}`
expanded) and then `shutdown -h now`: a worker that exits stops its VM
(TERMINATED counts as stopped and `kill_workers` deletes it), so a dead control plane leaks no
running VMs. No secrets go into metadata: `container.secrets` takes `gcp:projects/P/secrets/S/
versions/V` references, which the startup script reads at boot with the VM's service account
(`service_account_email`, allowed secretmanager.versions.access) through a metadata-server token
and Secret Manager's REST API (`providers.boot_secrets`); a VM that cannot read one powers off.

Calls: a launch is one `bulkInsert` per container size (every full container, and at most one
partial one), naming each instance (`perInstanceProperties`), with a `requestId` derived from the
launch and the names, and one wait for its operation. A 409 "already exists" of our own instance
is adopted and the rest inserted again. On any attempt but a launch's first
(`Cluster.first_attempt`) one list by the launch label first finds what an earlier attempt made.
A kill is one delete per instance (GCE has no bulk delete), not waited one by one: Fleet reads
their effect back in one list.

Pools: `list_workers`, `find_launch` and the listing of `observe` see only the instances labelled
with the pool (pool "": every instance of the cluster). `worker_status`, `kill_workers` and the
statuses of `observe` come from one list of the whole cluster, whatever the pool: a handle's
state does not depend on the pool the caller thinks it is in.

Preemption: a Spot or preemptible VM that `observe` is asked about and finds STOPPING or
TERMINATED (or, for a Spot VM, which GCE deletes when it preempts it, no longer finds) may have
been preempted, or its worker may have exited and powered it off. Only then, one list of the
zone's `compute.instances.preempted` operations tells which: those are in
`Observation.interrupted` with `Cause.PREEMPTED` (their status stays STOPPED). A sweep that finds
no such VM makes no extra call.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shlex
import string
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleet.catalogue import InstanceType, cheapest_fit
from fleet.deadline import progress
from fleet.errors import (
    CapacityError,
    PermanentProviderError,
    ProviderError,
    QuotaExceeded,
    RateLimited,
    TransientProviderError,
)
from fleet.inputs import worker_count
from fleet.provider import (
    Cause,
    Cluster,
    ContainerSpec,
    Hardware,
    Observation,
    Provider,
    ProviderContext,
    WorkerStatus,
    import_sdk,
)
from fleet.secrets import GCP_SCHEMES
from providers.boot_secrets import gcp_fetches

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Relative on-demand prices (us-central1, USD/hour, rounded): only their order matters.
DEFAULT_CATALOGUE: tuple[InstanceType, ...] = tuple(
    InstanceType(name=n, cpu=c, memory_mb=m, price=p) for n, c, m, p in (
        ("e2-micro", 0.25, 1024, 0.0084), ("e2-small", 0.5, 2048, 0.0168), ("e2-medium", 1, 4096, 0.0335),
        ("e2-highcpu-2", 2, 2048, 0.0495), ("e2-standard-2", 2, 8192, 0.0670), ("e2-highmem-2", 2, 16384, 0.0904),
        ("e2-highcpu-4", 4, 4096, 0.0990), ("e2-standard-4", 4, 16384, 0.1340), ("e2-highmem-4", 4, 32768, 0.1808),
        ("e2-highcpu-8", 8, 8192, 0.1980), ("e2-standard-8", 8, 32768, 0.2681), ("e2-highmem-8", 8, 65536, 0.3616),
        ("e2-standard-16", 16, 65536, 0.5362), ("e2-standard-32", 32, 131072, 1.0723),
        ("n2-standard-2", 2, 8192, 0.0971), ("n2-standard-4", 4, 16384, 0.1942), ("n2-standard-8", 8, 32768, 0.3885),
        ("n2-standard-16", 16, 65536, 0.7769), ("n2-standard-32", 32, 131072, 1.5539),
        ("n2-standard-64", 64, 262144, 3.1078), ("n2-highmem-64", 64, 524288, 4.1920),
    )
) + (InstanceType(name="a2-highgpu-1g", cpu=12, memory_mb=87040, gpus=1, price=3.6731),)

LABEL_ID, LABEL_CLUSTER, LABEL_LAUNCH, LABEL_WORKERS = "fleet-id", "fleet-cluster", "fleet-launch", "fleet-workers"
LABEL_POOL = "fleet-pool"
#: the zone operation GCE records when it preempts a Spot or preemptible VM
PREEMPTED = "compute.instances.preempted"
#: statuses of a VM that is being (or was) stopped: by its worker's shutdown, or by a preemption
_STOPPING = ("STOPPING", "TERMINATED")
_STATUS = {"PROVISIONING": WorkerStatus.INITIALIZING, "STAGING": WorkerStatus.INITIALIZING,
           "RUNNING": WorkerStatus.RUNNING}  # everything else (STOPPING, TERMINATED, ...) is stopped
_RATE_REASONS = {"ratelimitexceeded", "userratelimitexceeded", "rate_limit_exceeded"}
MAX_REQUEST_HOPS = 4
#: instances one bulkInsert creates at most
BULK_MAX = 1000
_CAPACITY_CODES = ("ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS")


class GCEOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str = Field(min_length=1, description="Google Cloud project id")
    zone: str = Field(min_length=1, description="zone of the instances, e.g. europe-west1-b")
    source_image: str = Field(min_length=1,
                              description="boot image, e.g. projects/debian-cloud/global/images/family/debian-12")
    machine_type: str | None = Field(default=None, min_length=1,
                                     description="explicit machine type; else chosen from catalogue")
    catalogue: tuple[InstanceType, ...] = Field(default=DEFAULT_CATALOGUE, min_length=1,
                                                description="machine types to choose the cheapest fitting one from")
    network: str = Field(default="global/networks/default", min_length=1, description="VPC network")
    subnetwork: str | None = Field(default=None, description="subnetwork (regions/R/subnetworks/S)")
    external_ip: bool = Field(default=True, description="give each VM an ephemeral external IP")
    service_account_email: str | None = Field(default=None, description="service account the VMs run as")
    scopes: tuple[str, ...] = Field(default=("https://www.googleapis.com/auth/cloud-platform",),
                                    description="OAuth scopes of the service account")
    disk_size_gb: int = Field(default=20, ge=10, le=65536, description="boot disk size")
    market: Literal["standard", "spot", "preemptible"] = Field(
        default="standard", description="standard, spot (Spot VMs, deleted when preempted) or preemptible VMs")
    preemptible: bool = Field(default=False, description="preemptible VMs (market = preemptible)")
    spot: bool = Field(default=False, description="Spot VMs (market = spot)")
    api_endpoint: str | None = Field(default=None, pattern=r"^https?://",
                                     description="Compute API endpoint, scheme included")
    anonymous: bool = Field(default=False, description="anonymous credentials: only for a local fake server")
    page_size: int = Field(default=500, ge=1, le=500, description="instances per list page")
    operation_timeout: float = Field(default=60.0, ge=0, le=3600, description="bounded wait for operations, seconds")
    retry_deadline: float = Field(default=30.0, ge=0, le=600,
                                  description="api_core retry deadline for transient errors, seconds")

    @model_validator(mode="after")
    def _one_provisioning_model(self) -> GCEOptions:
        """`spot` / `preemptible` are the older spelling of `market`: the result's `market` says
        which provisioning model to use, and a contradiction is an error."""
        if self.preemptible and self.spot:
            raise ValueError("spot and preemptible: choose one")
        flagged = "spot" if self.spot else "preemptible" if self.preemptible else None
        if flagged is None or self.market == flagged:
            return self
        if "market" in self.model_fields_set:
            raise ValueError(f"{flagged} = true contradicts market = {self.market!r}: set market alone")
        return self.model_copy(update={"market": flagged})


def label_value(text: str) -> str:
    """`text` as a valid label value (lowercase, digits, `_-`, <= 63 chars); hashed if it must change."""
    if re.fullmatch(r"[a-z0-9_-]{0,63}", text):
        return text
    clean = re.sub(r"[^a-z0-9_-]", "-", text.lower())[:50]
    return f"{clean}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def instance_name(launch_id: str, index: int) -> str:
    """The deterministic instance name (= handle) of container `index` of a launch."""
    slug = launch_id if re.fullmatch(r"[a-z0-9]{1,20}|[0-9a-f]{21,}", launch_id) else \
        hashlib.sha256(launch_id.encode()).hexdigest()
    return f"fleet-{slug[:20]}-{index}"


def request_id(launch_id: str, names: Sequence[str], zone: str) -> str:
    """The bulkInsert `requestId`: a UUID fixed by launch id, the instance names and the zone."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"fleet-gce:{zone}:{launch_id}:{','.join(names)}"))


METADATA_NAME = "http://metadata.google.internal/computeMetadata/v1/instance/name"
_HANDLE_REF = re.compile(r"\$\{FLEET_HANDLE\}|\$FLEET_HANDLE(?![A-Za-z0-9_])")


def _shell_word(arg: str) -> str:
    """`arg` quoted for the shell, except that ${FLEET_HANDLE} in it stays a (quoted) expansion:
    the handle is known only on the VM, which reads its name from the metadata server."""
    pieces = _HANDLE_REF.split(arg)
    return '"${FLEET_HANDLE}"'.join(shlex.quote(p) if p else "" for p in pieces) or "''"


def startup_script(container: ContainerSpec, env: dict[str, str]) -> str:
    """The VM's startup script: export identity + env, read the secrets, run the worker, power
    off when it exits. `env` holds everything but FLEET_HANDLE, which every VM of one bulkInsert
    sets for itself."""
    argv = [string.Template(arg).safe_substitute(env) for arg in container.command]
    lines = ["#!/bin/bash", "# Generated by Fleet: runs one worker container, then powers the VM off.", "cd /"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    lines += gcp_fetches(container.secrets)
    lines += [f'FLEET_HANDLE="$(curl -fsS -m 10 -H "Metadata-Flavor: Google" {METADATA_NAME})"',
              "export FLEET_HANDLE"]
    if container.image:
        passed = " ".join(f"-e {k}" for k in [*env, *container.secrets, "FLEET_HANDLE"])
        run = f"docker run --rm --network host --name fleet-worker {passed} {shlex.quote(container.image)} "
    else:
        run = ""
    lines += [run + " ".join(_shell_word(a) for a in argv),
              'echo "fleet worker exited with status $?; powering off"',
              "shutdown -h now", ""]
    return "\n".join(lines)


class GCEProvider(Provider[GCEOptions]):
    options_model = GCEOptions
    secret_schemes = GCP_SCHEMES  # read at boot with the VM's service account (boot_secrets.gcp_fetches)
    first_check = 15.0  # an instance is provisioning, then staging, for 10-30 s
    listing_grace = 5.0
    call_timeout = 150.0  # a launch waits up to operation_timeout (60 s) plus api_core retries

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        self._clients: dict[tuple[str | None, bool], tuple[Any, Any]] = {}

    # -- SDK plumbing ----------------------------------------------------------------------
    def _sdk(self, opts: GCEOptions) -> tuple[Any, Any, Any]:
        """(compute_v1, instances client, zone operations client), built once per endpoint."""
        compute = import_sdk("google.cloud.compute_v1", "gce")
        key = (opts.api_endpoint, opts.anonymous)
        if key not in self._clients:
            kwargs: dict[str, Any] = {"transport": "rest"}
            if opts.api_endpoint:
                kwargs["client_options"] = {"api_endpoint": opts.api_endpoint}
            if opts.anonymous:
                kwargs["credentials"] = import_sdk("google.auth.credentials", "gce").AnonymousCredentials()
            try:
                self._clients[key] = (compute.InstancesClient(**kwargs), compute.ZoneOperationsClient(**kwargs))
            except Exception as exc:  # DefaultCredentialsError and friends
                raise PermanentProviderError(
                    "no Google credentials: run `gcloud auth application-default login`, set "
                    "GOOGLE_APPLICATION_CREDENTIALS, or run on a VM with a service account", str(exc)) from exc
        return (compute, *self._clients[key])

    def _call(self, opts: GCEOptions, fn: Callable[..., T], *args: Any, allow: tuple[int, ...] = (),
              machine_type: str | None = None, **kwargs: Any) -> T:
        """Call the SDK with api_core's retry on transient errors (bounded by `retry_deadline`);
        map what escapes to typed errors, except HTTP codes in `allow`, which are re-raised as is."""
        retry = import_sdk("google.api_core.retry", "gce").Retry(
            predicate=_transient, initial=0.2, maximum=5.0, multiplier=2.0, timeout=opts.retry_deadline)
        try:
            return fn(*args, retry=retry, timeout=max(opts.retry_deadline, 10.0), **kwargs)
        except Exception as exc:
            if _code(exc) in allow:
                raise
            raise map_error(exc, opts, machine_type) from exc

    def _list(self, opts: GCEOptions, **labels: str) -> list[Any]:
        """Every instance carrying `labels`, through one filtered list (the pager follows pages)."""
        compute, instances, _ = self._sdk(opts)
        flt = " AND ".join(f'labels.{k} = "{v}"' for k, v in labels.items())
        request = compute.ListInstancesRequest(project=opts.project, zone=opts.zone, filter=flt,
                                               max_results=opts.page_size)
        return self._call(opts, lambda **kw: list(_paced(instances.list(**kw))), request=request)

    def _ours(self, cluster: Cluster[GCEOptions]) -> dict[str, str]:
        """The labels of every instance of this fleet and cluster, whatever its pool."""
        return {LABEL_ID: label_value(cluster.fleet_id), LABEL_CLUSTER: label_value(cluster.name)}

    @staticmethod
    def _pool(cluster: Cluster[GCEOptions]) -> dict[str, str]:
        """The pool label of `cluster.pool`'s instances ({} for pool "": no label, no filter)."""
        return {LABEL_POOL: label_value(cluster.pool)} if cluster.pool else {}

    def _wait(self, opts: GCEOptions, ops: dict[str, Any], deadline: float) -> dict[str, Any]:
        """Wait (bounded by `deadline`) for operations keyed by name; the DONE ones, by key."""
        _, _, operations = self._sdk(opts)
        done: dict[str, Any] = {}
        for key, op in ops.items():
            while op is not None and not _done(op):
                left = deadline - time.monotonic()
                if left <= 0:
                    op = None
                    break
                try:
                    op = operations.wait(project=opts.project, zone=opts.zone, operation=op.name,
                                         timeout=max(left, 1.0))
                except Exception:  # noqa: BLE001 - an unfinished wait is not an error: the operation goes on
                    op = None
            if op is not None:
                done[key] = op
        return done

    # -- the contract ----------------------------------------------------------------------
    def run_workers(self, cluster: Cluster[GCEOptions], container: ContainerSpec, hardware: Hardware, count: int,
                    *, launch_id: str) -> list[str]:
        opts = cluster.options
        machine_type = opts.machine_type or cheapest_fit(opts.catalogue, hardware, cluster.excluded_types).name
        gpus = next((t.gpus for t in opts.catalogue if t.name == machine_type), 0)
        compute, _, _ = self._sdk(opts)
        sizes = cluster.containers_for(count)
        names = [instance_name(launch_id, i) for i in range(len(sizes))]
        # what an earlier attempt of this launch made (none on a first attempt: no look-up)
        existing = set() if cluster.first_attempt else {
            i.name for i in self._list(opts, **self._ours(cluster), **self._pool(cluster),
                                       **{LABEL_LAUNCH: label_value(launch_id)})}
        launched = set(existing)
        groups: dict[int, list[str]] = {}  # container size -> names still to make
        for name, size in zip(names, sizes, strict=True):
            if name not in existing:
                groups.setdefault(size, []).append(name)
        ops: dict[str, tuple[list[str], Any]] = {}
        failure: ProviderError | None = None
        for size, group in groups.items():
            props = self._properties(compute, opts, cluster, container, machine_type, gpus, size, launch_id)
            try:
                made, op = self._bulk_insert(opts, cluster, props, launch_id, group, machine_type)
            except ProviderError as exc:
                failure = exc
                break  # quota, capacity, throttling, bad config: the next call would fail alike
            launched |= made
            if op is not None:
                ops[op.name] = ([n for n in group if n not in made], op)
        done = self._wait(opts, {key: op for key, (_, op) in ops.items()}, time.monotonic() + opts.operation_timeout)
        for key, op in done.items():
            error = _operation_error(op, opts, machine_type)
            if error is not None:
                ops.pop(key)
                failure = failure or error
        for group, _ in ops.values():  # accepted, and done or still going: eventual consistency covers the rest
            launched |= set(group)
        if failure is not None and (not launched or isinstance(failure, (RateLimited, TransientProviderError))):
            raise failure  # a retry with this launch id resumes where this call stopped
        return [h for name, size in zip(names, sizes, strict=True) if name in launched for h in [name] * size]

    def _bulk_insert(self, opts: GCEOptions, cluster: Cluster[GCEOptions], props: Any, launch_id: str,
                     names: list[str], machine_type: str) -> tuple[set[str], Any]:
        """One bulkInsert of `names` (all or nothing: `minCount` is their number). A 409 means a
        name is taken: our own instances (an earlier attempt the look-up did not show) are
        adopted and the rest inserted again; a foreign one is refused. Returns (the names found
        made already, the operation of the insert, if any was needed)."""
        api_errors = import_sdk("google.api_core.exceptions", "gce")
        try:
            return set(), self._insert(opts, props, names, request_id(launch_id, names, opts.zone), machine_type)
        except api_errors.Conflict as exc:
            taken = {n for n in names if self._taken(opts, cluster, n, exc)}
            rest = [n for n in names if n not in taken]
            if not rest:
                return taken, None
            try:
                return taken, self._insert(opts, props, rest, request_id(launch_id, rest, opts.zone), machine_type)
            except api_errors.Conflict as again:
                raise TransientProviderError(f"instance names of launch {launch_id} are being taken while it runs",
                                             str(again)) from again

    def _insert(self, opts: GCEOptions, props: Any, names: list[str], rid: str, machine_type: str) -> Any:
        """bulkInsert with request id `rid`; returns the operation (409 Conflict propagates).

        GCE answers a repeated request id with the original operation. When that one failed
        (an insert answered with an operation already DONE with an error is such a replay: a
        fresh insert answers PENDING or RUNNING), the new attempt needs a request id of its own,
        derived from the failed operation, so every delivery of a launch walks the same chain.
        """
        compute, instances, _ = self._sdk(opts)
        resource = compute.BulkInsertInstanceResource(
            count=len(names), min_count=len(names), instance_properties=props,
            per_instance_properties={n: compute.BulkInsertInstanceResourcePerInstanceProperties(name=n) for n in names})
        op = None
        for _ in range(MAX_REQUEST_HOPS):
            request = compute.BulkInsertInstanceRequest(project=opts.project, zone=opts.zone, request_id=rid,
                                                        bulk_insert_instance_resource_resource=resource)
            op = self._call(opts, instances.bulk_insert_unary, request=request, allow=(409,),
                            machine_type=machine_type)
            if not (_done(op) and op.error and op.error.errors):
                return op
            rid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"fleet-gce-retry:{rid}:{op.name}"))
        return op

    def _taken(self, opts: GCEOptions, cluster: Cluster[GCEOptions], name: str, exc: Exception) -> bool:
        """After a 409: whether `name` exists as this fleet's and cluster's instance (adopt it);
        raises if another's instance holds the name."""
        _, instances, _ = self._sdk(opts)
        not_found = import_sdk("google.api_core.exceptions", "gce").NotFound
        try:
            found = self._call(opts, instances.get, project=opts.project, zone=opts.zone, instance=name, allow=(404,))
        except not_found:
            return False
        labels = dict(found.labels)
        if any(labels.get(k) != v for k, v in {**self._ours(cluster), **self._pool(cluster)}.items()):
            raise PermanentProviderError(
                f"instance name {name} in {opts.project}/{opts.zone} is taken by an instance not labelled for "
                f"fleet {cluster.fleet_id!r} cluster {cluster.name!r} pool {cluster.pool!r}: delete or rename it",
                str(exc))
        return True

    def _properties(self, compute: Any, opts: GCEOptions, cluster: Cluster[GCEOptions], container: ContainerSpec,
                    machine_type: str, gpus: int, size: int, launch_id: str) -> Any:
        """What every instance of one bulkInsert shares (all but its name)."""
        identity = {k: v for k, v in cluster.identity_env("", size).items() if k != "FLEET_HANDLE"}
        env = {**container.env, **identity, "FLEET_LAUNCH_ID": launch_id}
        if container.secrets and not opts.service_account_email:
            raise PermanentProviderError(f"cluster {cluster.name!r}: container.secrets are read with the VM's service "
                                         "account: set provider_options.service_account_email")
        nic = compute.NetworkInterface(network=opts.network)
        if opts.subnetwork:
            nic.subnetwork = opts.subnetwork
        if opts.external_ip:
            nic.access_configs = [compute.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")]
        scheduling = compute.Scheduling()
        if opts.market == "spot":
            scheduling = compute.Scheduling(provisioning_model="SPOT", instance_termination_action="DELETE")
        elif opts.market == "preemptible":
            scheduling = compute.Scheduling(preemptible=True, automatic_restart=False, on_host_maintenance="TERMINATE")
        elif gpus:
            scheduling = compute.Scheduling(on_host_maintenance="TERMINATE")
        body = compute.InstanceProperties(
            machine_type=machine_type,
            labels={**self._ours(cluster), **self._pool(cluster), LABEL_LAUNCH: label_value(launch_id),
                    LABEL_WORKERS: str(size)},
            metadata=compute.Metadata(items=[compute.Items(key="startup-script",
                                                           value=startup_script(container, env))]),
            disks=[compute.AttachedDisk(boot=True, auto_delete=True,
                                        initialize_params=compute.AttachedDiskInitializeParams(
                                            source_image=opts.source_image, disk_size_gb=opts.disk_size_gb))],
            network_interfaces=[nic],
            scheduling=scheduling,
        )
        if opts.service_account_email:
            body.service_accounts = [compute.ServiceAccount(email=opts.service_account_email, scopes=list(opts.scopes))]
        return body

    def worker_status(self, cluster: Cluster[GCEOptions], handles: Sequence[str]) -> dict[str, WorkerStatus]:
        opts = cluster.options
        if not handles:
            return {}
        seen = {i.name: _status(i) for i in self._list(opts, **self._ours(cluster))}
        return {h: seen.get(h, WorkerStatus.STOPPED) for h in handles}

    def kill_workers(self, cluster: Cluster[GCEOptions], handles: Sequence[str]) -> dict[str, bool | WorkerStatus]:
        """Delete each handle's instance. Only instances labelled for this fleet and cluster are
        touched (one list finds them); a handle not among them is unknown, so already stopped.
        A delete whose answer is an operation is going away (True: Fleet reads back its effect
        in one list, and sends the kill again while the instance stays); one whose operation is
        already DONE with an error failed (False). A typed error (throttled, refused) propagates
        and Fleet asks again: deletes are idempotent."""
        opts = cluster.options
        if not handles:
            return {}
        _, instances, _ = self._sdk(opts)
        not_found = import_sdk("google.api_core.exceptions", "gce").NotFound
        ours = {i.name for i in self._list(opts, **self._ours(cluster))}
        result: dict[str, bool | WorkerStatus] = dict.fromkeys(handles, WorkerStatus.STOPPED)
        for h in dict.fromkeys(handles):
            if h not in ours:
                continue
            try:
                op = self._call(opts, instances.delete_unary, project=opts.project, zone=opts.zone,
                                instance=h, allow=(404,))
            except not_found:
                continue  # gone between the list and the delete
            errors = list(op.error.errors) if _done(op) and op.error else []
            result[h] = not errors or all("NOT_FOUND" in e.code for e in errors)
        return result

    def observe(self, cluster: Cluster[GCEOptions], handles: Sequence[str]) -> Observation:
        """The listing (this pool's live instances) and every status from one list of the
        cluster; plus, only when an asked Spot or preemptible VM looks stopped, one list of the
        zone's preemptions, which says which of them GCE preempted."""
        opts = cluster.options
        found = {i.name: i for i in self._list(opts, **self._ours(cluster))}
        pool = self._pool(cluster)
        listed = {name: self._workers(cluster, i) for name, i in found.items()
                  if _status(i) is not WorkerStatus.STOPPED and _labelled(i, pool)}
        status = {h: _status(found.get(h)) for h in dict.fromkeys([*handles, *listed])}
        suspects = [h for h in dict.fromkeys(handles) if _may_be_preempted(found.get(h), opts)]
        return Observation(listed, status, dict.fromkeys(self._preempted(cluster, suspects), Cause.PREEMPTED))

    def _preempted(self, cluster: Cluster[GCEOptions], names: Sequence[str]) -> list[str]:
        """Which of the instances `names` GCE preempted: one filtered list of the zone's
        `compute.instances.preempted` operations (none when `names` is empty), each judged on its
        own. A refusal (permission) or a list that cannot be read is logged and answers none: the
        statuses stand without it (a preempted VM then counts as stopped, and is replaced)."""
        opts = cluster.options
        if not names:
            return []
        compute, _, operations = self._sdk(opts)
        request = compute.ListZoneOperationsRequest(project=opts.project, zone=opts.zone,
                                                    filter=f'operationType = "{PREEMPTED}"',
                                                    max_results=opts.page_size)
        parse_error = import_sdk("google.protobuf.json_format", "gce").ParseError

        def read(**kw: Any) -> list[Any] | None:
            try:
                return list(operations.list(**kw))
            except parse_error:  # one operation the SDK cannot parse spoils the whole list
                return None

        try:
            ops = self._call(opts, read, request=request)
        except PermanentProviderError as exc:
            log.warning("cannot list the preemptions of %s/%s (Spot VMs seen stopped count as stopped, not "
                        "preempted): %s", opts.project, opts.zone, exc)
            return []
        if ops is None:
            self.unreadable(cluster, "gce:operations", "the preemption list holds an operation the SDK cannot read")
            return []
        preempted: set[str] = set()
        for op in ops:
            target = getattr(op, "target_link", None)
            if getattr(op, "operation_type", None) != PREEMPTED:
                continue
            if isinstance(target, str) and target.count("/") <= 20 and len(target) <= 2048:
                preempted.add(target.rsplit("/", 1)[-1])
            else:
                self.unreadable(cluster, "gce:operations", "a preemption has no instance link")
        return [n for n in names if n in preempted]

    def launch_batch(self, cluster: Cluster[GCEOptions]) -> int:
        return BULK_MAX

    def find_launch(self, cluster: Cluster[GCEOptions], launch_id: str) -> list[str]:
        opts = cluster.options
        found = self._list(opts, **self._ours(cluster), **self._pool(cluster),
                           **{LABEL_LAUNCH: label_value(launch_id)})
        return [i.name for i in sorted(found, key=lambda i: i.name) for _ in range(self._workers(cluster, i))]

    def list_workers(self, cluster: Cluster[GCEOptions]) -> dict[str, int]:
        opts = cluster.options
        found = self._list(opts, **self._ours(cluster), **self._pool(cluster))
        return {i.name: self._workers(cluster, i) for i in found if _status(i) is not WorkerStatus.STOPPED}

    def _workers(self, cluster: Cluster[GCEOptions], instance: Any) -> int:
        """An instance's worker count by its label (absent: 1); anything but a count (anyone
        allowed to label it may have) is counted as unreadable and taken as 1 (fleet.inputs)."""
        count = worker_count(dict(instance.labels).get(LABEL_WORKERS))
        if count is None:
            self.unreadable(cluster, "gce:labels", f"{LABEL_WORKERS} is not a worker count")
            return 1
        return count


# -- instances -----------------------------------------------------------------------------
def _paced(items: Iterable[Any]) -> Iterator[Any]:
    """`items` (a pager's), telling the call's deadline of each one: it bounds a page, not a
    listing of the whole fleet (fleet.deadline.progress)."""
    for item in items:
        progress()
        yield item


def _status(instance: Any) -> WorkerStatus:
    """Fleet's status of an instance (None: not found, so stopped)."""
    return WorkerStatus.STOPPED if instance is None else _STATUS.get(instance.status, WorkerStatus.STOPPED)


def _labelled(instance: Any, labels: dict[str, str]) -> bool:
    found = dict(instance.labels)
    return all(found.get(k) == v for k, v in labels.items())


def _reclaimable(instance: Any) -> bool:
    """Whether GCE may preempt `instance`: a Spot or a preemptible VM."""
    scheduling = instance.scheduling
    return scheduling.provisioning_model == "SPOT" or bool(scheduling.preemptible)


def _may_be_preempted(instance: Any, opts: GCEOptions) -> bool:
    """Whether an asked handle may be a preempted VM: a Spot or preemptible VM stopping or
    stopped, or, when this cluster launches Spot VMs (GCE deletes them as it preempts them),
    one that is gone."""
    if instance is None:
        return opts.market == "spot"
    return instance.status in _STOPPING and _reclaimable(instance)


# -- errors --------------------------------------------------------------------------------
def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


def _reasons(exc: BaseException) -> set[str]:
    out = {str(getattr(exc, "reason", "") or "").lower()}
    for e in getattr(exc, "errors", None) or ():
        if isinstance(e, dict):
            out.add(str(e.get("reason", "")).lower())
    return out - {""}


def _transient(exc: BaseException) -> bool:
    """What api_core's retry retries: server errors and broken connections, not throttling."""
    code = _code(exc)
    if code is not None:
        return code >= 500
    requests = import_sdk("requests", "gce")
    auth_errors = import_sdk("google.auth.exceptions", "gce")
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                            auth_errors.TransportError, ConnectionError, TimeoutError))


def _retry_after(exc: BaseException, default: float = 10.0) -> float:
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    try:
        value = headers.get("Retry-After")
        return max(float(value), 0.0) if value is not None else default
    except (AttributeError, TypeError, ValueError):
        return default


def map_error(exc: BaseException, opts: GCEOptions, machine_type: str | None) -> ProviderError:
    """A google.api_core / transport exception as one of Fleet's typed errors."""
    if isinstance(exc, ProviderError):
        return exc
    code, reasons, text = _code(exc), _reasons(exc), str(exc)
    cause = text[:500]
    if code == 429 or reasons & _RATE_REASONS:
        return RateLimited(f"the Compute API throttled project {opts.project}", _retry_after(exc), cause)
    if "quotaexceeded" in reasons or "QUOTA_EXCEEDED" in text:
        return QuotaExceeded(f"a Compute Engine quota of project {opts.project} in {opts.zone} is used up", cause)
    if any(c in text for c in _CAPACITY_CODES) or "zone_resource_pool_exhausted" in reasons:
        return CapacityError(f"zone {opts.zone} has no capacity for {machine_type}", machine_type, cause)
    if code == 401:
        return PermanentProviderError(
            "Google credentials were rejected: refresh application default credentials "
            "(gcloud auth application-default login) or GOOGLE_APPLICATION_CREDENTIALS", cause)
    if code == 403:
        return PermanentProviderError(
            f"permission denied in project {opts.project}: grant the credentials roles/compute.instanceAdmin.v1 "
            "(and iam.serviceAccountUser for service_account_email), and enable the Compute Engine API", cause)
    if code == 404:
        return PermanentProviderError(
            f"not found: check provider_options project ({opts.project}), zone ({opts.zone}), source_image, "
            "network and subnetwork", cause)
    if code is not None and 400 <= code < 500:
        return PermanentProviderError(
            "the Compute API refused the request: check provider_options (machine_type, source_image, network, "
            "disk_size_gb, service_account_email)", cause)
    if isinstance(exc, (ValueError, TypeError)) and code is None and not _transient(exc):
        return PermanentProviderError("invalid Compute request: check provider_options", cause)
    return TransientProviderError("the Compute API failed; retry later", cause)


def _done(op: Any) -> bool:
    return getattr(op.status, "name", str(op.status)) == "DONE"


def _operation_error(op: Any, opts: GCEOptions, machine_type: str) -> ProviderError | None:
    """The typed error of a DONE operation that failed, else None."""
    errors = list(op.error.errors) if op.error else []
    if not errors:
        return None
    codes = [e.code for e in errors]
    text = "; ".join(f"{e.code}: {e.message}" for e in errors)[:500]
    if "QUOTA_EXCEEDED" in codes:
        return QuotaExceeded(f"a Compute Engine quota of project {opts.project} in {opts.zone} is used up", text)
    if any(c in _CAPACITY_CODES for c in codes):
        return CapacityError(f"zone {opts.zone} has no capacity for {machine_type}", machine_type, text)
    if any("RATE" in c and "EXCEEDED" in c for c in codes):
        return RateLimited(f"the Compute API throttled project {opts.project}", 10.0, text)
    if any(c in ("RESOURCE_NOT_FOUND", "INVALID_FIELD_VALUE", "PERMISSION_DENIED", "INVALID_USAGE") for c in codes):
        return PermanentProviderError(
            "an instance could not be created: check provider_options (source_image, network, machine_type)", text)
    return TransientProviderError("an instance operation failed; retry later", text)
