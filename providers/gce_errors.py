"""How the `gce` provider reads Compute Engine's failures: a google.api_core / transport
exception (`map_error`) or a DONE operation that failed (`operation_error`) as one of Fleet's
typed errors, and which errors api_core's retry may retry (`transient`)."""

from __future__ import annotations

from typing import Any

from fleet.errors import (
    CapacityError,
    PermanentProviderError,
    ProviderError,
    QuotaExceeded,
    RateLimited,
    TransientProviderError,
)
from fleet.provider import import_sdk
from providers.gce_options import GCEOptions

_RATE_REASONS = {"ratelimitexceeded", "userratelimitexceeded", "rate_limit_exceeded"}
_CAPACITY_CODES = ("ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS")


def http_code(exc: BaseException) -> int | None:
    """The HTTP status of an api_core exception, else None."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


def _reasons(exc: BaseException) -> set[str]:
    out = {str(getattr(exc, "reason", "") or "").lower()}
    for e in getattr(exc, "errors", None) or ():
        if isinstance(e, dict):
            out.add(str(e.get("reason", "")).lower())
    return out - {""}


def transient(exc: BaseException) -> bool:
    """What api_core's retry retries: server errors and broken connections, not throttling."""
    code = http_code(exc)
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
    code, reasons, text = http_code(exc), _reasons(exc), str(exc)
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
    if isinstance(exc, (ValueError, TypeError)) and code is None and not transient(exc):
        return PermanentProviderError("invalid Compute request: check provider_options", cause)
    return TransientProviderError("the Compute API failed; retry later", cause)


def is_done(op: Any) -> bool:
    """Whether a Compute operation is DONE."""
    return getattr(op.status, "name", str(op.status)) == "DONE"


def operation_error(op: Any, opts: GCEOptions, machine_type: str) -> ProviderError | None:
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
