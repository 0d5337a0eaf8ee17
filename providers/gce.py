"""Google Compute Engine: one VM per handle, through google-cloud-compute's REST transport.

Options (`provider_options`):

* `project`, `zone` (required): where instances live.
* `source_image` (required): boot image, e.g. `projects/cos-cloud/global/images/family/cos-stable`
  (an image with Docker when `container.image` is set).
* `machine_type`: an explicit machine type; otherwise the cheapest type of `catalogue` (a list of
  `fleet.catalogue.InstanceType`, default: a built-in list of e2/n2 types with dated prices, providers.gce_prices)
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

Parts: the options (`providers.gce_options`), what an instance is made of and how it reads
(`providers.gce_instances`), the Compute API calls (`providers.gce_ops`) and the mapping of its
failures to typed errors (`providers.gce_errors`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from fleet.catalogue import cheapest_fit, type_price
from fleet.errors import PermanentProviderError, ProviderError, RateLimited, TransientProviderError
from fleet.inputs import worker_count
from fleet.provider import (
    Cause,
    Cluster,
    ContainerSpec,
    Hardware,
    Observation,
    Provider,
    ProviderContext,
    Quote,
    WorkerStatus,
    import_sdk,
)
from fleet.secrets import GCP_SCHEMES
from providers import gce_prices
from providers.gce_errors import is_done, operation_error
from providers.gce_instances import (
    LABEL_LAUNCH,
    LABEL_WORKERS,
    METADATA_NAME,
    cluster_labels,
    instance_name,
    instance_status,
    label_value,
    labelled,
    may_be_preempted,
    pool_labels,
    properties,
    request_id,
)
from providers.gce_ops import ComputeApi
from providers.gce_options import DEFAULT_CATALOGUE, GCEOptions

#: what this module gave before its parts moved out (tests, entry points and users import them from here)
__all__ = ["DEFAULT_CATALOGUE", "METADATA_NAME", "GCEOptions", "GCEProvider", "instance_name", "label_value",
           "request_id"]

log = logging.getLogger(__name__)

#: the zone operation GCE records when it preempts a Spot or preemptible VM
PREEMPTED = "compute.instances.preempted"
#: instances one bulkInsert creates at most
BULK_MAX = 1000


class GCEProvider(Provider[GCEOptions]):
    options_model = GCEOptions
    secret_schemes = GCP_SCHEMES  # read at boot with the VM's service account (boot_secrets.gcp_fetches)
    first_check = 15.0  # an instance is provisioning, then staging, for 10-30 s
    listing_grace = 5.0
    call_timeout = 150.0  # a launch waits up to operation_timeout (60 s) plus api_core retries

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        self._api = ComputeApi()

    # -- prices ----------------------------------------------------------------------------
    @classmethod
    def price_keys(cls, options: BaseModel | None) -> frozenset[str]:
        """Every machine type of the price table, and of `options`' catalogue and machine_type."""
        names = {t for table in gce_prices.ON_DEMAND.values() for t in table} | {t.name for t in DEFAULT_CATALOGUE}
        if isinstance(options, GCEOptions):
            names |= {t.name for t in options.catalogue} | ({options.machine_type} if options.machine_type else set())
        return frozenset(names)

    def prices(self, cluster: Cluster[GCEOptions], hardware: Hardware) -> list[Quote]:
        """The machine type a launch uses, in the zone's region: the dated table's price
        (`gce_prices`; spot and preemptible VMs at its spot estimate), else the catalogue
        entry's. Calls no API."""
        opts = cluster.options
        machine_type = opts.machine_type or cheapest_fit(opts.catalogue, hardware, cluster.excluded_types).name
        region = opts.zone.rsplit("-", 1)[0]
        spot = opts.market != "standard"
        price = type_price(machine_type, "spot" if spot else "on-demand",
                           table=gce_prices.price(region, machine_type, spot), as_of=gce_prices.AS_OF, region=region,
                           catalogue=opts.catalogue, builtin=DEFAULT_CATALOGUE, reference=gce_prices.REFERENCE_REGION)
        return [Quote(machine_type, region, price)] if price is not None else []

    # -- the contract ----------------------------------------------------------------------
    def run_workers(self, cluster: Cluster[GCEOptions], container: ContainerSpec, hardware: Hardware, count: int,
                    *, launch_id: str) -> list[str]:
        opts = cluster.options
        machine_type = opts.machine_type or cheapest_fit(opts.catalogue, hardware, cluster.excluded_types).name
        gpus = next((t.gpus for t in opts.catalogue if t.name == machine_type), 0)
        compute, _, _ = self._api.sdk(opts)
        sizes = cluster.containers_for(count)
        names = [instance_name(launch_id, i) for i in range(len(sizes))]
        # what an earlier attempt of this launch made (none on a first attempt: no look-up)
        existing = set() if cluster.first_attempt else {
            i.name for i in self._api.list_instances(opts, **cluster_labels(cluster), **pool_labels(cluster),
                                       **{LABEL_LAUNCH: label_value(launch_id)})}
        launched = set(existing)
        groups: dict[int, list[str]] = {}  # container size -> names still to make
        for name, size in zip(names, sizes, strict=True):
            if name not in existing:
                groups.setdefault(size, []).append(name)
        ops: dict[str, tuple[list[str], Any]] = {}
        failure: ProviderError | None = None
        for size, group in groups.items():
            props = properties(compute, cluster, container, machine_type, gpus, size, launch_id)
            try:
                made, op = self._api.bulk_insert(cluster, props, launch_id, group, machine_type)
            except ProviderError as exc:
                failure = exc
                break  # quota, capacity, throttling, bad config: the next call would fail alike
            launched |= made
            if op is not None:
                ops[op.name] = ([n for n in group if n not in made], op)
        done = self._api.wait(opts, {key: op for key, (_, op) in ops.items()},
                              time.monotonic() + opts.operation_timeout)
        for key, op in done.items():
            error = operation_error(op, opts, machine_type)
            if error is not None:
                ops.pop(key)
                failure = failure or error
        for group, _ in ops.values():  # accepted, and done or still going: eventual consistency covers the rest
            launched |= set(group)
        if failure is not None and (not launched or isinstance(failure, (RateLimited, TransientProviderError))):
            raise failure  # a retry with this launch id resumes where this call stopped
        return [h for name, size in zip(names, sizes, strict=True) if name in launched for h in [name] * size]

    def worker_status(self, cluster: Cluster[GCEOptions], handles: Sequence[str]) -> dict[str, WorkerStatus]:
        opts = cluster.options
        if not handles:
            return {}
        seen = {i.name: instance_status(i) for i in self._api.list_instances(opts, **cluster_labels(cluster))}
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
        _, instances, _ = self._api.sdk(opts)
        not_found = import_sdk("google.api_core.exceptions", "gce").NotFound
        ours = {i.name for i in self._api.list_instances(opts, **cluster_labels(cluster))}
        result: dict[str, bool | WorkerStatus] = dict.fromkeys(handles, WorkerStatus.STOPPED)
        for h in dict.fromkeys(handles):
            if h not in ours:
                continue
            try:
                op = self._api.call(opts, instances.delete_unary, project=opts.project, zone=opts.zone,
                                instance=h, allow=(404,))
            except not_found:
                continue  # gone between the list and the delete
            errors = list(op.error.errors) if is_done(op) and op.error else []
            result[h] = not errors or all("NOT_FOUND" in e.code for e in errors)
        return result

    def observe(self, cluster: Cluster[GCEOptions], handles: Sequence[str]) -> Observation:
        """The listing (this pool's live instances) and every status from one list of the
        cluster; plus, only when an asked Spot or preemptible VM looks stopped, one list of the
        zone's preemptions, which says which of them GCE preempted."""
        opts = cluster.options
        found = {i.name: i for i in self._api.list_instances(opts, **cluster_labels(cluster))}
        pool = pool_labels(cluster)
        listed = {name: self._workers(cluster, i) for name, i in found.items()
                  if instance_status(i) is not WorkerStatus.STOPPED and labelled(i, pool)}
        status = {h: instance_status(found.get(h)) for h in dict.fromkeys([*handles, *listed])}
        suspects = [h for h in dict.fromkeys(handles) if may_be_preempted(found.get(h), opts)]
        return Observation(listed, status, dict.fromkeys(self._preempted(cluster, suspects), Cause.PREEMPTED))

    def _preempted(self, cluster: Cluster[GCEOptions], names: Sequence[str]) -> list[str]:
        """Which of the instances `names` GCE preempted: one filtered list of the zone's
        `compute.instances.preempted` operations (none when `names` is empty), each judged on its
        own. A refusal (permission) or a list that cannot be read is logged and answers none: the
        statuses stand without it (a preempted VM then counts as stopped, and is replaced)."""
        opts = cluster.options
        if not names:
            return []
        compute, _, operations = self._api.sdk(opts)
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
            ops = self._api.call(opts, read, request=request)
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
        found = self._api.list_instances(opts, **cluster_labels(cluster), **pool_labels(cluster),
                           **{LABEL_LAUNCH: label_value(launch_id)})
        return [i.name for i in sorted(found, key=lambda i: i.name) for _ in range(self._workers(cluster, i))]

    def list_workers(self, cluster: Cluster[GCEOptions]) -> dict[str, int]:
        opts = cluster.options
        found = self._api.list_instances(opts, **cluster_labels(cluster), **pool_labels(cluster))
        return {i.name: self._workers(cluster, i) for i in found if instance_status(i) is not WorkerStatus.STOPPED}

    def _workers(self, cluster: Cluster[GCEOptions], instance: Any) -> int:
        """An instance's worker count by its label (absent: 1); anything but a count (anyone
        allowed to label it may have) is counted as unreadable and taken as 1 (fleet.inputs)."""
        count = worker_count(dict(instance.labels).get(LABEL_WORKERS))
        if count is None:
            self.unreadable(cluster, "gce:labels", f"{LABEL_WORKERS} is not a worker count")
            return 1
        return count
