"""Shared AWS plumbing of the `aws_ec2` and `aws_ecs` providers: options common to both, boto3
client building, the mapping of AWS errors to Fleet's typed errors, and the one loop over a
launch's calls (`AwsProvider.launch`: adoption, refusals, short answers), each call a `LaunchCall`.

Clients come from a boto3 session built from the SDK's standard credential chain (environment,
shared profiles, instance or task role); no credential is ever an option. Each client carries
botocore's own retry machinery (`retry_mode` standard or adaptive, `max_attempts` attempts in
all); once botocore gives up, the last error is mapped and raised, never swallowed:

* throttling (`RequestLimitExceeded`, `ThrottlingException`, `Throttling`,
  `TooManyRequestsException`, ...) -> `RateLimited` (retry_after from a `Retry-After` header, else
  a few seconds);
* quota (`InstanceLimitExceeded`, `VcpuLimitExceeded`, `LimitExceededException`, ECS limit
  messages) -> `QuotaExceeded`;
* capacity (`InsufficientInstanceCapacity`, `Unsupported`, ...) -> `CapacityError` naming the
  instance type;
* spot capacity (`SpotMaxPriceTooLow`, `UnfulfillableCapacity`, `MaxSpotInstanceCountExceeded`)
  -> `CapacityError` too, not a quota: a spot pool that cannot launch must hand its shortfall to
  the cluster's next pool instead of holding the whole cluster; the account's spot instance limit
  names no type (no other type of the pool would do better);
* auth and bad configuration (`AuthFailure`, `UnauthorizedOperation`, `AccessDenied*`,
  `InvalidClientTokenId`, `InvalidParameter*`, `InvalidAMIID.*`, ECS `ClientException`, missing
  credentials or region, any other 4xx) -> `PermanentProviderError` saying what to fix;
* connection errors, timeouts and 5xx (`InternalError`, `ServerException`, ...) ->
  `TransientProviderError`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, NoReturn, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleet.deadline import progress
from fleet.errors import (
    CapacityError,
    PermanentProviderError,
    ProviderError,
    QuotaExceeded,
    RateLimited,
    TransientProviderError,
)
from fleet.inputs import call_index, revision, worker_count
from fleet.provider import Cluster, ContainerSpec, Provider, ProviderContext, import_sdk

T = TypeVar("T")

#: Seconds to wait after botocore's own retries gave up on a throttled call, when AWS says nothing.
DEFAULT_RETRY_AFTER = 5.0

THROTTLING = frozenset({
    "RequestLimitExceeded", "ThrottlingException", "Throttling", "TooManyRequestsException",
    "ThrottledException", "RequestThrottled", "RequestThrottledException", "SlowDown",
    "EC2ThrottledException", "BandwidthLimitExceeded",
})
QUOTA = frozenset({
    "InstanceLimitExceeded", "VcpuLimitExceeded", "LimitExceededException", "AddressLimitExceeded",
    "InsufficientFreeAddressesInSubnet", "NetworkInterfaceLimitExceeded",
    "ResourceLimitExceeded",
})
CAPACITY = frozenset({
    "InsufficientInstanceCapacity", "InsufficientHostCapacity", "InsufficientReservedInstanceCapacity",
    "InsufficientCapacity", "InsufficientCapacityOnHost", "Unsupported",
})
#: spot answers that mean "no spot capacity for this request now" (see the module docstring)
SPOT_CAPACITY = frozenset({"SpotMaxPriceTooLow", "UnfulfillableCapacity", "MaxSpotInstanceCountExceeded"})
#: spot capacity codes about the account, not the instance type
ACCOUNT_SPOT_LIMIT = frozenset({"MaxSpotInstanceCountExceeded"})
TRANSIENT = frozenset({
    "InternalError", "InternalFailure", "InternalServerError", "ServerException", "ServiceUnavailable",
    "ServiceUnavailableException", "Unavailable", "RequestTimeout", "RequestTimeoutException",
    "PriorRequestNotComplete", "IncorrectState", "ConcurrentModification",
})
AUTH = ("AuthFailure", "UnauthorizedOperation", "AccessDenied", "InvalidClientTokenId", "SignatureDoesNotMatch",
        "ExpiredToken", "UnrecognizedClient", "OptInRequired", "Blocked", "MissingAuthenticationToken")


class AwsOptions(BaseModel):
    """Options both AWS providers take."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    region: str | None = Field(default=None, min_length=1,
                               description="AWS region; default: the SDK chain (AWS_DEFAULT_REGION, profile)")
    endpoint_url: str | None = Field(default=None, description="API endpoint override (tests, VPC endpoints)")
    retry_mode: Literal["standard", "adaptive"] = Field(default="standard", description="botocore retry mode")
    max_attempts: int = Field(default=5, ge=1, le=20,
                              description="attempts per API call, first included, before the error surfaces")

    @field_validator("endpoint_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("endpoint_url must start with http:// or https://")
        return value


class Clients:
    """boto3 clients, one per (service, region, endpoint, retry settings), built once and shared
    by threads (boto3 clients are thread-safe; building them is not, hence the lock). Every
    client gets a session of its own (credentials are resolved per client, through the SDK
    chain), but all share one botocore loader, so the service models are parsed once."""

    _build_lock = threading.Lock()
    _loader: Any = None

    def __init__(self) -> None:
        self._cache: dict[tuple[Any, ...], Any] = {}

    def get(self, service: str, opts: AwsOptions) -> Any:
        key = (service, opts.region, opts.endpoint_url, opts.retry_mode, opts.max_attempts)
        client = self._cache.get(key)
        if client is not None:
            return client
        with self._build_lock:
            client = self._cache.get(key)
            if client is None:
                client = self._cache[key] = self._build(service, opts)
            return client

    @classmethod
    def _build(cls, service: str, opts: AwsOptions) -> Any:
        boto3 = import_sdk("boto3", "aws")
        botocore = import_sdk("botocore.session", "aws")
        config = import_sdk("botocore.config", "aws").Config(
            retries={"mode": opts.retry_mode, "total_max_attempts": opts.max_attempts},
            connect_timeout=10, read_timeout=60, user_agent_extra="fleet")
        if cls._loader is None:
            cls._loader = import_sdk("botocore.loaders", "aws").create_loader()
        core = botocore.Session()
        core.register_component("data_loader", cls._loader)
        try:
            return boto3.session.Session(botocore_session=core, region_name=opts.region).client(
                service, endpoint_url=opts.endpoint_url, config=config)
        except Exception as exc:  # noqa: BLE001 - NoRegionError and friends; others are re-raised as they are
            raise_mapped(exc, f"building the {service} client")


# -- helpers -----------------------------------------------------------------------------

def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def token(*parts: str, prefix: str = "fleet-", length: int = 64) -> str:
    """A deterministic idempotency token / marker of at most `length` safe characters."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return (prefix + digest)[:length]


def plan_calls(sizes: Sequence[int], per_call: int) -> list[tuple[int, int]]:
    """Group containers (their worker counts, as `Cluster.containers_for` gives them) into launch
    calls of (workers per container, containers): containers of one size, at most `per_call`
    each; a container of another size (the partial one) gets its own call."""
    calls: list[tuple[int, int]] = []
    runs: list[tuple[int, int]] = []
    for size in sizes:
        if runs and runs[-1][0] == size:
            runs[-1] = (size, runs[-1][1] + 1)
        else:
            runs.append((size, 1))
    for size, n in runs:
        while n:
            take = min(n, per_call)
            calls.append((size, take))
            n -= take
    return calls


@dataclass(frozen=True)
class LaunchCall:
    """What one launch call asks the cloud for: call `index` of launch `launch_id`, `count`
    containers (instances, tasks) of `workers` workers each, running `container`."""

    launch_id: str
    index: int
    workers: int
    count: int
    container: ContainerSpec

    def token(self, *extra: str) -> str:
        """The call's idempotency token: the same for every attempt of this call."""
        return token(self.launch_id, str(self.index), *extra)

    def tags(self) -> dict[str, str]:
        """The tags that say which launch and call made a resource, and its worker count."""
        return {"fleet:launch": self.launch_id, "fleet:workers": str(self.workers), "fleet:batch": str(self.index)}

    def env(self, cluster: Cluster[Any]) -> dict[str, str]:
        """The environment of the call's containers (`launch_env`)."""
        return launch_env(cluster, self.container, self.launch_id, self.workers)


def launch_env(cluster: Cluster[Any], container: ContainerSpec, launch_id: str, workers: int) -> dict[str, str]:
    """The container's environment plus the identity its workers get (all but FLEET_HANDLE)."""
    env = {**container.env, "FLEET_ID": cluster.fleet_id, "FLEET_CLUSTER": cluster.name,
           "FLEET_WORKERS": str(workers), "FLEET_LAUNCH_ID": launch_id}
    if cluster.pool:
        env["FLEET_POOL"] = cluster.pool
    return env


#: (handle, its workers) of each resource one launch call made
Made = list[tuple[str, int]]


def tag_dict(tags: Iterable[Mapping[str, str]] | None) -> dict[str, str]:
    """AWS tag lists as a dict; EC2 spells the keys Key/Value, ECS key/value."""
    out: dict[str, str] = {}
    for t in tags or ():
        key = t.get("Key", t.get("key"))
        if key is not None:
            out[key] = t.get("Value", t.get("value", ""))
    return out


# -- error mapping -----------------------------------------------------------------------

def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ClientError, else None."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code") or "") or None
    return None


