"""The `gce` provider's calls to the Compute API through google-cloud-compute (imported only
when first used): one set of clients per endpoint, every call under api_core's retry with its
failure mapped to a typed error (`ComputeApi.call`), filtered lists, bounded waits for
operations, and a launch's bulkInsert with its 409 and replayed-request-id handling."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from fleet.deadline import progress
from fleet.errors import PermanentProviderError, TransientProviderError
from fleet.provider import Cluster, import_sdk
from providers.gce_errors import http_code, is_done, map_error, transient
from providers.gce_instances import cluster_labels, pool_labels, request_id
from providers.gce_options import GCEOptions

T = TypeVar("T")
MAX_REQUEST_HOPS = 4


def paced(items: Iterable[Any]) -> Iterator[Any]:
    """`items` (a pager's), telling the call's deadline of each one: it bounds a page, not a
    listing of the whole fleet (fleet.deadline.progress)."""
    for item in items:
        progress()
        yield item



class ComputeApi:
    """google-cloud-compute's instances and zone operations clients, built once per (endpoint,
    anonymous), and the calls the provider makes through them."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str | None, bool], tuple[Any, Any]] = {}

    def sdk(self, opts: GCEOptions) -> tuple[Any, Any, Any]:
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

    def call(self, opts: GCEOptions, fn: Callable[..., T], *args: Any, allow: tuple[int, ...] = (),
              machine_type: str | None = None, **kwargs: Any) -> T:
        """Call the SDK with api_core's retry on transient errors (bounded by `retry_deadline`);
        map what escapes to typed errors, except HTTP codes in `allow`, which are re-raised as is."""
        retry = import_sdk("google.api_core.retry", "gce").Retry(
            predicate=transient, initial=0.2, maximum=5.0, multiplier=2.0, timeout=opts.retry_deadline)
        try:
            return fn(*args, retry=retry, timeout=max(opts.retry_deadline, 10.0), **kwargs)
        except Exception as exc:
            if http_code(exc) in allow:
                raise
            raise map_error(exc, opts, machine_type) from exc

    def list_instances(self, opts: GCEOptions, **labels: str) -> list[Any]:
        """Every instance carrying `labels`, through one filtered list (the pager follows pages)."""
        compute, instances, _ = self.sdk(opts)
        flt = " AND ".join(f'labels.{k} = "{v}"' for k, v in labels.items())
        request = compute.ListInstancesRequest(project=opts.project, zone=opts.zone, filter=flt,
                                               max_results=opts.page_size)
        return self.call(opts, lambda **kw: list(paced(instances.list(**kw))), request=request)

    def wait(self, opts: GCEOptions, ops: dict[str, Any], deadline: float) -> dict[str, Any]:
        """Wait (bounded by `deadline`) for operations keyed by name; the DONE ones, by key."""
        _, _, operations = self.sdk(opts)
        done: dict[str, Any] = {}
        for key, op in ops.items():
            while op is not None and not is_done(op):
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

    def bulk_insert(self, cluster: Cluster[GCEOptions], props: Any, launch_id: str, names: list[str],
                    machine_type: str) -> tuple[set[str], Any]:
        """One bulkInsert of `names` (all or nothing: `minCount` is their number). A 409 means a
        name is taken: our own instances (an earlier attempt the look-up did not show) are
        adopted and the rest inserted again; a foreign one is refused. Returns (the names found
        made already, the operation of the insert, if any was needed)."""
        opts = cluster.options
        api_errors = import_sdk("google.api_core.exceptions", "gce")
        try:
            return set(), self.insert(opts, props, names, request_id(launch_id, names, opts.zone), machine_type)
        except api_errors.Conflict as exc:
            taken = {n for n in names if self.taken(cluster, n, exc)}
            rest = [n for n in names if n not in taken]
            if not rest:
                return taken, None
            try:
                return taken, self.insert(opts, props, rest, request_id(launch_id, rest, opts.zone), machine_type)
            except api_errors.Conflict as again:
                raise TransientProviderError(f"instance names of launch {launch_id} are being taken while it runs",
                                             str(again)) from again

    def insert(self, opts: GCEOptions, props: Any, names: list[str], rid: str, machine_type: str) -> Any:
        """bulkInsert with request id `rid`; returns the operation (409 Conflict propagates).

        GCE answers a repeated request id with the original operation. When that one failed
        (an insert answered with an operation already DONE with an error is such a replay: a
        fresh insert answers PENDING or RUNNING), the new attempt needs a request id of its own,
        derived from the failed operation, so every delivery of a launch walks the same chain.
        """
        compute, instances, _ = self.sdk(opts)
        resource = compute.BulkInsertInstanceResource(
            count=len(names), min_count=len(names), instance_properties=props,
            per_instance_properties={n: compute.BulkInsertInstanceResourcePerInstanceProperties(name=n) for n in names})
        op = None
        for _ in range(MAX_REQUEST_HOPS):
            request = compute.BulkInsertInstanceRequest(project=opts.project, zone=opts.zone, request_id=rid,
                                                        bulk_insert_instance_resource_resource=resource)
            op = self.call(opts, instances.bulk_insert_unary, request=request, allow=(409,),
                            machine_type=machine_type)
            if not (is_done(op) and op.error and op.error.errors):
                return op
            rid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"fleet-gce-retry:{rid}:{op.name}"))
        return op

    def taken(self, cluster: Cluster[GCEOptions], name: str, exc: Exception) -> bool:
        """After a 409: whether `name` exists as this fleet's and cluster's instance (adopt it);
        raises if another's instance holds the name."""
        opts = cluster.options
        _, instances, _ = self.sdk(opts)
        not_found = import_sdk("google.api_core.exceptions", "gce").NotFound
        try:
            found = self.call(opts, instances.get, project=opts.project, zone=opts.zone, instance=name, allow=(404,))
        except not_found:
            return False
        labels = dict(found.labels)
        if any(labels.get(k) != v for k, v in {**cluster_labels(cluster), **pool_labels(cluster)}.items()):
            raise PermanentProviderError(
                f"instance name {name} in {opts.project}/{opts.zone} is taken by an instance not labelled for "
                f"fleet {cluster.fleet_id!r} cluster {cluster.name!r} pool {cluster.pool!r}: delete or rename it",
                str(exc))
        return True
