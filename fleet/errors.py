"""Typed errors. Everything Fleet raises on purpose is a `FleetError`.

Errors carry only JSON-friendly arguments (strings and numbers) so that Celery can send them back
to a caller that imports nothing of Fleet: such a caller sees an exception of the same class name
and message.
"""

from __future__ import annotations


class FleetError(Exception):
    """Base of every error Fleet raises on purpose."""


class ConfigError(FleetError):
    """The cluster spec file is missing, malformed or invalid. The message names file and field."""


class InvalidRequest(FleetError):
    """A request (task argument, CLI argument) is malformed. Nothing was changed."""


class UnknownCluster(InvalidRequest):
    """The request names a cluster the configuration does not declare."""


class ScaleRefused(InvalidRequest):
    """The requested worker number is outside the cluster's [min_workers, max_workers]."""


class WrongFleet(InvalidRequest):
    """The request names another fleet (its `fleet_id` header) than the control plane that
    received it. Nothing was changed."""


class RequestExpired(FleetError):
    """A control plane refused a request whose deadline (its `fleet_deadline` header, in Redis
    time) had passed, or whose sender had given up on it: it was not applied, and never will be."""


class NotApplied(FleetError):
    """The caller gave up waiting for an answer and made sure the request is never applied (no
    control plane had taken it). Nothing was changed."""


class NotReplicated(FleetError):
    """A change was applied on the Redis primary, but no replica confirmed it in time: it is lost
    if the primary fails before a replica has it (`fleet.replication`)."""


class NoAnswer(FleetError):
    """A control plane took the request but its answer did not come in time: it may have been applied."""


class QueueTaken(FleetError):
    """Another fleet's control plane consumes the same public queue of the same Redis database."""


class NoRedis(FleetError):
    """No Redis URL is configured and no embedded Redis is running."""


class RedisRefusesWrites(FleetError):
    """Redis refuses writes for its own state (its memory full: OOM; its disk full: MISCONF; a
    read-only replica). Nothing was changed; the same request succeeds once Redis accepts writes."""


class RedisUnreachable(FleetError):
    """Redis (the broker) could not be reached, or did not answer in time. Nothing may have been sent."""


class ProviderNotFound(FleetError):
    """No provider is registered under that name in the `fleet.providers` entry-point group."""


class ProviderError(FleetError):
    """Base of the errors a provider raises. `cause` is a short text of the underlying error."""

    def __init__(self, message: str, cause: str | None = None) -> None:
        super().__init__(message, cause)
        self.message = message
        self.cause = cause

    def __str__(self) -> str:
        return self.message if not self.cause else f"{self.message} (cause: {self.cause})"


class TransientProviderError(ProviderError):
    """A failure that may succeed when retried (network, 5xx, timeouts)."""


class RateLimited(TransientProviderError):
    """The cloud throttled us; do not call it again before `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0, cause: str | None = None) -> None:
        super().__init__(message, cause)
        self.args = (message, retry_after, cause)
        self.retry_after = retry_after


class ProviderTimeout(TransientProviderError):
    """The provider did not answer within its `call_timeout` (a hung endpoint, a stuck SDK call),
    or it did not lately and its cluster's calls are held off for `retry_after` seconds (`held`)."""

    def __init__(self, message: str, retry_after: float = 1.0, held: bool = False, cause: str | None = None) -> None:
        super().__init__(message, cause)
        self.args = (message, retry_after, held, cause)
        self.retry_after = retry_after
        self.held = held


class QuotaExceeded(ProviderError):
    """The account's quota is used up; launches will fail until something goes away."""


class CapacityError(ProviderError):
    """The cloud has no capacity for this instance type / zone right now."""

    def __init__(self, message: str, instance_type: str | None = None, cause: str | None = None) -> None:
        super().__init__(message, cause)
        self.args = (message, instance_type, cause)
        self.instance_type = instance_type


class PermanentProviderError(ProviderError):
    """Bad configuration or credentials: retrying will not help until a person fixes something."""
