"""The `aws_ec2` provider: one EC2 instance per container, `workers_per_container` workers in it.

Options (`provider_options`):
  ami (required)          AMI the instances boot: a Linux with cloud-init, `curl`, and `docker` when
                          `container.image` is set.
  instance_type           an explicit type; default: the cheapest type of `catalogue` that fits the
                          cluster's `hardware` (CPU, memory, GPUs).
  instance_types          explicit types, in order of preference, launched through one EC2 Fleet.
  catalogue               list of {name, cpu, memory_mb, gpus, price}; default: a small built-in list
                          of common types with dated on-demand prices
                          (providers.ec2_prices).
  max_types               catalogue types one launch may use (default 6 with market spot, 1
                          on-demand); more than one: an EC2 Fleet.
  market (on-demand | spot), spot_max_price   the purchasing option; the spot price cap per hour.
  interruption_queue_url, sqs_endpoint_url    the SQS queue EventBridge sends the cluster's spot
                          interruption warnings and rebalance recommendations to.
  subnet_id, security_group_ids, iam_instance_profile (name or ARN), key_name   optional.
  batch_size (100, <= 1000)   instances per RunInstances / CreateFleet call.
  page_size (1000, 5..1000)   DescribeInstances page size.
  region, endpoint_url, retry_mode (standard | adaptive), max_attempts   see providers/_aws.py.

Identity: the handle is the instance id. Instances are tagged at launch with `fleet:id`,
`fleet:cluster`, `fleet:pool` (for a pool other than ""), `fleet:launch`, `fleet:workers`,
`fleet:batch` and `Name`; every describe filters on the fleet id, the cluster and the pool. Their
user data is a shell script that exports `FLEET_ID`, `FLEET_CLUSTER`, `FLEET_POOL`,
`FLEET_WORKERS`, `FLEET_LAUNCH_ID`, the container's `env`, and `FLEET_HANDLE` (the instance id,
read from the instance metadata service with an IMDSv2 token), runs the worker (`docker run` of
`container.image` when one is given, otherwise `container.command` directly) and runs
`shutdown -h now` when it exits; with `InstanceInitiatedShutdownBehavior=terminate` the instance
then goes away, so a dead control plane leaks nothing. Fleet puts no credential in user data
(anyone allowed DescribeInstanceAttribute can read it): do not put secrets in `container.env`;
use `container.secrets` with `ssm:` or `secretsmanager:` references: the user data holds only
the reference and an `aws ssm get-parameter --with-decryption` / `aws secretsmanager
get-secret-value` command that the boot runs with the instance role (`iam_instance_profile`,
allowed ssm:GetParameter / secretsmanager:GetSecretValue and kms:Decrypt; the AMI needs the AWS
CLI); an instance that cannot read a secret powers off.

One type or several: a launch that may use one type (an explicit `instance_type`, or the cheapest
fit when `max_types` is 1) is RunInstances calls, all or nothing each; one that may use several
(`instance_types`, or the `max_types` cheapest fits) is `CreateFleet` calls of type `instant`,
cheapest first (on-demand: `prioritized`; spot: `price-capacity-optimized`), through a launch
template made once per cluster, pool and content (its name holds a hash of what it holds) and
the call's own user data. A fleet may launch fewer instances than asked: those it made are
returned, a `CapacityError` only when it made none.

Idempotency: every RunInstances and CreateFleet call carries a ClientToken derived from the
launch id, the call index and the subnet; and on any attempt but a launch's first
(`Cluster.first_attempt`), the instances tagged with the launch id are looked up (in any state)
and calls already made are adopted, so a retried launch never launches twice, even where
ClientToken is not honoured.

Interruptions: with market spot, `observe` also reads the pool's shutting-down and terminated
instances, and reports those EC2 reclaimed (`Server.SpotInstanceTermination`) in
`Observation.interrupted`; `interruptions` reads EventBridge's warnings from
`interruption_queue_url` (never deleting them: `acknowledge` does).

Calls at the floor: Fleet sizes launches in whole `batch_size` calls (`launch_batch`); a sweep is
one paginated DescribeInstances filtered by the fleet's tags (`observe`: the listing and every
status; never by an id list, which could be empty: that means every instance); a kill is
TerminateInstances alone, its answer giving each instance's state (no describe to confirm).

Parts: the options and the choice of types (`providers.ec2_options`), what a launch call sends
(`providers.ec2_launch`; the loop over a launch's calls is `providers._aws.AwsProvider.launch`,
shared with `aws_ecs`) and spot interruption notices (`providers.ec2_spot`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

from pydantic import BaseModel

from fleet.catalogue import type_price
from fleet.deadline import progress
from fleet.errors import PermanentProviderError
from fleet.pricing import Price
from fleet.provider import (
    Cause,
    Cluster,
    ContainerSpec,
    Hardware,
    Interruption,
    Observation,
    ProviderContext,
    Quote,
    WorkerStatus,
)
from fleet.secrets import AWS_SCHEMES
from providers import ec2_options, ec2_prices
from providers._aws import (
    AwsProvider,
    LaunchCall,
    Made,
    aws_errors,
    chunks,
    error_code,
    map_error,
    raise_mapped,
    tag_dict,
)
from providers.ec2_launch import (
    HINTS,
    TAG_POOL,
    TEMPLATE_GONE,
    LaunchTemplates,
    create_fleet,
    run_instances,
    template_data,
    template_name,
    user_data,
)
from providers.ec2_options import DEFAULT_CATALOGUE, DEFAULT_MAX_TYPES, EC2Options
from providers.ec2_spot import INSTANCE_ID, delete_messages, parse_notice, read_notices, reclaimed

#: what this module gave before its parts moved out (tests, entry points and users import them from here)
__all__ = ["DEFAULT_CATALOGUE", "DEFAULT_MAX_TYPES", "EC2Options", "EC2Provider", "parse_notice", "template_data",
           "template_name", "user_data"]

NOT_FOUND = ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed")
LIVE = ("pending", "running")
#: the states `list_workers` lists: everything that still exists and may run again
LISTED = ("pending", "running", "stopping", "stopped")
#: the states an instance EC2 reclaimed passes through (read by a spot pool's `observe` only)
GOING = ("shutting-down", "terminated")
STATUS = {"pending": WorkerStatus.INITIALIZING, "running": WorkerStatus.RUNNING}  # anything else: stopped


class EC2Provider(AwsProvider[EC2Options]):
    options_model = EC2Options
    first_check = 20.0  # an instance is pending for 10-40 s
    listing_grace = 10.0  # DescribeInstances may not list a fresh instance for a few seconds
    secret_schemes = AWS_SCHEMES  # fetched at boot with the instance role (boot_secrets.aws_fetches)

    service = "ec2"

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        self._templates = LaunchTemplates()
        self._spot = ec2_prices.SpotPrices()

    @staticmethod
    def instance_type(opts: EC2Options, hardware: Hardware, exclude: frozenset[str] = frozenset()) -> str:
        """See `providers.ec2_options.instance_type`."""
        return ec2_options.instance_type(opts, hardware, exclude)

    @staticmethod
    def launch_types(opts: EC2Options, hardware: Hardware, exclude: frozenset[str] = frozenset()) -> list[str]:
        """See `providers.ec2_options.launch_types`."""
        return ec2_options.launch_types(opts, hardware, exclude)

    # -- prices ----------------------------------------------------------------------------
    @classmethod
    def price_keys(cls, options: BaseModel | None) -> frozenset[str]:
        """Every type of the price table, and of `options`' catalogue and explicit types."""
        names = {t for table in ec2_prices.ON_DEMAND.values() for t in table} | {t.name for t in DEFAULT_CATALOGUE}
        if isinstance(options, EC2Options):
            names |= {t.name for t in options.catalogue} | set(options.instance_types or ())
            names |= {options.instance_type} if options.instance_type else set()
        return frozenset(names)

    def prices(self, cluster: Cluster[EC2Options], hardware: Hardware) -> list[Quote]:
        """One quote per type a launch may use (`launch_types`), in the cluster's region: spot
        from DescribeSpotPriceHistory (cached for `ec2_prices.SPOT_TTL`; when it fails or lists
        no price, the on-demand price with a note saying so), on-demand from the dated table
        (`ec2_prices`), else the catalogue entry's price. Makes no other call."""
        opts = cluster.options
        types = self.launch_types(opts, hardware, cluster.excluded_types)
        client = self.client(cluster)  # resolves the region (the SDK chain's when not set)
        region = str(client.meta.region_name)
        spot: dict[str, tuple[float, date]] = {}
        why = ""
        if opts.market == "spot":
            try:
                spot = self._spot.get(client, opts.endpoint_url or "", types)
            except Exception as exc:  # noqa: BLE001 - a price is never worth a failed sweep: say why, fall back
                mapped = map_error(exc, "DescribeSpotPriceHistory")
                said = str(mapped).split(" (cause: ")[0] if mapped is not None else type(exc).__name__
                said = said.removeprefix("DescribeSpotPriceHistory").removeprefix(" failed").lstrip(": ")
                why = f"DescribeSpotPriceHistory failed: {said}"[:300]
        quotes = []
        for t in types:
            if t in spot:
                per_hour, when = spot[t]
                quotes.append(Quote(t, region, Price(per_hour, "DescribeSpotPriceHistory", when, "spot")))
                continue
            note = ""
            if opts.market == "spot":
                note = "on-demand price: " + (why or "DescribeSpotPriceHistory lists no spot price for it")
            price = type_price(t, opts.market, table=ec2_prices.on_demand(region, t), as_of=ec2_prices.AS_OF,
                               region=region, catalogue=opts.catalogue, builtin=DEFAULT_CATALOGUE,
                               reference=ec2_prices.REFERENCE_REGION, note=note)
            if price is not None:
                quotes.append(Quote(t, region, price))
        return quotes

    # -- the contract ----------------------------------------------------------------------
    def run_workers(self, cluster: Cluster[EC2Options], container: ContainerSpec, hardware: Hardware, count: int,
                    *, launch_id: str) -> list[str]:
        """`AwsProvider.launch` in calls of `batch_size` instances; an earlier attempt's calls
        are found by the instances tagged with the launch id, in any state."""
        types = self.launch_types(cluster.options, hardware, cluster.excluded_types)
        return self.launch(
            cluster, container, count, launch_id=launch_id, per_call=cluster.options.batch_size,
            earlier=lambda: [(i["InstanceId"], tag_dict(i.get("Tags"))) for i in self._describe(
                cluster, [{"Name": "tag:fleet:launch", "Values": [launch_id]}])],
            make=lambda call: self._launch(self.client(cluster), cluster, types, call), noun="instances")

    def _launch(self, client: Any, cluster: Cluster[EC2Options], types: Sequence[str], call: LaunchCall) -> Made:
        """One call of a launch: RunInstances for one type, else CreateFleet (its launch template
        made again, once, if someone deleted it)."""
        if len(types) == 1:
            return run_instances(client, cluster, types[0], call)
        template = self._templates.name(client, cluster)
        try:
            return create_fleet(client, cluster, types, template, call)
        except PermanentProviderError as exc:
            if exc.__cause__ is None or error_code(exc.__cause__) not in TEMPLATE_GONE:
                raise
            self._templates.forget(client, cluster, template)
            return create_fleet(client, cluster, types, self._templates.name(client, cluster), call)

    def launch_batch(self, cluster: Cluster[EC2Options]) -> int:
        return cluster.options.batch_size

    def observe(self, cluster: Cluster[EC2Options], handles: Sequence[str]) -> Observation:
        """The listing and every status from one DescribeInstances (all pages). A spot pool's
        describe also reads its instances on their way out, to tell which ones EC2 reclaimed
        (`interrupted`, among the handles asked or listed)."""
        states = [*LISTED, *(GOING if cluster.options.market == "spot" else ())]
        found = self._describe(cluster, [{"Name": "instance-state-name", "Values": states}])
        live = [i for i in found if i["State"]["Name"] in LISTED]
        listed = {i["InstanceId"]: self.tagged_workers(cluster, tag_dict(i.get("Tags"))) for i in live}
        state = {i["InstanceId"]: i["State"]["Name"] for i in found}
        asked = list(dict.fromkeys([*handles, *listed]))
        wanted = set(asked)
        interrupted = {i["InstanceId"]: Cause.SPOT_INTERRUPTION for i in found
                       if i["InstanceId"] in wanted and reclaimed(i)}
        revisions = {i["InstanceId"]: rev for i in live
                     if (rev := self.tagged_revision(cluster, tag_dict(i.get("Tags"))))}
        return Observation(listed, {h: STATUS.get(state.get(h, ""), WorkerStatus.STOPPED) for h in asked},
                           interrupted, revisions)

    def worker_status(self, cluster: Cluster[EC2Options], handles: Sequence[str]) -> dict[str, WorkerStatus]:
        unique = list(dict.fromkeys(handles))
        if not any(INSTANCE_ID.fullmatch(h) for h in unique):
            return dict.fromkeys(unique, WorkerStatus.STOPPED)
        seen = {i["InstanceId"]: i["State"]["Name"]
                for i in self._describe(cluster, [{"Name": "instance-state-name", "Values": list(LIVE)}])}
        return {h: STATUS.get(seen.get(h, ""), WorkerStatus.STOPPED) for h in unique}

    def kill_workers(self, cluster: Cluster[EC2Options], handles: Sequence[str]) -> dict[str, bool | WorkerStatus]:
        """TerminateInstances (1000 ids a call). Its answer gives each instance's state now
        (shutting-down or terminated: stopped), so Fleet needs no DescribeInstances to confirm."""
        unique = list(dict.fromkeys(handles))
        ids = [h for h in unique if INSTANCE_ID.fullmatch(h)]  # anything else cannot exist: dead already
        states: dict[str, str] = {}
        if ids:
            client = self.client(cluster)
            for chunk in chunks(ids, 1000):
                states.update(self._terminate(client, list(chunk)))
        return {h: STATUS.get(states[h], WorkerStatus.STOPPED) if h in states else True if h in ids
                else WorkerStatus.STOPPED for h in unique}

    def _terminate(self, client: Any, ids: list[str]) -> dict[str, str]:
        """TerminateInstances; one unknown id fails the whole call, so split until it is alone.
        Returns the current state of each instance the answer names."""
        try:
            resp = client.terminate_instances(InstanceIds=ids)
        except Exception as exc:  # noqa: BLE001 - raise_mapped re-raises anything not from AWS
            if error_code(exc) not in NOT_FOUND:
                raise_mapped(exc, "ec2:TerminateInstances", hints=HINTS)
            if len(ids) > 1:
                mid = len(ids) // 2
                return {**self._terminate(client, ids[:mid]), **self._terminate(client, ids[mid:])}
            # a single unknown id: never existed or long gone, which is what we wanted
            return {ids[0]: "terminated"}
        return {i["InstanceId"]: str((i.get("CurrentState") or {}).get("Name", ""))
                for i in resp.get("TerminatingInstances", []) if "InstanceId" in i}

    def find_launch(self, cluster: Cluster[EC2Options], launch_id: str) -> list[str]:
        found = self._describe(cluster, [{"Name": "tag:fleet:launch", "Values": [launch_id]},
                                         {"Name": "instance-state-name", "Values": list(LISTED)}])
        return [i["InstanceId"] for i in sorted(found, key=lambda i: i["InstanceId"])
                for _ in range(self.tagged_workers(cluster, tag_dict(i.get("Tags"))))]

    def list_workers(self, cluster: Cluster[EC2Options]) -> dict[str, int]:
        return {i["InstanceId"]: self.tagged_workers(cluster, tag_dict(i.get("Tags")))
                for i in self._describe(cluster, [{"Name": "instance-state-name", "Values": list(LISTED)}])}

    # -- describe --------------------------------------------------------------------------
    def _describe(self, cluster: Cluster[EC2Options], extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every instance tagged with this fleet id, cluster and pool (every pool for pool "") and
        matching the `extra` filters, all pages."""
        opts = cluster.options
        filters = [{"Name": "tag:fleet:id", "Values": [cluster.fleet_id]},
                   {"Name": "tag:fleet:cluster", "Values": [cluster.name]}, *extra]
        if cluster.pool:
            filters.append({"Name": f"tag:{TAG_POOL}", "Values": [cluster.pool]})
        pages = self.client(cluster).get_paginator("describe_instances").paginate(
            Filters=filters, PaginationConfig={"PageSize": opts.page_size})
        instances: list[dict[str, Any]] = []
        with aws_errors("ec2:DescribeInstances", hints=HINTS):
            for page in pages:
                for reservation in page.get("Reservations", []):
                    instances.extend(reservation.get("Instances", []))
                progress()  # call_timeout bounds each page, not the listing of the whole fleet
        return instances

    # -- interruptions ---------------------------------------------------------------------
    def sqs(self, cluster: Cluster[EC2Options]) -> Any:
        """The (cached) SQS client for `cluster`'s interruption queue: EC2's region, credentials
        and retries, at `sqs_endpoint_url` or else `endpoint_url`."""
        opts = cluster.options
        if opts.sqs_endpoint_url:
            opts = opts.model_copy(update={"endpoint_url": opts.sqs_endpoint_url})
        return self._clients.get("sqs", opts)

    def interruptions(self, cluster: Cluster[EC2Options]) -> list[Interruption]:
        """The notices on `interruption_queue_url` (`providers.ec2_spot.read_notices`): spot
        interruption warnings (deadline: the event's time + 2 minutes) and rebalance
        recommendations. They stay on the queue until `acknowledge`."""
        url = cluster.options.interruption_queue_url
        if not url:
            return []
        return read_notices(self.sqs(cluster), url, cluster.name,
                            lambda reason, n: self.unreadable(cluster, "sqs", reason, n))

    def acknowledge(self, cluster: Cluster[EC2Options], notices: Sequence[Interruption]) -> None:
        """Delete the SQS messages of `notices` (`providers.ec2_spot.delete_messages`)."""
        url = cluster.options.interruption_queue_url
        receipts = list(dict.fromkeys(n.receipt for n in notices if n.receipt))
        if url and receipts:
            delete_messages(self.sqs(cluster), url, receipts)
