"""What one `aws_ec2` launch call sends and how its answer reads: the boot script (user data),
the tags, a `RunInstances` call (one type, all or nothing) or an instant `CreateFleet` call
(several types, through a launch template made once per cluster, pool and content), and the
typed error of a fleet that launched nothing. The launch loop is `AwsProvider.launch`."""

from __future__ import annotations

import base64
import json
import logging
import re
import shlex
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from fleet.errors import CapacityError, PermanentProviderError, ProviderError, QuotaExceeded
from fleet.provider import Cluster, ContainerSpec
from providers._aws import LaunchCall, Made, aws_errors, error_code, launch_env, map_code, raise_mapped, token
from providers.boot_secrets import aws_fetches
from providers.ec2_options import EC2Options

log = logging.getLogger("providers.aws_ec2")  # the provider's one logger name, whichever module logs

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
USER_DATA_LIMIT = 16 * 1024
TAG_POOL = "fleet:pool"
TAG_REVISION = "fleet:revision"  # the spec revision an instance was launched from (a rollout's memory)
TEMPLATE_EXISTS = "InvalidLaunchTemplateName.AlreadyExistsException"
TEMPLATE_GONE = ("InvalidLaunchTemplateName.NotFoundException", "InvalidLaunchTemplateId.NotFound",
                 "InvalidLaunchTemplateId.VersionNotFound")
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


def user_data(cluster: Cluster[EC2Options], container: ContainerSpec, launch_id: str, workers: int) -> str:
    """The boot script: export the identity, run the worker, power off (= terminate) when it exits."""
    q = shlex.quote
    env = launch_env(cluster, container, launch_id, workers)
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


def launch_tags(cluster: Cluster[EC2Options], call: LaunchCall) -> list[dict[str, str]]:
    """The tags of the instances `call` launches."""
    return tag_list({**identity_tags(cluster), **call.tags(),
                     **({TAG_REVISION: cluster.revision} if cluster.revision else {})})


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


def run_instances(client: Any, cluster: Cluster[EC2Options], itype: str, call: LaunchCall) -> Made:
    """`call` as one RunInstances of type `itype`: all or nothing (MinCount = MaxCount)."""
    opts = cluster.options
    tags = launch_tags(cluster, call)
    params: dict[str, Any] = {
        "ImageId": opts.ami, "InstanceType": itype,
        "MinCount": call.count, "MaxCount": call.count,  # moto launches MinCount; EC2 all or nothing (capacity error)
        "ClientToken": call.token(opts.subnet_id or ""),
        "UserData": user_data(cluster, call.container, call.launch_id, call.workers),
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
    return [(i["InstanceId"], call.workers) for i in resp.get("Instances", [])]


def create_fleet(client: Any, cluster: Cluster[EC2Options], types: Sequence[str], template: str,
                 call: LaunchCall) -> Made:
    """`call` as one instant EC2 Fleet over `types` (preferred first) through launch template
    `template`. Returns the instances it made, fewer than asked when it said why (its `Errors`);
    raises the typed error of its `Errors` when it made none."""
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
    script = base64.b64encode(user_data(cluster, call.container, call.launch_id, call.workers).encode()).decode()
    params: dict[str, Any] = {
        "Type": "instant",
        "ClientToken": call.token(opts.subnet_id or "", "create-fleet"),
        "LaunchTemplateConfigs": [{
            "LaunchTemplateSpecification": {"LaunchTemplateName": template, "Version": "$Default",
                                            "LaunchTemplateSpecificationUserData": script},
            "Overrides": overrides}],
        "TargetCapacitySpecification": {"TotalTargetCapacity": call.count, "DefaultTargetCapacityType": opts.market},
        "TagSpecifications": [{"ResourceType": "instance", "Tags": launch_tags(cluster, call)}],
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
    if len(ids) < call.count:
        log.warning("launch %s: CreateFleet made %d of %d instances: %s", call.launch_id, len(ids), call.count,
                    ", ".join(sorted({str(e.get("ErrorCode")) for e in errors})) or "no reason given")
    return [(iid, call.workers) for iid in ids]


class LaunchTemplates:
    """The launch templates this process knows to exist, by (region, endpoint, name): each is
    made once, the first time a launch needs it (thread-safe)."""

    def __init__(self) -> None:
        self._known: set[tuple[str, str | None, str]] = set()
        self._lock = threading.Lock()

    def name(self, client: Any, cluster: Cluster[EC2Options]) -> str:
        """The name of `cluster`'s launch template, made if this process has not seen it: a
        CreateLaunchTemplate (ClientToken from the name), whose "already exists" is a success."""
        data = template_data(cluster)
        name = template_name(cluster, data)
        key = self._key(client, cluster, name)
        with self._lock:
            if key in self._known:
                return name
        try:
            client.create_launch_template(
                LaunchTemplateName=name, LaunchTemplateData=data, ClientToken=token("launch-template", name),
                VersionDescription="made by Fleet; its name holds a hash of its content: never edit it",
                TagSpecifications=[{"ResourceType": "launch-template", "Tags": tag_list(identity_tags(cluster))}])
        except Exception as exc:  # noqa: BLE001 - raise_mapped re-raises anything not from AWS
            if error_code(exc) != TEMPLATE_EXISTS:
                raise_mapped(exc, "ec2:CreateLaunchTemplate", hints=HINTS)
        with self._lock:
            self._known.add(key)
        return name

    def forget(self, client: Any, cluster: Cluster[EC2Options], name: str) -> None:
        """Someone deleted template `name`: the next `name()` makes it again."""
        with self._lock:
            self._known.discard(self._key(client, cluster, name))

    @staticmethod
    def _key(client: Any, cluster: Cluster[EC2Options], name: str) -> tuple[str, str | None, str]:
        return str(client.meta.region_name), cluster.options.endpoint_url, name