def _retry_after(response: Mapping[str, Any]) -> float:
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}
    raw = headers.get("retry-after") or headers.get("Retry-After")
    try:
        return max(0.0, float(raw)) if raw is not None else DEFAULT_RETRY_AFTER
    except ValueError:
        return DEFAULT_RETRY_AFTER


def map_error(exc: BaseException, action: str, *, instance_type: str | None = None,
              hints: Mapping[str, str] | None = None) -> ProviderError | None:
    """The typed error for an exception raised by botocore during `action`; None when `exc` is
    not an AWS/botocore error (a bug: let it propagate). `hints` maps an error-code prefix to
    what a person should fix (e.g. "InvalidAMIID" -> "fix provider_options.ami")."""
    if isinstance(exc, ProviderError):
        return exc
    bexc = import_sdk("botocore.exceptions", "aws")
    cause = f"{type(exc).__name__}: {exc}"[:1000]
    if isinstance(exc, bexc.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or "")
        text = str(err.get("Message") or err.get("message") or "").strip().rstrip(".")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        said = f"{action} failed: {code or status}: {text}".rstrip(": ")
        hint = next((h for prefix, h in (hints or {}).items() if code.startswith(prefix)), None)
        lowered = text.lower()
        if code in THROTTLING:
            return RateLimited(f"{said} (AWS throttled Fleet after botocore's retries)", _retry_after(exc.response),
                               cause)
        if code in SPOT_CAPACITY:
            typed = None if code in ACCOUNT_SPOT_LIMIT else instance_type
            return CapacityError(f"{said}: no spot capacity for {instance_type or 'this request'} right now", typed,
                                 cause)
        if code in QUOTA or (code in ("ClientException", "InvalidParameterException")
                             and ("limit" in lowered or "quota" in lowered)):
            return QuotaExceeded(f"{said}: an account quota is used up; raise it or wait for workers to go away",
                                 cause)
        if code in CAPACITY:
            return CapacityError(f"{said}: no capacity for {instance_type or 'this request'} right now",
                                 instance_type, cause)
        if code.startswith(AUTH):
            return PermanentProviderError(
                f"{said}: check the AWS credentials the SDK chain finds (AWS_* environment variables, "
                f"profile, instance or task role) and that their IAM policy allows {action}", cause)
        if code in TRANSIENT or status >= 500 or (code.isdigit() and int(code) >= 500):
            return TransientProviderError(said, cause)
        return PermanentProviderError(f"{said}: {hint or 'fix the provider_options of this cluster'}", cause)
    if isinstance(exc, (bexc.NoCredentialsError, bexc.PartialCredentialsError, bexc.CredentialRetrievalError)):
        return PermanentProviderError(
            f"{action}: no usable AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE "
            "or give the control plane an instance or task role", cause)
    if isinstance(exc, bexc.NoRegionError):
        return PermanentProviderError(f"{action}: no AWS region: set provider_options.region or AWS_DEFAULT_REGION",
                                      cause)
    if isinstance(exc, (bexc.ParamValidationError, bexc.ProfileNotFound)):
        return PermanentProviderError(f"{action}: {exc}: fix the provider_options of this cluster", cause)
    if isinstance(exc, bexc.BotoCoreError):  # connection errors, timeouts, ...
        return TransientProviderError(f"{action}: cannot reach AWS: {exc}", cause)
    return None


