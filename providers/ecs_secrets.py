"""`container.secrets` on ECS: a task definition revision that Fleet registers per content.

RunTask's overrides cannot carry secrets (only plain `environment`), so a cluster with secrets
runs a task definition of its own: the operator's `task_definition` as DescribeTaskDefinition
returns it, with the worker container's `secrets` extended by `{name, valueFrom}` for each one.
Its family is `<the operator's family>-fleet-<hash>`, the hash covering the operator's revision
ARN, the container name and the references, so a changed secret or a new revision of the
operator's definition makes a new family and never edits one in use. Before registering, the
family is described: a definition another control-plane process already registered is reused.

ECS fetches the values when it starts the task, with the task definition's execution role
(`executionRoleArn`, which must allow ssm:GetParameters, secretsmanager:GetSecretValue and
kms:Decrypt for customer-managed keys). The definition, DescribeTasks and the overrides hold the
references only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from fleet.errors import PermanentProviderError
from fleet.secrets import parse_ref
from providers._aws import aws_errors, error_code, raise_mapped, token

#: what DescribeTaskDefinition returns that RegisterTaskDefinition takes back
REGISTRABLE = ("taskRoleArn", "executionRoleArn", "networkMode", "containerDefinitions", "volumes",
               "placementConstraints", "requiresCompatibilities", "cpu", "memory", "pidMode", "ipcMode",
               "proxyConfiguration", "inferenceAccelerators", "ephemeralStorage", "runtimePlatform")
HINTS = {"ClientException": "check provider_options.task_definition (it must exist) and the execution role"}

_known: dict[tuple[str, str | None, str], str] = {}  # (region, endpoint, family) -> ARN registered or found
_lock = threading.Lock()


def value_from(ref: str) -> str:
    """The `valueFrom` of a reference: an SSM parameter's name or ARN, a Secrets Manager ARN."""
    return parse_ref(ref).target


def secret_problem(ref: str) -> str | None:
    """Why ECS cannot take `ref` (None: it can): a Secrets Manager secret must be named by ARN."""
    parsed = parse_ref(ref)
    if parsed.scheme == "secretsmanager" and not parsed.target.startswith("arn:"):
        return "ECS takes a Secrets Manager secret by its full ARN: write secretsmanager:arn:aws:secretsmanager:..."
    return None


def task_definition(client: Any, base: str, container_name: str, secrets: Mapping[str, str]) -> str:
    """The ARN of the task definition `base` with `secrets` added to container `container_name`
    (registered now if no process registered it before); `base` itself when there are none."""
    if not secrets:
        return base
    with aws_errors("ecs:DescribeTaskDefinition", hints=HINTS):
        found = client.describe_task_definition(taskDefinition=base)["taskDefinition"]
    family = derived_family(found, container_name, secrets)
    key = (str(client.meta.region_name), client.meta.endpoint_url, family)
    with _lock:
        if key in _known:
            return _known[key]
    arn = _existing(client, family) or _register(client, found, family, container_name, secrets)
    with _lock:
        _known[key] = arn
    return arn


def derived_family(base: Mapping[str, Any], container_name: str, secrets: Mapping[str, str]) -> str:
    digest = token(str(base.get("taskDefinitionArn")), container_name, json.dumps(dict(secrets), sort_keys=True),
                   prefix="", length=16)
    return f"{str(base.get('family', 'fleet'))[:200]}-fleet-{digest}"


def _existing(client: Any, family: str) -> str | None:
    try:
        found = client.describe_task_definition(taskDefinition=family)["taskDefinition"]
    except Exception as exc:  # noqa: BLE001 - raise_mapped re-raises anything not from AWS
        if error_code(exc) == "ClientException":  # ECS's answer for a family it does not have
            return None
        raise_mapped(exc, "ecs:DescribeTaskDefinition", hints=HINTS)
    return str(found["taskDefinitionArn"]) if found.get("status", "ACTIVE") == "ACTIVE" else None


def _register(client: Any, base: Mapping[str, Any], family: str, container_name: str,
              secrets: Mapping[str, str]) -> str:
    if not base.get("executionRoleArn"):
        raise PermanentProviderError(
            f"task definition {base.get('taskDefinitionArn')} has no executionRoleArn: ECS reads container.secrets "
            "with the execution role; give the task definition one that may read them")
    containers = [dict(c) for c in base.get("containerDefinitions") or []]
    worker = next((c for c in containers if c.get("name") == container_name), None)
    if worker is None:
        raise PermanentProviderError(f"task definition {base.get('taskDefinitionArn')} has no container "
                                     f"{container_name!r}: fix provider_options.container_name")
    kept = [s for s in worker.get("secrets") or [] if s.get("name") not in secrets]
    worker["secrets"] = kept + [{"name": n, "valueFrom": value_from(r)} for n, r in secrets.items()]
    params = {k: base[k] for k in REGISTRABLE if base.get(k) not in (None, [], {})}
    params["containerDefinitions"] = containers
    with aws_errors("ecs:RegisterTaskDefinition", hints=HINTS):
        made = client.register_task_definition(family=family, **params)["taskDefinition"]
    return str(made["taskDefinitionArn"])
