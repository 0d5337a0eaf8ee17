"""The `aws_ec2` provider: one EC2 instance per container, `workers_per_container` workers in it.

Options (`provider_options`):
  ami (required)          AMI the instances boot: a Linux with cloud-init, `curl`, and `docker` when
                          `container.image` is set.
  instance_type           an explicit type; default: the cheapest type of `catalogue` that fits the
                          cluster's `hardware` (CPU, memory, GPUs).
  catalogue               list of {name, cpu, memory_mb, gpus, price}; default: a small built-in list
                          of common types with relative on-demand prices.
  subnet_id, security_group_ids, iam_instance_profile (name or ARN), key_name   optional.
  batch_size (100, <= 1000)   instances per RunInstances call.
  page_size (1000, 5..1000)   DescribeInstances page size.
  region, endpoint_url, retry_mode (standard | adaptive), max_attempts   see providers/_aws.py.

Identity: the handle is the instance id. Instances are tagged at launch with `fleet:id`,
`fleet:cluster`, `fleet:launch`, `fleet:workers`, `fleet:batch` and `Name`. Their user data is a
shell script that exports `FLEET_ID`, `FLEET_CLUSTER`, `FLEET_WORKERS`, `FLEET_LAUNCH_ID`, the
container's `env`, and `FLEET_HANDLE` (the instance id, read from the instance metadata service
with an IMDSv2 token), runs the worker (`docker run` of `container.image` when one is given,
otherwise `container.command` directly) and runs `shutdown -h now` when it exits; with
`InstanceInitiatedShutdownBehavior=terminate` the instance then goes away, so a dead control plane
leaks nothing. Fleet puts no credential in user data (anyone allowed DescribeInstanceAttribute
can read it): do not put secrets in `container.env` either; give the instance a role instead.

Idempotency: every RunInstances call carries a ClientToken derived from the launch id, the call
index and the subnet; and on any attempt but a launch's first (`Cluster.first_attempt`), the
instances tagged with the launch id are looked up (in any state) and calls already made are
adopted, so a retried launch never launches twice, even where ClientToken is not honoured.

Calls at the floor: Fleet sizes launches in whole `batch_size` calls (`launch_batch`); a sweep is
one paginated DescribeInstances filtered by the fleet's tags (`observe`: the listing and every
status; never by an id list, which could be empty: that means every instance); a kill is
TerminateInstances alone, its answer giving each instance's state (no describe to confirm).
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Sequence
from typing import Any

from pydantic import Field

from fleet.catalogue import InstanceType, cheapest_fit
from fleet.errors import PermanentProviderError, ProviderError, TransientProviderError
from fleet.provider import Cluster, ContainerSpec, Hardware, Observation, WorkerStatus
from providers._aws import (
    AwsOptions,
    AwsProvider,
    aws_errors,
    chunks,
    error_code,
    plan_calls,
    raise_mapped,
    tag_dict,
    token,
)

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
STATUS = {"pending": WorkerStatus.INITIALIZING, "running": WorkerStatus.RUNNING}  # anything else: stopped
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
USER_DATA_LIMIT = 16 * 1024
HINTS = {
    "InvalidAMIID": "fix provider_options.ami", "InvalidSubnetID": "fix provider_options.subnet_id",
    "InvalidGroup": "fix provider_options.security_group_ids", "InvalidKeyPair": "fix provider_options.key_name",
    "InvalidParameterCombination": "check provider_options (instance_type, subnet_id, security_group_ids)",
    "InvalidParameterValue": "check provider_options (instance_type, ami, iam_instance_profile, subnet_id)",
    "InvalidInstanceType": "fix provider_options.instance_type or the catalogue",
    "IdempotentParameterMismatch": "the launch was retried with other parameters; it will be retried with a new id",
}


class EC2Options(AwsOptions):
    ami: str = Field(min_length=1, description="AMI id the instances boot")
    instance_type: str | None = Field(default=None, min_length=1, description="explicit type; else from catalogue")
    catalogue: tuple[InstanceType, ...] = Field(default=DEFAULT_CATALOGUE, min_length=1,
                                                description="types to choose the cheapest fitting one from")
    subnet_id: str | None = Field(default=None, min_length=1, description="subnet to launch in")
    security_group_ids: tuple[str, ...] = Field(default=(), description="security groups of the instances")
    iam_instance_profile: str | None = Field(default=None, min_length=1, description="instance profile name or ARN")
    key_name: str | None = Field(default=None, min_length=1, description="SSH key pair name")
    batch_size: int = Field(default=100, ge=1, le=1000, description="instances per RunInstances call")
    page_size: int = Field(default=1000, ge=5, le=1000, description="DescribeInstances page size")


def user_data(cluster: Cluster[EC2Options], container: ContainerSpec, launch_id: str, workers: int) -> str:
    """The boot script: export the identity, run the worker, power off (= terminate) when it exits."""
    q = shlex.quote
    env = {**container.env, "FLEET_ID": cluster.fleet_id, "FLEET_CLUSTER": cluster.name,
           "FLEET_WORKERS": str(workers), "FLEET_LAUNCH_ID": launch_id}
    bad = [k for k in env if not ENV_NAME.fullmatch(k)]
    if bad:
        raise PermanentProviderError(f"container.env of cluster {cluster.name!r} has names a shell cannot export: "
                                     f"{', '.join(map(repr, bad))}: rename them")
    names = [*env, "FLEET_HANDLE"]
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


class EC2Provider(AwsProvider[EC2Options]):
    options_model = EC2Options
    first_check = 20.0  # an instance is pending for 10-40 s
    listing_grace = 10.0  # DescribeInstances may not list a fresh instance for a few seconds

    service = "ec2"

    @staticmethod
    def instance_type(opts: EC2Options, hardware: Hardware, exclude: frozenset[str] = frozenset()) -> str:
        """The explicit type, else the cheapest catalogue type that fits `hardware` and is not
        excluded (Fleet excludes the types that just had no capacity)."""
        return opts.instance_type or cheapest_fit(opts.catalogue, hardware, exclude).name

    # -- the contract ----------------------------------------------------------------------
    def run_workers(self, cluster: Cluster[EC2Options], container: ContainerSpec, hardware: Hardware, count: int,
                    *, launch_id: str) -> list[str]:
        opts = cluster.options
        itype = self.instance_type(opts, hardware, cluster.excluded_types)
        calls = plan_calls(cluster.containers_for(count), opts.batch_size)
        if not calls:
            return []
        client = self.client(cluster)
        done: dict[int, list[tuple[str, int]]] = {}
        # what an earlier attempt of this launch made (none on a first attempt: no look-up)
        earlier = [] if cluster.first_attempt else self._describe(
            cluster, [{"Name": "tag:fleet:launch", "Values": [launch_id]}])
        for inst in earlier:
            tags = tag_dict(inst.get("Tags"))
            if tags.get("fleet:batch", "").isdigit():
                done.setdefault(int(tags["fleet:batch"]), []).append(
                    (inst["InstanceId"], int(tags.get("fleet:workers", "1"))))
        handles: list[str] = []
        for index, (workers, n) in enumerate(calls):
            if index in done:  # launched by an earlier attempt of this launch: adopt
                got = sorted(done[index])
            else:
                try:
                    got = self._launch(client, opts, cluster, container, itype, launch_id, index, workers, n)
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
                if len(got) < n:
                    log.warning("launch %s: RunInstances started %d of %d instances", launch_id, len(got), n)
            for iid, w in got:
                handles += [iid] * w
        return handles

    def _launch(self, client: Any, opts: EC2Options, cluster: Cluster[EC2Options], container: ContainerSpec, itype: str,
                launch_id: str, index: int, workers: int, n: int) -> list[tuple[str, int]]:
        tags = [{"Key": k, "Value": v} for k, v in {
            "fleet:id": cluster.fleet_id, "fleet:cluster": cluster.name, "fleet:launch": launch_id,
            "fleet:workers": str(workers), "fleet:batch": str(index),
            "Name": f"fleet-{cluster.fleet_id}-{cluster.name}"}.items()]
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
        if opts.subnet_id:
            params["SubnetId"] = opts.subnet_id
        if opts.security_group_ids:
            params["SecurityGroupIds"] = list(opts.security_group_ids)
        if opts.key_name:
            params["KeyName"] = opts.key_name
        if opts.iam_instance_profile:
            prof = opts.iam_instance_profile
            params["IamInstanceProfile"] = {"Arn": prof} if prof.startswith("arn:") else {"Name": prof}
        with aws_errors("ec2:RunInstances", instance_type=itype, hints=HINTS):
            resp = client.run_instances(**params)
        return [(i["InstanceId"], workers) for i in resp.get("Instances", [])]

    def launch_batch(self, cluster: Cluster[EC2Options]) -> int:
        return cluster.options.batch_size

    def observe(self, cluster: Cluster[EC2Options], handles: Sequence[str]) -> Observation:
        """The listing and every status from one DescribeInstances (all pages)."""
        found = self._describe(cluster, [{"Name": "instance-state-name", "Values": list(LISTED)}])
        listed = {i["InstanceId"]: int(tag_dict(i.get("Tags")).get("fleet:workers", "1")) for i in found}
        state = {i["InstanceId"]: i["State"]["Name"] for i in found}
        asked = list(dict.fromkeys([*handles, *listed]))
        return Observation(listed, {h: STATUS.get(state.get(h, ""), WorkerStatus.STOPPED) for h in asked})

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
                for _ in range(int(tag_dict(i.get("Tags")).get("fleet:workers", "1")))]

    def list_workers(self, cluster: Cluster[EC2Options]) -> dict[str, int]:
        return {i["InstanceId"]: int(tag_dict(i.get("Tags")).get("fleet:workers", "1"))
                for i in self._describe(cluster, [{"Name": "instance-state-name", "Values": list(LISTED)}])}

    # -- describe --------------------------------------------------------------------------
    def _describe(self, cluster: Cluster[EC2Options], extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every instance tagged with this fleet id and cluster (and `extra` filters), all pages."""
        opts = cluster.options
        filters = [{"Name": "tag:fleet:id", "Values": [cluster.fleet_id]},
                   {"Name": "tag:fleet:cluster", "Values": [cluster.name]}, *extra]
        pages = self.client(cluster).get_paginator("describe_instances").paginate(
            Filters=filters, PaginationConfig={"PageSize": opts.page_size})
        instances: list[dict[str, Any]] = []
        with aws_errors("ec2:DescribeInstances", hints=HINTS):
            for page in pages:
                for reservation in page.get("Reservations", []):
                    instances.extend(reservation.get("Instances", []))
        return instances
