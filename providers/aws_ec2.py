"""The `aws_ec2` provider: one EC2 instance per container, `workers_per_container` workers in it.

Options (`provider_options`):
  ami (required)          AMI the instances boot: a Linux with cloud-init, `curl`, and `docker` when
                          `container.image` is set.
  instance_type           an explicit type; default: the cheapest type of `catalogue` that fits the
                          cluster's `hardware` (CPU, memory, GPUs).
  instance_types          explicit types, in order of preference, launched through one EC2 Fleet.
  catalogue               list of {name, cpu, memory_mb, gpus, price}; default: a small built-in list
                          of common types with relative on-demand prices.
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
"""

from __future__ import annotations

import base64
import json
import logging
import re
import shlex
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from fleet.catalogue import InstanceType, cheapest_fit, eligible
from fleet.deadline import progress
from fleet.errors import (
    CapacityError,
    PermanentProviderError,
    ProviderError,
    QuotaExceeded,
    TransientProviderError,
)
from fleet.inputs import call_index
from fleet.provider import (
    Cause,
    Cluster,
    ContainerSpec,
    Hardware,
    Interruption,
    Observation,
    ProviderContext,
    WorkerStatus,
)
from fleet.secrets import AWS_SCHEMES
from providers._aws import (
    AwsOptions,
    AwsProvider,
    aws_errors,
    chunks,
    error_code,
    map_code,
    plan_calls,
    raise_mapped,
    tag_dict,
    token,
)
from providers.boot_secrets import aws_fetches

log = logging.getLogger(__name__)

#: Relative on-demand prices (USD per hour, us-east-1, order is what matters).
DEFAULT_CATALOGUE: tuple[InstanceType, ...] = tuple(InstanceType(name=n, cpu=c, memory_mb=m, gpus=g, price=p) for
                                                    n, c, m, g, p in [
    ("t3.micro", 2, 1024, 0, 0.0104), ("t3.small", 2, 2048, 0, 0.0208), ("t3.medium", 2, 4096, 0, 0.0416),
    ("c6i.large", 2, 4096, 0, 0.085), ("m6i.large", 2, 8192, 0, 0.096), ("r6i.large", 2, 16384, 0, 0.126),
    ("c6i.xlarge", 4, 8192, 0, 0.17), ("m6i.xlarge", 4, 16384, 0, 0.192), ("r6i.xlarge", 4, 32768, 0, 0.252),
    ("c6i.2xlarge", 8, 16384, 0, 0.34), ("m6i.2xlarge", 8, 32768, 0, 0.384), ("r6i.2xlarge", 8, 65536, 0, 0.504),
    ("c6i.4xlarge", 16, 32768, 0, 0.68), ("m6i.4xlarge", 16, 65536, 0, 0.768),
    ("c6i.8xlarge", 32, 65536, 0, 1.36), ("m6i.8xlarge", 32, 131072, 0, 1.536),
    ("g4dn.xlarge", 4, 16384, 1, 0.526), ("g4dn.2xlarge", 8, 32768, 1, 0.752),
    ("g4dn.12xlarge", 48, 196608, 4, 3.912),
])

INSTANCE_ID = re.compile(r"i-[0-9a-f]{8}(?:[0-9a-f]{9})?")
NOT_FOUND = ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed")
LIVE = ("pending", "running")
#: the states `list_workers` lists: everything that still exists and may run again
LISTED = ("pending", "running", "stopping", "stopped")
#: the states an instance EC2 reclaimed passes through (read by a spot pool's `observe` only)
GOING = ("shutting-down", "terminated")
STATUS = {"pending": WorkerStatus.INITIALIZING, "running": WorkerStatus.RUNNING}  # anything else: stopped
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
USER_DATA_LIMIT = 16 * 1024
TAG_POOL = "fleet:pool"
TAG_REVISION = "fleet:revision"  # the spec revision an instance was launched from (a rollout's memory)
#: the state reason of an instance EC2 took back (a spot interruption)
SPOT_RECLAIMED = "Server.SpotInstanceTermination"
#: catalogue types one launch may use by default: spot wants diversity, on-demand the cheapest fit
DEFAULT_MAX_TYPES = {"spot": 6, "on-demand": 1}
TEMPLATE_EXISTS = "InvalidLaunchTemplateName.AlreadyExistsException"
TEMPLATE_GONE = ("InvalidLaunchTemplateName.NotFoundException", "InvalidLaunchTemplateId.NotFound",
                 "InvalidLaunchTemplateId.VersionNotFound")