def map_code(code: str, message: str, action: str, *, instance_type: str | None = None,
             hints: Mapping[str, str] | None = None) -> ProviderError:
    """The typed error for an error code an answer carries instead of raising (EC2 Fleet's
    `Errors`), mapped exactly as if the call had failed with it (a 4xx)."""
    bexc = import_sdk("botocore.exceptions", "aws")
    exc = bexc.ClientError({"Error": {"Code": code, "Message": message},
                            "ResponseMetadata": {"HTTPStatusCode": 400}}, action.rpartition(":")[2])
    return map_error(exc, action, instance_type=instance_type, hints=hints) or PermanentProviderError(
        f"{action} failed: {code}: {message}")


def raise_mapped(exc: BaseException, action: str, *, instance_type: str | None = None,
                 hints: Mapping[str, str] | None = None) -> NoReturn:
    """Raise the typed error for `exc` (chained), or `exc` itself if it is not an AWS error."""
    mapped = map_error(exc, action, instance_type=instance_type, hints=hints)
    if mapped is None or mapped is exc:
        raise exc
    raise mapped from exc


@contextmanager
def aws_errors(action: str, *, instance_type: str | None = None,
               hints: Mapping[str, str] | None = None) -> Iterator[None]:
    """Map what botocore raises inside the block (after its own retries) to a typed error."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - anything not from AWS is re-raised as it is
        raise_mapped(exc, action, instance_type=instance_type, hints=hints)


#: the options model of one AWS provider
A = TypeVar("A", bound=AwsOptions)


class AwsProvider(Provider[A], Generic[A]):
    """What the AWS providers share: one cached boto3 client per option set. Subclasses set
    `service` and `options_model`."""

    service: ClassVar[str]
    call_timeout = 60.0  # botocore's own retries (with back-off) happen within one call

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        self._clients = Clients()

    def client(self, cluster: Cluster[A]) -> Any:
        """The (cached) boto3 client for `cluster`'s options."""
        return self._clients.get(self.service, cluster.options)

    def launch(self, cluster: Cluster[A], container: ContainerSpec, count: int, *, launch_id: str, per_call: int,
               earlier: Callable[[], Iterable[tuple[str, Mapping[str, str]]]],
               make: Callable[[LaunchCall], Made], noun: str) -> list[str]:
        """Launch `count` workers in calls of at most `per_call` containers (`plan_calls`); the
        handles, one per worker. `make` makes one call and returns what it made.

        * Adoption: except on a launch's first attempt, `earlier()` lists what earlier attempts
          of `launch_id` made, as (handle, tags); a call whose `fleet:batch` index is there is
          adopted, not made again.
        * A transient error is raised: the call's answer may be lost with its resources made, so
          the launch stays counted and a retry (the same launch id) adopts what it made.
        * Any other refusal after earlier calls made workers ends the launch with those workers
          (the shortfall is left to Fleet); with nothing made yet, it is raised.
        * A short answer (a call that made fewer than it asked for, and said so rather than
          failing) means the capacity ran out: the launch ends with what was made, and the
          shortfall is left to Fleet. An adopted call is never short: its answer was given to an
          earlier attempt, which stopped there if it had to.
        """
        plan = plan_calls(cluster.containers_for(count), per_call)
        if not plan:
            return []
        done: dict[int, Made] = {}
        for handle, tags in [] if cluster.first_attempt else earlier():
            index = call_index(tags.get("fleet:batch"))
            if index is not None:
                done.setdefault(index, []).append((handle, self.tagged_workers(cluster, tags)))
        log = logging.getLogger(type(self).__module__)
        handles: list[str] = []
        for index, (workers, n) in enumerate(plan):
            if index in done:
                got = sorted(done[index])
            else:
                try:
                    got = make(LaunchCall(launch_id, index, workers, n, container))
                except TransientProviderError:
                    raise
                except ProviderError as exc:
                    if not handles:
                        raise
                    log.warning("launch %s: call %d was refused after %d workers started; the rest is left to Fleet: "
                                "%s", launch_id, index, len(handles), exc)
                    break
            progress()  # call_timeout bounds each call of a launch, not the launch
            for handle, w in got:
                handles += [handle] * w
            if len(got) < n and index not in done:
                log.warning("launch %s: call %d started %d of %d %s; the rest is left to Fleet",
                            launch_id, index, len(got), n, noun)
                break
        return handles

    def tagged_workers(self, cluster: Cluster[A], tags: Mapping[str, str]) -> int:
        """The worker count of a resource by its `fleet:workers` tag (absent: 1). Anyone allowed to
        tag it may have written anything there: a value that is not a count (fleet.inputs) is
        counted as unreadable and taken as 1, so the resource stays listed (adopted, killed)."""
        count = worker_count(tags.get("fleet:workers"))
        if count is None:
            self.unreadable(cluster, f"{self.service}:tags", "fleet:workers is not a worker count")
            return 1
        return count

    def tagged_revision(self, cluster: Cluster[A], tags: Mapping[str, str]) -> str | None:
        """The spec revision of a resource by its `fleet:revision` tag; None when absent or when
        it is not a revision (counted as unreadable: the resource is then taken for current)."""
        raw = tags.get("fleet:revision")
        rev = revision(raw)
        if raw is not None and rev is None:
            self.unreadable(cluster, f"{self.service}:tags", "fleet:revision is not a revision")
        return rev
