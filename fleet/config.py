"""Cluster specs: the TOML file an operator writes, validated into typed objects.

`FLEET_CONFIG` names the file (default: `./fleet.toml`); `FLEET_REDIS_URL` overrides
`fleet.redis_url`; with neither, Fleet uses an embedded Redis (see `fleet.embedded`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fleet.caps import GroupSpec, HourlyCap, check_caps
from fleet.errors import ConfigError, FleetError, UnknownCluster
from fleet.provider import ContainerSpec, Hardware

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
DEFAULT_CONFIG = "fleet.toml"


class RedisTLS(BaseModel):
    """`fleet.redis_tls`: TLS files for a `rediss://` Redis (paths on the control plane's host)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the CA that signed the server's certificate (else the system's CAs)
    ca_file: Path | None = None
    #: a client certificate and its key, for a server with `tls-auth-clients yes`
    cert_file: Path | None = None
    key_file: Path | None = None
    #: "required": the server's certificate must be valid for its host name; "none": not checked
    verify: Literal["required", "none"] = "required"

    @model_validator(mode="after")
    def _pair(self) -> RedisTLS:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both cert_file and key_file, or neither")
        return self


class FleetSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=NAME_PATTERN)
    redis_url: str | None = None
    #: Redis connection details a URL carries badly (fleet.connection.RedisTarget): an ACL user,
    #: a file holding the password (FLEET_REDIS_PASSWORD / FLEET_REDIS_PASSWORD_FILE win), TLS
    #: files, and a Sentinel master name (with a sentinel:// URL), with the sentinels' own ACL
    #: user and password file (FLEET_REDIS_SENTINEL_PASSWORD / ..._FILE win), if they have one
    redis_username: str | None = Field(default=None, min_length=1, max_length=256)
    redis_password_file: Path | None = None
    redis_tls: RedisTLS | None = None
    redis_sentinel_master: str | None = Field(default=None, min_length=1, max_length=256)
    redis_sentinel_username: str | None = Field(default=None, min_length=1, max_length=256)
    redis_sentinel_password_file: Path | None = None
    sweep_interval: float = Field(default=5.0, gt=0, le=3600)
    state_dir: Path | None = None
    #: seconds a worker the provider lists but Redis does not know may wait to be explained by a
    #: launch in flight before it is adopted (and so killed if it is not needed)
    orphan_grace: float = Field(default=60.0, ge=0, le=86400)
    #: seconds after which a launch whose run task has not finished is run again (idempotently)
    launch_timeout: float = Field(default=300.0, gt=0, le=86400)
    #: seconds before a failed (or not yet effective) kill is sent again; doubles per attempt up
    #: to 5 minutes
    kill_retry: float = Field(default=10.0, gt=0, le=3600)
    #: seconds a cluster stays "at quota" (no launches) unless a worker goes away first
    quota_hold: float = Field(default=60.0, gt=0, le=3600)
    #: seconds an instance type the cloud had no capacity for is avoided
    capacity_hold: float = Field(default=60.0, gt=0, le=3600)
    #: Celery task events (what Flower shows live); off by default: they cost a Redis PUBLISH per
    #: task and state change. Flower turns them on in the workers it sees whatever this says.
    task_events: bool = False
    #: the Celery queue the public tasks (fleet.scale, ...) arrive on, and which only this fleet's
    #: control plane may consume in its Redis database (see docs/configuration.md: two fleets on
    #: one Redis server)
    public_queue: str = Field(default="celery", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
    #: USD/h the whole fleet's run rate may not pass (docs/budgets.md: Caps)
    max_hourly_cost: HourlyCap | None = None

    @field_validator("public_queue")
    @classmethod
    def _not_internal(cls, value: str) -> str:
        if value.startswith("fleet."):
            raise ValueError("must not start with 'fleet.': those are the fleets' internal queues")
        return value


#: USD per hour of one container/VM (`fleet.pricing`)
PerHour = Annotated[float, Field(ge=0, le=1_000_000, allow_inf_nan=False)]


class ProviderLimits(BaseModel):
    """Limits on one provider's cloud operations, shared by every control-plane worker, and the
    operator's prices of its instance types."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ops_per_second: int = Field(default=10, ge=1, le=10000)
    concurrent_launches: int = Field(default=4, ge=1, le=1000)
    #: seconds a provider call may take before it counts as hung (a ProviderTimeout); default:
    #: the provider's own `call_timeout` (30 s unless it says otherwise)
    call_timeout: float | None = Field(default=None, gt=0, le=3600)
    #: seconds a cluster's provider calls are held off after one of them timed out
    unresponsive_hold: float = Field(default=60.0, gt=0, le=3600)
    #: instance type -> USD per hour, on every market: wins over the provider's price tables
    prices: dict[Annotated[str, Field(min_length=1, max_length=255)], PerHour] = Field(default_factory=dict,
                                                                                       max_length=1000)


class AutoscaleSpec(BaseModel):
    """Opt-in autoscaling from the cluster's queues (see fleet.autoscale)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks_per_worker: int = Field(default=1, ge=1, le=100_000)
    scale_down_delay: float = Field(default=60.0, ge=0, le=86400)
    agreeing_sweeps: int = Field(default=3, ge=1, le=1000)


class PoolSpec(BaseModel):
    """One place a cluster's workers may be launched: a provider with its options (a market:
    spot or on-demand), and optionally its own cap. See docs/pools.md."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    provider: str = Field(min_length=1)
    provider_options: dict[str, Any] = Field(default_factory=dict)
    #: this pool's own cap (workers in it, pending launches included); none: the cluster's
    max_workers: int | None = Field(default=None, ge=0, le=1_000_000)
    #: pools of the same priority share launches in proportion to their weights
    weight: int = Field(default=1, ge=1, le=1000)
    #: lower is preferred; default: the pool's position in the list
    priority: int | None = Field(default=None, ge=0, le=1000)
    #: USD per hour of one of this pool's containers: wins over every other price of it
    price_per_hour: PerHour | None = None


#: The name of the one pool of a cluster that declares `provider` instead of `pools`.
DEFAULT_POOL = ""


class RebalanceSpec(BaseModel):
    """Opt-in: move workers from worse pools back to a better one once it can launch again."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: replacements in flight at most (launched in the better pool, not yet retired from the worse)
    max_in_flight: int = Field(default=1, ge=1, le=10_000)


Amount = Annotated[int, Field(ge=0, le=1_000_000)] | Annotated[str, Field(pattern=r"^\d{1,3}%$")]


def _amount(value: int | str, of: int, up: bool) -> int:
    """A count, or a percentage of `of` (rounded up or down)."""
    if isinstance(value, int):
        return value
    pct = int(value[:-1])
    return -(-of * pct // 100) if up else of * pct // 100


class RolloutSpec(BaseModel):
    """How outdated workers (launched from an older revision of the spec, or older than
    `max_lifetime`) are replaced: see docs/operations.md."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: workers above desired (and above max_workers) while rolling: a count or a percentage of desired
    max_surge: Amount = "25%"
    #: workers below desired while rolling: a count or a percentage of desired
    max_unavailable: Amount = 0

    def surge(self, desired: int) -> int:
        """At least 1: a rollout must be able to move."""
        return max(_amount(self.max_surge, desired, up=True), 1)

    def unavailable(self, desired: int) -> int:
        return _amount(self.max_unavailable, desired, up=False)


class ClusterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the cluster's one provider; or `pools` instead
    provider: str | None = Field(default=None, min_length=1)
    workers_per_container: int = Field(default=1, ge=1, le=1024)
    min_workers: int = Field(default=0, ge=0)
    max_workers: int = Field(default=16, ge=0, le=1_000_000)
    boot_timeout: float = Field(default=600.0, gt=0)
    container: ContainerSpec
    hardware: Hardware = Field(default_factory=Hardware)
    provider_options: dict[str, Any] = Field(default_factory=dict)
    #: the Celery queues the cluster's workers consume (for autoscaling and draining)
    queues: tuple[Annotated[str, Field(min_length=1, max_length=255)], ...] = Field(default=(), max_length=64)
    #: the workers' Celery broker, if not the fleet's Redis
    broker_url: str | None = None
    #: RabbitMQ's management API (http(s)://...) of an amqp `broker_url`: the load counts its unacked messages
    broker_management_url: str | None = None
    #: seconds a worker chosen for scale-down may finish its tasks (after it stops consuming)
    #: before it is killed; 0 kills at once. Needs `queues` and workers named `${FLEET_HANDLE}@...`
    drain_timeout: float = Field(default=0.0, ge=0, le=86400)
    autoscale: AutoscaleSpec | None = None
    #: an ordered list of pools (instead of `provider` and `provider_options`): see docs/pools.md
    pools: tuple[PoolSpec, ...] = Field(default=(), max_length=16)
    rebalance: RebalanceSpec | None = None
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    #: seconds after which a worker is replaced (surge, drain, no job lost); none: never
    max_lifetime: float | None = Field(default=None, gt=0, le=10 * 365 * 86400)
    #: autoscaled clusters: a worker idle this long (seconds) goes first on a scale-down
    idle_timeout: float | None = Field(default=None, gt=0, le=86400)
    #: USD per hour of one container, in every pool without a price_per_hour of its own
    price_per_hour: PerHour | None = None
    #: the group (a team, a project) whose cost this cluster's adds to (`fleet cost --by group`)
    group: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    #: USD/h this cluster's run rate may not pass (docs/budgets.md: Caps)
    max_hourly_cost: HourlyCap | None = None

    def revision(self, pool: str) -> str:
        """The revision of what pool `pool`'s workers are launched from: a stable hash of the
        container, hardware, workers per container, and the pool's provider and options (not of
        the pool's name, so that a cluster that moves from `provider` to `pools` with the same
        provider keeps its workers; nor of min/max, autoscaling or rollout settings, which need
        no new workers)."""
        try:
            p = self.pool(pool)
        except KeyError:
            return ""
        container = self.container.model_dump(mode="json", exclude={"secrets"} if not self.container.secrets else None)
        what = {"container": container, "hardware": self.hardware.model_dump(mode="json"),
                "workers_per_container": self.workers_per_container, "provider": p.provider,
                "provider_options": p.provider_options}
        return hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def revisions(self) -> frozenset[str]:
        """The current revision of every pool."""
        return frozenset(self.revision(p.name) for p in self.pool_list)

    @property
    def pool_list(self) -> tuple[PoolSpec, ...]:
        """The pools in order of preference (priority, then position); a cluster that declares
        `provider` has one, named DEFAULT_POOL ("")."""
        if not self.pools:
            assert self.provider is not None
            return (PoolSpec.model_construct(name=DEFAULT_POOL, provider=self.provider,
                                             provider_options=self.provider_options, max_workers=None, weight=1,
                                             priority=0, price_per_hour=self.price_per_hour),)
        return tuple(sorted(self.pools, key=lambda p: self.rank(p.name)))  # stable: ties keep their order

    def pool(self, name: str) -> PoolSpec:
        """Pool `name` of this cluster (a handle recorded under a pool since removed from the
        config is served by the first pool of the same name's provider: see `pool_or_first`)."""
        for p in self.pool_list:
            if p.name == name:
                return p
        raise KeyError(name)

    def pool_or_first(self, name: str) -> PoolSpec:
        """Pool `name`, or the first pool when the config no longer has it."""
        try:
            return self.pool(name)
        except KeyError:
            return self.pool_list[0]

    @property
    def providers(self) -> tuple[str, ...]:
        """Every provider the cluster's pools use, each once."""
        return tuple(dict.fromkeys(p.provider for p in self.pool_list))

    def rank(self, pool: str) -> int:
        """The priority of `pool` (lower is better); an unknown pool ranks last."""
        for i, p in enumerate(self.pools):
            if p.name == pool:
                return p.priority if p.priority is not None else i
        return 0 if not self.pools and pool == DEFAULT_POOL else 1 << 30

    @property
    def fingerprint(self) -> str:
        """Identifies the cluster's configuration: a permanent error holds until it changes."""
        return hashlib.sha1(self.model_dump_json().encode()).hexdigest()[:16]

    @model_validator(mode="after")
    def _limits(self) -> ClusterSpec:
        if self.max_workers < self.min_workers:
            raise ValueError(f"max_workers ({self.max_workers}) is below min_workers ({self.min_workers})")
        if (self.autoscale or self.drain_timeout) and not self.queues:
            raise ValueError("autoscale and drain_timeout need `queues`: the Celery queues the workers consume")
        if self.pools and (self.provider or self.provider_options):
            raise ValueError("give either `provider` (with `provider_options`) or `pools`, not both")
        if not self.pools and not self.provider:
            raise ValueError("a cluster needs a `provider` or a list of `pools`")
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            twice = sorted(n for n in set(names) if names.count(n) > 1)
            raise ValueError(f"pool names must differ: {', '.join(twice)}")
        if self.broker_management_url and not (self.broker_url or "").startswith(("amqp://", "amqps://", "pyamqp://")):
            raise ValueError("broker_management_url is RabbitMQ's: it needs an amqp:// broker_url")
        if self.broker_management_url and not self.broker_management_url.startswith(("http://", "https://")):
            raise ValueError("broker_management_url must be an http:// or https:// URL")
        if self.idle_timeout and not self.autoscale:
            raise ValueError("idle_timeout is for autoscaled clusters: add [autoscale]")
        if self.rebalance and len(self.pools) < 2:
            raise ValueError("rebalance needs two pools or more")
        return self


class FleetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fleet: FleetSettings
    clusters: dict[str, ClusterSpec] = Field(default_factory=dict)
    providers: dict[str, ProviderLimits] = Field(default_factory=dict)
    groups: dict[str, GroupSpec] = Field(default_factory=dict)
    source: str = "<memory>"
    #: clusters the file no longer declares that still have workers, rebuilt from what Redis
    #: keeps of them (`fleet.retire`): in `clusters`, with max_workers 0; never read from a file
    retired: frozenset[str] = frozenset()

    @model_validator(mode="after")
    def _names(self) -> FleetConfig:
        import re

        for name, spec in self.clusters.items():
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"cluster name {name!r} must match {NAME_PATTERN}")
            if (spec.broker_url or "").startswith("sentinel://") and not self.fleet.redis_sentinel_master:
                raise ValueError(f"cluster {name!r}: a sentinel:// broker_url needs fleet.redis_sentinel_master "
                                 "(the master's name, also used for the cluster's broker)")
            if self.groups and spec.group is not None and spec.group not in self.groups:
                raise ValueError(f"clusters.{name}.group: unknown group {spec.group!r} (declared: "
                                 f"{', '.join(sorted(self.groups))}): declare [groups.{spec.group}]")
        return self

    def spec(self, name: Any) -> ClusterSpec:
        """The spec of cluster `name`; UnknownCluster if it is not declared."""
        if not isinstance(name, str) or name not in self.clusters:
            known = ", ".join(sorted(self.clusters)) or "none"
            raise UnknownCluster(f"unknown cluster {shorten(name)} (declared: {known})")
        return self.clusters[name]

    def limits(self, provider: str) -> ProviderLimits:
        return self.providers.get(provider) or ProviderLimits()

    @property
    def redis_url(self) -> str | None:
        return os.environ.get("FLEET_REDIS_URL") or self.fleet.redis_url

    @property
    def state_dir(self) -> Path:
        if env := os.environ.get("FLEET_STATE_DIR"):
            return Path(env)
        if self.fleet.state_dir:
            return self.fleet.state_dir
        base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
        return base / "fleet" / self.fleet.id


def shorten(value: Any, limit: int = 80) -> str:
    """repr() of untrusted input, cut so that a huge argument cannot flood an error message."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"an integer of {value.bit_length()} bits"  # (repr of a huge one is slow, or refused)
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__, a recursion limit
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def config_path() -> Path:
    return Path(os.environ.get("FLEET_CONFIG") or DEFAULT_CONFIG)


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def parse_config(data: dict[str, Any], source: str = "<memory>") -> FleetConfig:
    """Validate a parsed TOML document; every problem is a ConfigError naming source and field."""
    if "retired" in data:
        raise ConfigError(f"{source}: retired: not a setting (a cluster is retired by removing it from the file)")
    try:
        config = FleetConfig.model_validate({**data, "source": source})
    except ValidationError as exc:
        problems = "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{source}: {problems}") from None
    from fleet.registry import provider_class

    for name, spec in config.clusters.items():
        for i, pool in enumerate(spec.pools or spec.pool_list):
            where = f"{source}: clusters.{name}" + (f".pools.{i}" if spec.pools else "")
            try:
                cls = provider_class(pool.provider)
            except FleetError as exc:
                raise ConfigError(f"{where}.provider: {exc}") from None
            _check_secrets(spec, cls, f"{source}: clusters.{name}.container.secrets", pool.provider)
            try:
                cls.validate_options(pool.provider_options)
            except ValidationError as exc:
                problems = "; ".join(f"{where}.provider_options.{_where(e['loc'])}: {e['msg']}" for e in exc.errors())
                raise ConfigError(problems) from None
    _check_prices(config)
    check_caps(config)  # after the providers: it asks them for prices
    return config


def _check_prices(config: FleetConfig) -> None:
    """A ConfigError naming the field for a `[providers.<name>] prices` entry of a type the
    provider does not have (its `price_keys` for any pool using it)."""
    from fleet.registry import provider_class

    for provider, limits in config.providers.items():
        where = f"{config.source}: providers.{provider}.prices"
        if not limits.prices:
            continue
        try:
            cls = provider_class(provider)
        except FleetError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        known = cls.price_keys(None)
        for spec in config.clusters.values():
            for pool in (p for p in spec.pool_list if p.provider == provider):
                more = cls.price_keys(cls.validate_options(pool.provider_options))
                known = None if known is None or more is None else known | more
        if known is None:
            raise ConfigError(f"{where}: provider {provider!r} has no instance types to price: "
                              "set price_per_hour on the cluster or pool instead")
        if unknown := sorted(set(limits.prices) - known):
            raise ConfigError(f"{where}.{unknown[0]}: provider {provider!r} has no instance type {unknown[0]!r}")


def _check_secrets(spec: ClusterSpec, cls: Any, where: str, provider: str) -> None:
    """A ConfigError naming the field when `provider` cannot serve a secret reference of `spec`."""
    for secret, ref in spec.container.secrets.items():
        problem = cls.secret_problem(ref)
        if problem:
            raise ConfigError(f"{where}.{secret}: provider {provider!r}: {problem}")


def load_config(path: str | Path | None = None) -> FleetConfig:
    """Read and validate the cluster spec file (`FLEET_CONFIG`, default ./fleet.toml)."""
    path = Path(path) if path else config_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file (set FLEET_CONFIG or pass --config)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None
    return parse_config(data, str(path))