#: EventBridge detail-types on the interruption queue, and what they mean
NOTICES = {"EC2 Spot Instance Interruption Warning": Cause.SPOT_INTERRUPTION,
           "EC2 Instance Rebalance Recommendation": Cause.REBALANCE}
#: EC2 takes a spot instance two minutes after its interruption warning
SPOT_WARNING_SECONDS = 120.0
#: ReceiveMessage calls per `interruptions` call at most (10 messages each)
RECEIVES = 10
#: the largest message body read (SQS takes 256 KiB; an SNS envelope adds its own fields)
BODY_LIMIT = 512 * 1024
HINTS = {
    "InvalidAMIID": "fix provider_options.ami", "InvalidSubnetID": "fix provider_options.subnet_id",
    "InvalidGroup": "fix provider_options.security_group_ids", "InvalidKeyPair": "fix provider_options.key_name",
    "InvalidParameterCombination": "check provider_options (instance_type, subnet_id, security_group_ids)",
    "InvalidParameterValue": "check provider_options (instance_type, ami, iam_instance_profile, subnet_id)",
    "InvalidInstanceType": "fix provider_options.instance_type or the catalogue",
    "IdempotentParameterMismatch": "the launch was retried with other parameters; it will be retried with a new id",
    "InvalidLaunchTemplate": "check provider_options (ami, security_group_ids, iam_instance_profile, key_name)",
    "InvalidFleetConfiguration": "check provider_options (instance_types, catalogue, subnet_id, spot_max_price)",
}
SQS_HINTS = {
    "AWS.SimpleQueueService.NonExistentQueue": "fix provider_options.interruption_queue_url",
    "QueueDoesNotExist": "fix provider_options.interruption_queue_url",
    "InvalidAddress": "fix provider_options.interruption_queue_url (or sqs_endpoint_url)",
}


class EC2Options(AwsOptions):
    ami: str = Field(min_length=1, description="AMI id the instances boot")
    instance_type: str | None = Field(default=None, min_length=1, description="explicit type; else from catalogue")
    instance_types: tuple[str, ...] | None = Field(default=None, min_length=1, max_length=50,
                                                   description="explicit types, preferred first, for one EC2 Fleet")
    catalogue: tuple[InstanceType, ...] = Field(default=DEFAULT_CATALOGUE, min_length=1,
                                                description="types to choose the cheapest fitting one from")
    max_types: int | None = Field(default=None, ge=1, le=50,
                                  description="catalogue types one launch may use; default 6 spot, 1 on-demand")
    market: Literal["on-demand", "spot"] = Field(default="on-demand", description="purchasing option")
    spot_max_price: str | None = Field(default=None, pattern=r"^[0-9]+(\.[0-9]+)?$",
                                       description="highest spot price per instance-hour (USD); default on-demand's")
    interruption_queue_url: str | None = Field(default=None, description="SQS queue of the cluster's spot notices")
    sqs_endpoint_url: str | None = Field(default=None, description="SQS endpoint override; default endpoint_url")
    subnet_id: str | None = Field(default=None, min_length=1, description="subnet to launch in")
    security_group_ids: tuple[str, ...] = Field(default=(), description="security groups of the instances")
    iam_instance_profile: str | None = Field(default=None, min_length=1, description="instance profile name or ARN")
    key_name: str | None = Field(default=None, min_length=1, description="SSH key pair name")
    batch_size: int = Field(default=100, ge=1, le=1000, description="instances per RunInstances/CreateFleet call")
    page_size: int = Field(default=1000, ge=5, le=1000, description="DescribeInstances page size")

    @field_validator("interruption_queue_url", "sqs_endpoint_url")
    @classmethod
    def _urls(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("instance_types")
    @classmethod
    def _distinct(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and (len(set(value)) != len(value) or not all(value)):
            raise ValueError("instance_types must be distinct, non-empty names")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> EC2Options:
        if self.instance_type and self.instance_types:
            raise ValueError("give instance_type or instance_types, not both")
        if self.spot_max_price is not None and self.market != "spot":
            raise ValueError("spot_max_price needs market = \"spot\"")
        return self


def user_data(cluster: Cluster[EC2Options], container: ContainerSpec, launch_id: str, workers: int) -> str:
    """The boot script: export the identity, run the worker, power off (= terminate) when it exits."""
    q = shlex.quote
    env = {**container.env, "FLEET_ID": cluster.fleet_id, "FLEET_CLUSTER": cluster.name,
           "FLEET_WORKERS": str(workers), "FLEET_LAUNCH_ID": launch_id}
    if cluster.pool:
        env["FLEET_POOL"] = cluster.pool
    bad = [k for k in env if not ENV_NAME.fullmatch(k)]
    if bad:
        raise PermanentProviderError(f"container.env of cluster {cluster.name!r} has names a shell cannot export: "
                                     f"{', '.join(map(repr, bad))}: rename them")
    names = [*env, *container.secrets, "FLEET_HANDLE"]
    if container.image:
        passed = " ".join(f"-e {n}" for n in names)
        run = f"docker run --rm --network host {passed} {q(container.image)} {shlex.join(container.command)}"
    else:
        run = shlex.join(container.command)
    lines = [
        "#!/bin/sh",
        "# Fleet worker bootstrap: run the worker, then power off; the instance terminates on shutdown.",
        *(f"export {k}={q(v)}" for k, v in env.items()),
        "IMDS=http://169.254.169.254/latest",
        'IMDS_TOKEN=$(curl -fsS -m 10 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" "$IMDS/api/token")',
        *aws_fetches(container.secrets),
        'FLEET_HANDLE=$(curl -fsS -m 10 -H "X-aws-ec2-metadata-token: $IMDS_TOKEN" "$IMDS/meta-data/instance-id")',
        "export FLEET_HANDLE",
        run,
        'echo "fleet: worker exited with status $?; shutting down" >&2',
        "shutdown -h now",
        "",
    ]
    script = "\n".join(lines)
    if len(script.encode()) > USER_DATA_LIMIT:
        raise PermanentProviderError(f"the boot script of cluster {cluster.name!r} exceeds EC2's 16 KB user data "
                                     "limit: shorten container.command / container.env")
    return script


def identity_tags(cluster: Cluster[EC2Options]) -> dict[str, str]:
    """The tags every resource of `cluster` (and its pool) carries; the describes filter on them."""
    tags = {"fleet:id": cluster.fleet_id, "fleet:cluster": cluster.name}
    if cluster.pool:
        tags[TAG_POOL] = cluster.pool
    return {**tags, "Name": f"fleet-{cluster.fleet_id}-{cluster.name}" + (f"-{cluster.pool}" if cluster.pool else "")}


def tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def launch_tags(cluster: Cluster[EC2Options], launch_id: str, index: int, workers: int) -> list[dict[str, str]]:
    """The tags of the instances of call `index` of launch `launch_id`."""
    return tag_list({**identity_tags(cluster), "fleet:launch": launch_id, "fleet:workers": str(workers),
                     "fleet:batch": str(index), **({TAG_REVISION: cluster.revision} if cluster.revision else {})})


def template_data(cluster: Cluster[EC2Options]) -> dict[str, Any]:
    """What the launch template of `cluster`'s EC2 Fleet launches hold in common: everything but
    the type, the subnet, the market (the fleet's call gives them) and the user data (each call
    gives its own: it names the launch and the workers of its instances)."""
    opts = cluster.options
    return {
        "ImageId": opts.ami,
        "InstanceInitiatedShutdownBehavior": "terminate",
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "TagSpecifications": [{"ResourceType": "volume", "Tags": tag_list(identity_tags(cluster))}],
        **access_options(opts),
    }


def access_options(opts: EC2Options) -> dict[str, Any]:
    """The optional security groups, key pair and instance profile, as RunInstances and a launch
    template's data both spell them."""
    out: dict[str, Any] = {}
    if opts.security_group_ids:
        out["SecurityGroupIds"] = list(opts.security_group_ids)
    if opts.key_name:
        out["KeyName"] = opts.key_name
    if opts.iam_instance_profile:
        prof = opts.iam_instance_profile
        out["IamInstanceProfile"] = {"Arn": prof} if prof.startswith("arn:") else {"Name": prof}
    return out


def template_name(cluster: Cluster[EC2Options], data: Mapping[str, Any]) -> str:
    """A deterministic launch template name: readable fleet id, cluster and pool, then a hash of
    those and of the content, so a changed option makes a new template and never edits one in use."""
    digest = token(cluster.fleet_id, cluster.name, cluster.pool, json.dumps(data, sort_keys=True), prefix="",
                   length=16)
    readable = re.sub(r"[^A-Za-z0-9().\-/_]", "_", "-".join(filter(None, (
        "fleet", cluster.fleet_id, cluster.name, cluster.pool))))
    return f"{readable[:100]}-{digest}"


def spot_market(opts: EC2Options) -> dict[str, Any]:
    """RunInstances' InstanceMarketOptions for a spot launch: one-time, terminated when reclaimed."""
    spot: dict[str, Any] = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
    if opts.spot_max_price:
        spot["MaxPrice"] = opts.spot_max_price
    return {"MarketType": "spot", "SpotOptions": spot}


def reclaimed(instance: Mapping[str, Any]) -> bool:
    """Whether EC2 took this instance back (a spot interruption), by its state reason."""
    return str((instance.get("StateReason") or {}).get("Code") or "") == SPOT_RECLAIMED


def fleet_failure(errors: Sequence[Mapping[str, Any]], types: Sequence[str]) -> ProviderError:
    """The error for a CreateFleet that launched nothing, from its `Errors`: capacity (some type
    had none) before quota before configuration; anything else (throttling, internal errors: the
    fleet made nothing and its token would replay that) is capacity too. A CapacityError names a
    type only when the fleet had one type to try."""
    mapped = [map_code(str(e.get("ErrorCode") or "Unknown"), str(e.get("ErrorMessage") or ""), "ec2:CreateFleet",
                       instance_type=types[0] if len(types) == 1 else None, hints=HINTS) for e in errors]
    said = "; ".join(sorted({f"{e.get('ErrorCode')}: {e.get('ErrorMessage') or ''}".strip() for e in errors}))[:800]
    for kind in (CapacityError, QuotaExceeded):
        first = next((m for m in mapped if isinstance(m, kind)), None)
        if first is not None:
            return with_errors(first, said)
    if mapped and all(isinstance(m, PermanentProviderError) for m in mapped):
        return with_errors(mapped[0], said)
    return CapacityError(f"ec2:CreateFleet launched no instance of {', '.join(types)}: {said or 'no reason given'}",
                         types[0] if len(types) == 1 else None)


def with_errors(error: ProviderError, said: str) -> ProviderError:
    """`error` again, its message followed by every error the fleet gave (`said`)."""
    message = f"{error.message}; the fleet's errors: {said}"
    if isinstance(error, CapacityError):
        return CapacityError(message, error.instance_type, error.cause)
    return type(error)(message, error.cause)


def event_time(value: Any) -> float | None:
    """Unix seconds of an EventBridge `time` (ISO 8601, UTC), None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def parse_notice(message: Mapping[str, Any]) -> Interruption | str:
    """The interruption an SQS message holds (an EventBridge event, or one wrapped by SNS), or why
    it holds none (never the payload: it is not ours to log)."""
    body = message.get("Body")
    if not isinstance(body, str) or len(body) > BODY_LIMIT:
        return "not JSON"
    try:
        event = json.loads(body)
        if isinstance(event, dict) and event.get("Type") == "Notification" and isinstance(event.get("Message"), str):
            event = json.loads(event["Message"])
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the interpreter's stack
        return "not JSON"
    if not isinstance(event, dict):
        return "not an event"
    kind = event.get("detail-type")
    cause = NOTICES.get(kind) if isinstance(kind, str) else None  # never str() a nested value: it recurses
    if cause is None:
        return "not an EC2 interruption event"
    detail = event.get("detail")
    iid = detail.get("instance-id") if isinstance(detail, dict) else None
    if not isinstance(iid, str) or not INSTANCE_ID.fullmatch(iid):
        return "no instance id"
    at = event_time(event.get("time"))
    deadline = at + SPOT_WARNING_SECONDS if at is not None and cause is Cause.SPOT_INTERRUPTION else None
    return Interruption(handle=iid, cause=cause, deadline=deadline, receipt=str(message.get("ReceiptHandle") or ""))


class EC2Provider(AwsProvider[EC2Options]):
    options_model = EC2Options
    first_check = 20.0  # an instance is pending for 10-40 s
    listing_grace = 10.0  # DescribeInstances may not list a fresh instance for a few seconds
    secret_schemes = AWS_SCHEMES  # fetched at boot with the instance role (boot_secrets.aws_fetches)

    service = "ec2"

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        self._templates: set[tuple[str, str | None, str]] = set()  # (region, endpoint, name) known to exist
        self._templates_lock = threading.Lock()

    @staticmethod
    def instance_type(opts: EC2Options, hardware: Hardware, exclude: frozenset[str] = frozenset()) -> str:
        """The explicit type, else the cheapest catalogue type that fits `hardware` and is not
        excluded (Fleet excludes the types that just had no capacity)."""
        return opts.instance_type or cheapest_fit(opts.catalogue, hardware, exclude).name

    @classmethod
    def launch_types(cls, opts: EC2Options, hardware: Hardware, exclude: frozenset[str] = frozenset()) -> list[str]:
        """The types a launch may use, preferred first; more than one means an EC2 Fleet.
        `instance_type`: that one. `instance_types`: those not excluded (a CapacityError naming
        none when all are). Else the `max_types` cheapest catalogue types that fit."""
        if opts.instance_type:
            return [opts.instance_type]
        if opts.instance_types:
            left = [t for t in opts.instance_types if t not in exclude]
            if not left:
                raise CapacityError(f"every type of instance_types is out of capacity: {', '.join(sorted(exclude))}")
            return left
        most = opts.max_types or DEFAULT_MAX_TYPES[opts.market]
        if most == 1:
            return [cls.instance_type(opts, hardware, exclude)]
        return [t.name for t in eligible(opts.catalogue, hardware, exclude)[:most]] or [
            cls.instance_type(opts, hardware, exclude)]  # raises: none fits, or all are excluded

    # -- the contract ----------------------------------------------------------------------
    def run_workers(self, cluster: Cluster[EC2Options], container: ContainerSpec, hardware: Hardware, count: int,
                    *, launch_id: str) -> list[str]:
        opts = cluster.options
        types = self.launch_types(opts, hardware, cluster.excluded_types)
        calls = plan_calls(cluster.containers_for(count), opts.batch_size)
        if not calls:
            return []
        client = self.client(cluster)
        # what an earlier attempt of this launch made (none on a first attempt: no look-up)
        done = {} if cluster.first_attempt else self._earlier(cluster, launch_id)
        template = self._template(client, cluster) if len(types) > 1 and len(done) < len(calls) else ""
        handles: list[str] = []
        for index, (workers, n) in enumerate(calls):
            if index in done:  # launched by an earlier attempt of this launch: adopt
                got = sorted(done[index])
            else:
                try:
                    got = self._launch(client, cluster, container, types, template, launch_id, index, workers, n)
                except TransientProviderError:
                    # Its answer may be lost with the instances launched: the outcome is unknown, so
                    # the launch stays counted and a retry (this launch id) adopts what it made.
                    raise
                except ProviderError as exc:
                    if not handles:
                        raise
                    log.warning("launch %s: call %d was refused after %d workers started; the rest is left to Fleet: "
                                "%s", launch_id, index, len(handles), exc)
                    break
            progress()  # call_timeout bounds each call of a launch, not the launch
            for iid, w in got:
                handles += [iid] * w
            if len(got) < n and index not in done:
                log.warning("launch %s: call %d started %d of %d instances; the rest is left to Fleet",
                            launch_id, index, len(got), n)
                break
        return handles

    def _earlier(self, cluster: Cluster[EC2Options], launch_id: str) -> dict[int, list[tuple[str, int]]]:
        """The instances each call of `launch_id` made (any state), by call index."""
        done: dict[int, list[tuple[str, int]]] = {}
        for inst in self._describe(cluster, [{"Name": "tag:fleet:launch", "Values": [launch_id]}]):
            tags = tag_dict(inst.get("Tags"))
            index = call_index(tags.get("fleet:batch"))
            if index is not None:
                done.setdefault(index, []).append((inst["InstanceId"], self.tagged_workers(cluster, tags)))
        return done

    def _launch(self, client: Any, cluster: Cluster[EC2Options], container: ContainerSpec, types: Sequence[str],
                template: str, launch_id: str, index: int, workers: int, n: int) -> list[tuple[str, int]]:
        """Call `index` of a launch: RunInstances for one type, else CreateFleet."""
        if len(types) == 1:
            return self._run_instances(client, cluster, container, types[0], launch_id, index, workers, n)
        try:
            return self._create_fleet(client, cluster, container, types, template, launch_id, index, workers, n)
        except PermanentProviderError as exc:
            if exc.__cause__ is None or error_code(exc.__cause__) not in TEMPLATE_GONE:
                raise
            # someone deleted the template this process made: make it again, once
            with self._templates_lock:
                self._templates.discard(self._template_key(client, cluster, template))
            template = self._template(client, cluster)
            return self._create_fleet(client, cluster, container, types, template, launch_id, index, workers, n)

    def _run_instances(self, client: Any, cluster: Cluster[EC2Options], container: ContainerSpec, itype: str,
                       launch_id: str, index: int, workers: int, n: int) -> list[tuple[str, int]]:
        opts = cluster.options
        tags = launch_tags(cluster, launch_id, index, workers)
        params: dict[str, Any] = {
            "ImageId": opts.ami, "InstanceType": itype,
            "MinCount": n, "MaxCount": n,  # moto launches MinCount; EC2 all or nothing (a capacity error)
            "ClientToken": token(launch_id, str(index), opts.subnet_id or ""),
            "UserData": user_data(cluster, container, launch_id, workers),
            "InstanceInitiatedShutdownBehavior": "terminate",
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                                  {"ResourceType": "volume", "Tags": tags}],
        }
        if opts.market == "spot":
            params["InstanceMarketOptions"] = spot_market(opts)
        if opts.subnet_id:
            params["SubnetId"] = opts.subnet_id
        params.update(access_options(opts))
        with aws_errors("ec2:RunInstances", instance_type=itype, hints=HINTS):
            resp = client.run_instances(**params)
        return [(i["InstanceId"], workers) for i in resp.get("Instances", [])]

    def _create_fleet(self, client: Any, cluster: Cluster[EC2Options], container: ContainerSpec, types: Sequence[str],
                      template: str, launch_id: str, index: int, workers: int, n: int) -> list[tuple[str, int]]:
        """One instant EC2 Fleet of `n` instances over `types` (preferred first). Returns the
        instances it made, fewer than `n` when it said why (its `Errors`); raises the typed error
        of its `Errors` when it made none."""
        opts = cluster.options
        spot = opts.market == "spot"
        overrides = []
        for priority, itype in enumerate(types):
            override: dict[str, Any] = {"InstanceType": itype, "Priority": float(priority)}
            if opts.subnet_id:
                override["SubnetId"] = opts.subnet_id
            if spot and opts.spot_max_price:
                override["MaxPrice"] = opts.spot_max_price
            overrides.append(override)
        script = base64.b64encode(user_data(cluster, container, launch_id, workers).encode()).decode()
        params: dict[str, Any] = {
            "Type": "instant",
            "ClientToken": token(launch_id, str(index), opts.subnet_id or "", "create-fleet"),
            "LaunchTemplateConfigs": [{
                "LaunchTemplateSpecification": {"LaunchTemplateName": template, "Version": "$Default",
                                                "LaunchTemplateSpecificationUserData": script},
                "Overrides": overrides}],
            "TargetCapacitySpecification": {"TotalTargetCapacity": n, "DefaultTargetCapacityType": opts.market},
            "TagSpecifications": [{"ResourceType": "instance",
                                   "Tags": launch_tags(cluster, launch_id, index, workers)}],
        }
        if spot:
            params["SpotOptions"] = {"AllocationStrategy": "price-capacity-optimized",
                                     "InstanceInterruptionBehavior": "terminate"}
        else:
            params["OnDemandOptions"] = {"AllocationStrategy": "prioritized"}
        with aws_errors("ec2:CreateFleet", instance_type=types[0] if len(types) == 1 else None, hints=HINTS):
            resp = client.create_fleet(**params)
        ids = list(dict.fromkeys(i for inst in resp.get("Instances") or [] for i in inst.get("InstanceIds") or []))
        errors = resp.get("Errors") or []
        if not ids:
            raise fleet_failure(errors, types)
        if len(ids) < n:
            log.warning("launch %s: CreateFleet made %d of %d instances: %s", launch_id, len(ids), n,
                        ", ".join(sorted({str(e.get("ErrorCode")) for e in errors})) or "no reason given")
        return [(iid, workers) for iid in ids]

    # -- launch templates ------------------------------------------------------------------
    def _template(self, client: Any, cluster: Cluster[EC2Options]) -> str:
        """The name of `cluster`'s launch template, made if this process has not seen it: a
        CreateLaunchTemplate (ClientToken from the name), whose "already exists" is a success."""
        data = template_data(cluster)
        name = template_name(cluster, data)
        key = self._template_key(client, cluster, name)
        with self._templates_lock:
            if key in self._templates:
                return name
        try:
            client.create_launch_template(
                LaunchTemplateName=name, LaunchTemplateData=data, ClientToken=token("launch-template", name),
                VersionDescription="made by Fleet; its name holds a hash of its content: never edit it",
                TagSpecifications=[{"ResourceType": "launch-template", "Tags": tag_list(identity_tags(cluster))}])
        except Exception as exc:  # noqa: BLE001 - raise_mapped re-raises anything not from AWS
            if error_code(exc) != TEMPLATE_EXISTS:
                raise_mapped(exc, "ec2:CreateLaunchTemplate", hints=HINTS)
        with self._templates_lock:
            self._templates.add(key)
        return name

    @staticmethod
    def _template_key(client: Any, cluster: Cluster[EC2Options], name: str) -> tuple[str, str | None, str]:
        return str(client.meta.region_name), cluster.options.endpoint_url, name

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
        """The notices on `interruption_queue_url` (at most RECEIVES receives of 10, no wait):
        spot interruption warnings (deadline: the event's time + 2 minutes) and rebalance
        recommendations. They stay on the queue (invisible for its visibility timeout) until
        `acknowledge`; messages that are neither are deleted at once and logged without their
        content."""
        url = cluster.options.interruption_queue_url
        if not url:
            return []
        sqs = self.sqs(cluster)
        notices: list[Interruption] = []
        garbage: list[str] = []
        dropped: Counter[str] = Counter()
        for _ in range(RECEIVES):
            with aws_errors("sqs:ReceiveMessage", hints=SQS_HINTS):
                messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
                    "Messages") or []
            for message in messages:
                try:  # each message on its own: nothing in one may cost the others (a spot warning)
                    notice = parse_notice(message)
                except Exception as exc:  # noqa: BLE001 - parse_notice raises nothing it knows of
                    notice = f"unreadable ({type(exc).__name__})"
                if isinstance(notice, Interruption):
                    if notice.receipt:
                        notices.append(notice)
                    continue
                log.warning("interruption queue of cluster %s: dropping message %s: %s", cluster.name,
                            str(message.get("MessageId", "?"))[:100], notice)
                dropped[notice] += 1
                if message.get("ReceiptHandle"):
                    garbage.append(str(message["ReceiptHandle"]))
            if len(messages) < 10:
                break
        for reason, n in dropped.items():
            self.unreadable(cluster, "sqs", reason, n)
        if garbage:
            try:
                self._delete(sqs, url, garbage)
            except ProviderError as exc:  # they come again and are dropped again: never worth failing a sweep
                log.warning("interruption queue of cluster %s: cannot delete %d unusable messages: %s", cluster.name,
                            len(garbage), exc)
        return notices

    def acknowledge(self, cluster: Cluster[EC2Options], notices: Sequence[Interruption]) -> None:
        """Delete the SQS messages of `notices` (DeleteMessageBatch, 10 a call). A receipt SQS
        no longer takes (expired: the message was received again since) is logged, not raised."""
        url = cluster.options.interruption_queue_url
        receipts = list(dict.fromkeys(n.receipt for n in notices if n.receipt))
        if url and receipts:
            self._delete(self.sqs(cluster), url, receipts)

    @staticmethod
    def _delete(sqs: Any, url: str, receipts: Iterable[str]) -> None:
        for chunk in chunks(list(receipts), 10):
            with aws_errors("sqs:DeleteMessageBatch", hints=SQS_HINTS):
                resp = sqs.delete_message_batch(QueueUrl=url, Entries=[
                    {"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(chunk)])
            failed = resp.get("Failed") or []
            if failed:
                log.warning("sqs:DeleteMessageBatch: %d of %d messages not deleted: %s", len(failed), len(chunk),
                            ", ".join(sorted({str(f.get("Code")) for f in failed})))
