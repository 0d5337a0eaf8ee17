"""aws_ec2's capacity pools with spot, against the session's moto server (real HTTP): pool tags,
spot market options, spot capacity errors, launches through an instant EC2 Fleet (several types,
idempotent by launch id, a lost answer, a short answer), reclaimed instances in `observe`, and
interruption notices on an SQS queue.

What moto does not model, and how these tests stand in for it: ClientToken (a proxy in front of
moto replays answers by token, as EC2 does), a CreateFleet answer with `Errors` (the proxy asks
moto for fewer instances and adds the errors to its answer), an instance EC2 reclaims
(`fleet.testing.backends.aws.reclaim_spot_instance` sets moto's own instance), and EventBridge
(the events are put on the queue in the shape EventBridge sends).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from pydantic import ValidationError

from fleet.errors import CapacityError, PermanentProviderError, QuotaExceeded, TransientProviderError
from fleet.provider import Cause, Cluster, Hardware, Interruption, WorkerStatus
from fleet.testing.backends.aws import reclaim_spot_instance
from providers.aws_ec2 import (
    DEFAULT_MAX_TYPES,
    EC2Options,
    EC2Provider,
    parse_notice,
    template_data,
    template_name,
    user_data,
)
from tests.kits.aws import REGION, AwsWorld
from tests.kits.aws_faults import UNAVAILABLE, FaultProxy
from tests.test_aws import CMD, SMALL, Calls, capture, ec2, ec2_error, inject, launch

__all__ = ["ec2"]  # the fixture, shared with tests/test_aws.py

CHEAPEST_SIX = ["t3.micro", "t3.small", "t3.medium", "c6i.large", "m6i.large", "r6i.large"]
SPOT_CODES = ["InsufficientInstanceCapacity", "SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded",
              "UnfulfillableCapacity"]


#: moto keeps a backend per region, and its describes scan every instance of one: these tests
#: keep to a region of their own, so they neither slow nor are slowed by the other AWS tests
SPOT_REGION = "us-west-2"


# -- helpers ------------------------------------------------------------------------------

@pytest.fixture
def spot(ec2: Any) -> Any:
    """tests/test_aws.py's `ec2` (a fresh provider and cluster, cleaned up), in SPOT_REGION."""
    def make(workers_per_container: int = 1, **options: Any) -> tuple[EC2Provider, Cluster]:
        return ec2(workers_per_container, **{"region": SPOT_REGION, **options})

    return make


@pytest.fixture
def moto_ec2(aws_world: AwsWorld) -> Any:
    """An EC2 client straight to moto (not through the provider, nor a proxy): what EC2 holds."""
    return boto3.client("ec2", endpoint_url=aws_world.url, region_name=SPOT_REGION)


@pytest.fixture
def moto_sqs(aws_world: AwsWorld) -> Any:
    return boto3.client("sqs", endpoint_url=aws_world.url, region_name=SPOT_REGION)


def instances(moto_ec2: Any, cluster: Cluster, **tags: str) -> list[dict[str, Any]]:
    """Every live instance of `cluster`'s fleet id with these tags, as moto holds them."""
    filters = [{"Name": "tag:fleet:id", "Values": [cluster.fleet_id]},
               {"Name": "instance-state-name", "Values": ["pending", "running"]},
               *({"Name": f"tag:{k.replace('_', ':')}", "Values": [v]} for k, v in tags.items())]
    pages = moto_ec2.get_paginator("describe_instances").paginate(Filters=filters)
    return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]


def fleet_reply(codes: list[str], itype: str = "t3.micro") -> bytes:
    """A CreateFleet answer that made nothing and says why, in EC2's wire format."""
    return (b'<?xml version="1.0" encoding="UTF-8"?><CreateFleetResponse xmlns="http://ec2.amazonaws.com/doc/'
            b'2016-11-15/"><requestId>r-1</requestId><fleetId>fleet-00000000-0000-0000-0000-000000000000</fleetId>'
            + error_set(codes, itype) + b"<fleetInstanceSet/></CreateFleetResponse>")


def error_set(codes: list[str], itype: str) -> bytes:
    items = "".join(f"<item><launchTemplateAndOverrides><overrides><instanceType>{itype}</instanceType></overrides>"
                    f"</launchTemplateAndOverrides><lifecycle>spot</lifecycle><errorCode>{c}</errorCode>"
                    f"<errorMessage>injected {c}</errorMessage></item>" for c in codes)
    return f"<errorSet>{items}</errorSet>".encode()


class FleetProxy(FaultProxy):
    """The fault proxy of tests/kits/aws_faults.py, for CreateFleet too: EC2's ClientToken
    replay (`replay`), lost answers (`lose_fleet`: the call reaches moto, its answer is a 503,
    then an outage) and short answers (`short`: moto is asked for `made` instances only and the
    answer carries `codes` in its `Errors`, as EC2 Fleet answers when it found part of the
    capacity)."""

    def __init__(self, upstream: str, outage: float = 2.0, replay: bool = True) -> None:
        super().__init__(upstream, outage)
        self.replay = replay
        self.fleet_lost = 0
        self._fleet_lose = 0
        self._short: tuple[int, list[str]] | None = None
        self._fleet_replies: dict[str, tuple[int, list[tuple[str, str]], bytes]] = {}

    def lose_fleet(self, n: int = 1) -> None:
        with self._mutex:
            self._fleet_lose += n

    def short(self, made: int, *codes: str) -> None:
        with self._mutex:
            self._short = (made, list(codes))

    def handle(self, method: str, path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        form = urllib.parse.parse_qs(body.decode(errors="replace"))
        if (form.get("Action") or [""])[0] != "CreateFleet":
            return super().handle(method, path, headers, body)
        tok = (form.get("ClientToken") or [""])[0]
        with self._mutex:
            self.calls["CreateFleet"] += 1
            if time.monotonic() < self._down_until:
                return 503, [("Content-Type", "text/xml")], UNAVAILABLE
            if self.replay and tok in self._fleet_replies:
                self.calls["replayed"] += 1
                return self._fleet_replies[tok]
            short, self._short = self._short, None
        if short and short[0] == 0:
            status, out, reply = 200, [("Content-Type", "text/xml")], fleet_reply(short[1])
        elif short:
            fields = [(k, str(short[0]) if k == "TargetCapacitySpecification.TotalTargetCapacity" else v)
                      for k, v in urllib.parse.parse_qsl(body.decode())]
            sent = {k: v for k, v in headers.items() if k.lower() != "content-length"}
            status, out, reply = self._forward(method, path, sent, urllib.parse.urlencode(fields).encode())
            reply = reply.replace(b"</CreateFleetResponse>", error_set(short[1], "t3.micro") + b"</CreateFleetResponse>")
        else:
            status, out, reply = self._forward(method, path, headers, body)
        with self._mutex:
            if status == 200:
                self._fleet_replies[tok] = (status, out, reply)
                if self._fleet_lose:
                    self._fleet_lose -= 1
                    self.fleet_lost += 1
                    self._down_until = time.monotonic() + self.outage
                    return 503, [("Content-Type", "text/xml")], UNAVAILABLE
        return status, out, reply


@pytest.fixture
def proxy(aws_world: AwsWorld) -> Iterator[FleetProxy]:
    """A FleetProxy in front of moto; ask for it before `ec2`, so that it outlives the clean-up."""
    with FleetProxy(aws_world.url, outage=3.0) as p:
        yield p


# -- options and choices ------------------------------------------------------------------

def test_launch_types_spot_takes_the_cheapest_fits_on_demand_the_cheapest_one() -> None:
    def types(hw: Hardware = SMALL, exclude: frozenset[str] = frozenset(), **o: Any) -> list[str]:
        return EC2Provider.launch_types(EC2Provider.validate_options({"ami": "a", **o}), hw, exclude)

    assert types() == ["t3.micro"]  # on-demand: RunInstances of the cheapest fit, as before
    assert types(market="spot") == CHEAPEST_SIX == CHEAPEST_SIX[:DEFAULT_MAX_TYPES["spot"]]
    assert types(market="spot", max_types=2, exclude=frozenset({"t3.micro"})) == ["t3.small", "t3.medium"]
    assert types(max_types=3) == CHEAPEST_SIX[:3]  # on-demand may ask for a fleet too
    assert types(Hardware(cpu=1, gpus=1), market="spot") == ["g4dn.xlarge", "g4dn.2xlarge", "g4dn.12xlarge"]
    assert types(market="spot", instance_type="c6i.large") == ["c6i.large"]
    assert types(instance_types=["m6i.large", "c6i.large", "t3.small"], exclude=frozenset({"c6i.large"})) == [
        "m6i.large", "t3.small"]
    with pytest.raises(CapacityError, match="instance_types"):
        types(instance_types=["m6i.large"], exclude=frozenset({"m6i.large"}))
    with pytest.raises(CapacityError):  # every fit is held: the pool has nothing left to try
        types(market="spot", exclude=frozenset(t.name for t in EC2Options(ami="a").catalogue))
    with pytest.raises(PermanentProviderError, match="no instance type in the catalogue fits"):
        types(Hardware(gpus=64), market="spot")


@pytest.mark.parametrize("options,field", [
    ({"market": "cheap"}, "market"),
    ({"spot_max_price": "0.05"}, "spot_max_price"),  # on-demand has no spot price
    ({"market": "spot", "spot_max_price": "five"}, "spot_max_price"),
    ({"instance_type": "t3.micro", "instance_types": ["t3.small"]}, "instance_types"),
    ({"instance_types": ["t3.small", "t3.small"]}, "instance_types"),
    ({"instance_types": []}, "instance_types"),
    ({"interruption_queue_url": "sqs/q"}, "interruption_queue_url"),
    ({"max_types": 0}, "max_types"),
])
def test_spot_options_are_validated(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        EC2Provider.validate_options({"ami": "a", **options})


def test_user_data_names_the_pool_and_the_template_name_follows_content(spot: Any) -> None:
    _, cluster = spot(market="spot")
    spot = dataclasses.replace(cluster, pool="spot")
    assert "export FLEET_POOL=spot" in user_data(spot, CMD, "L", 1)
    assert "FLEET_POOL" not in user_data(cluster, CMD, "L", 1)
    name = template_name(spot, template_data(spot))
    assert name == template_name(spot, template_data(spot)) and len(name) <= 128 and "spot" in name
    other_ami = dataclasses.replace(spot, options=spot.options.model_copy(update={"ami": "ami-other"}))
    assert len({name, template_name(cluster, template_data(cluster)),
                template_name(other_ami, template_data(other_ami))}) == 3


# -- pools --------------------------------------------------------------------------------

def test_two_pools_are_tagged_listed_observed_and_killed_apart(spot: Any, moto_ec2: Any) -> None:
    provider, cluster = spot(workers_per_container=2)
    spot, steady = dataclasses.replace(cluster, pool="spot"), dataclasses.replace(cluster, pool="steady")
    a = provider.run_workers(spot, CMD, SMALL, 4, launch_id=launch())
    b_id = launch()
    b = provider.run_workers(steady, CMD, SMALL, 2, launch_id=b_id)
    assert {i["InstanceId"] for i in instances(moto_ec2, cluster, fleet_pool="spot")} == set(a)
    assert {i["InstanceId"] for i in instances(moto_ec2, cluster, fleet_pool="steady")} == set(b)
    assert provider.list_workers(spot) == dict.fromkeys(set(a), 2)
    assert provider.observe(steady, []).listed == dict.fromkeys(set(b), 2)
    assert set(provider.list_workers(cluster)) == set(a) | set(b)  # a cluster without pools sees every one
    assert provider.find_launch(spot, b_id) == [] and sorted(provider.find_launch(steady, b_id)) == sorted(b)
    # a retried launch of one pool looks up that pool's instances only
    assert sorted(provider.run_workers(steady, CMD, SMALL, 2, launch_id=b_id)) == sorted(b)
    provider.kill_workers(spot, list(set(a)))
    assert provider.list_workers(spot) == {} and set(provider.list_workers(steady)) == set(b)


# -- spot through RunInstances ------------------------------------------------------------

def test_spot_market_options_reach_ec2_and_on_demand_has_none(spot: Any, moto_ec2: Any) -> None:
    provider, cluster = spot(market="spot", instance_type="t3.small", spot_max_price="0.02")
    sent = capture(provider.client(cluster), "RunInstances")
    handles = provider.run_workers(cluster, CMD, SMALL, 2, launch_id=launch())
    assert sent[0]["InstanceMarketOptions"] == {"MarketType": "spot", "SpotOptions": {
        "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate", "MaxPrice": "0.02"}}
    seen = {i["InstanceId"]: i for i in instances(moto_ec2, cluster)}
    assert set(seen) == set(handles)
    assert {i.get("InstanceLifecycle") for i in seen.values()} == {"spot"}
    assert {i["InstanceType"] for i in seen.values()} == {"t3.small"}

    provider, cluster = spot()  # on-demand, as before
    sent = capture(provider.client(cluster), "RunInstances")
    handles = provider.run_workers(cluster, CMD, SMALL, 1, launch_id=launch())
    assert "InstanceMarketOptions" not in sent[0]
    assert [i.get("InstanceLifecycle") for i in instances(moto_ec2, cluster)] == [None]


@pytest.mark.parametrize("code", SPOT_CODES)
def test_spot_capacity_errors_of_run_instances_are_capacity_errors(spot: Any, code: str) -> None:
    provider, cluster = spot(market="spot", instance_type="c6i.large")
    inject(provider.client(cluster), "RunInstances", 400 if code != "InsufficientInstanceCapacity" else 500,
           ec2_error(code))
    with pytest.raises(CapacityError) as info:
        provider.run_workers(cluster, CMD, SMALL, 2, launch_id=launch())
    assert type(info.value) is CapacityError and code in str(info.value)
    # the account's spot limit is no type's fault: no other type of this pool would do better
    assert info.value.instance_type == (None if code == "MaxSpotInstanceCountExceeded" else "c6i.large")
    assert provider.list_workers(cluster) == {}


# -- spot through CreateFleet -------------------------------------------------------------

def test_create_fleet_launches_over_the_cheapest_types_once_per_launch_id(spot: Any, moto_ec2: Any) -> None:
    subnet = moto_ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    group = moto_ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
    provider, cluster = spot(workers_per_container=3, market="spot", subnet_id=subnet, security_group_ids=[group])
    cluster = dataclasses.replace(cluster, pool="spot", excluded_types=frozenset({"t3.small"}), first_attempt=True)
    client = provider.client(cluster)
    calls, sent = Calls(client), capture(client, "CreateFleet")
    lid = launch()
    handles = provider.run_workers(cluster, CMD, SMALL, 7, launch_id=lid)
    assert sorted(handles.count(h) for h in set(handles)) == [1, 3, 3]
    assert dict(calls) == {"CreateLaunchTemplate": 1, "CreateFleet": 2}  # full containers, then the partial one
    types = [t for t in CHEAPEST_SIX + ["c6i.xlarge"] if t != "t3.small"]
    for p, workers in zip(sent, (3, 1)):
        assert p["Type"] == "instant" and len(p["ClientToken"]) <= 64
        assert p["TargetCapacitySpecification"] == {"TotalTargetCapacity": 2 if workers == 3 else 1,
                                                    "DefaultTargetCapacityType": "spot"}
        assert p["SpotOptions"]["AllocationStrategy"] == "price-capacity-optimized"
        (config,) = p["LaunchTemplateConfigs"]
        assert [o["InstanceType"] for o in config["Overrides"]] == types  # cheapest first, held type left out
        assert [o["Priority"] for o in config["Overrides"]] == [float(i) for i in range(6)]
        assert {o["SubnetId"] for o in config["Overrides"]} == {subnet}
        script = base64.b64decode(config["LaunchTemplateSpecification"]["LaunchTemplateSpecificationUserData"])
        assert script.decode() == user_data(cluster, CMD, lid, workers)
    assert sent[0]["ClientToken"] != sent[1]["ClientToken"]
    made = {i["InstanceId"]: i for i in instances(moto_ec2, cluster)}
    assert set(made) == set(handles)
    for i in made.values():
        tags = {t["Key"]: t["Value"] for t in i["Tags"]}
        assert tags["fleet:launch"] == lid and tags["fleet:pool"] == "spot" and tags["fleet:cluster"] == "ec2"
        assert tags["fleet:workers"] == str(handles.count(i["InstanceId"]))
        assert i.get("InstanceLifecycle") == "spot" and i["InstanceType"] in types and i["SubnetId"] == subnet
    name = sent[0]["LaunchTemplateConfigs"][0]["LaunchTemplateSpecification"]["LaunchTemplateName"]
    template = moto_ec2.describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"]
    assert {t["Key"]: t["Value"] for t in template[0]["Tags"]}["fleet:pool"] == "spot"
    (version,) = moto_ec2.describe_launch_template_versions(LaunchTemplateName=name)["LaunchTemplateVersions"]
    data = version["LaunchTemplateData"]
    assert data["InstanceInitiatedShutdownBehavior"] == "terminate" and data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["SecurityGroupIds"] == [group] and data["ImageId"] == cluster.options.ami
    assert not {"InstanceMarketOptions", "UserData", "InstanceType"} & set(data)  # the fleet's call gives those

    # a redelivered run task, on another control-plane worker: nothing new, the same handles
    again = EC2Provider(provider.context)
    calls = Calls(again.client(cluster))
    retry = dataclasses.replace(cluster, first_attempt=False)
    assert sorted(again.run_workers(retry, CMD, SMALL, 7, launch_id=lid)) == sorted(handles)
    assert dict(calls) == {"DescribeInstances": 1}  # the launch-tag look-up; no template, no fleet
    assert set(made) == {i["InstanceId"] for i in instances(moto_ec2, cluster)}
    # a new launch from a fresh process finds the template there ("already exists" is a success)
    assert len(again.run_workers(cluster, CMD, SMALL, 3, launch_id=launch())) == 3
    assert calls["CreateLaunchTemplate"] == 1 and calls["CreateFleet"] == 1
    assert len(instances(moto_ec2, cluster)) == 3 + 1


def test_create_fleet_on_demand_is_prioritized_and_leaves_instances_on_demand(spot: Any, moto_ec2: Any) -> None:
    provider, cluster = spot(instance_types=["m6i.large", "c6i.large"])
    sent = capture(provider.client(cluster), "CreateFleet")
    handles = provider.run_workers(cluster, CMD, SMALL, 3, launch_id=launch())
    assert len(set(handles)) == 3
    assert sent[0]["TargetCapacitySpecification"]["DefaultTargetCapacityType"] == "on-demand"
    assert sent[0]["OnDemandOptions"] == {"AllocationStrategy": "prioritized"} and "SpotOptions" not in sent[0]
    assert [o["InstanceType"] for o in sent[0]["LaunchTemplateConfigs"][0]["Overrides"]] == ["m6i.large", "c6i.large"]
    assert {i.get("InstanceLifecycle") for i in instances(moto_ec2, cluster)} == {None}


def test_a_launch_template_deleted_by_someone_is_made_again(spot: Any, moto_ec2: Any) -> None:
    provider, cluster = spot(market="spot")
    sent = capture(provider.client(cluster), "CreateFleet")
    provider.run_workers(cluster, CMD, SMALL, 1, launch_id=launch())
    name = sent[0]["LaunchTemplateConfigs"][0]["LaunchTemplateSpecification"]["LaunchTemplateName"]
    moto_ec2.delete_launch_template(LaunchTemplateName=name)
    calls = Calls(provider.client(cluster))
    assert len(provider.run_workers(cluster, CMD, SMALL, 2, launch_id=launch())) == 2
    assert calls["CreateLaunchTemplate"] == 1 and calls["CreateFleet"] == 2  # refused, then made again
    assert moto_ec2.describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"]


def test_a_lost_create_fleet_answer_then_a_retry_makes_no_duplicates(proxy: FleetProxy, spot: Any,
                                                                     moto_ec2: Any) -> None:
    provider, cluster = spot(market="spot", endpoint_url=proxy.url, batch_size=5)
    lid = launch()
    proxy.replay = False  # as moto: the look-up by launch tag alone must prevent a second launch
    proxy.lose_fleet(1)
    with pytest.raises(TransientProviderError):  # unknown outcome: an error, never a short list
        provider.run_workers(dataclasses.replace(cluster, first_attempt=True), CMD, SMALL, 8, launch_id=lid)
    assert proxy.fleet_lost == 1
    made = {i["InstanceId"] for i in instances(moto_ec2, cluster, fleet_launch=lid)}
    assert len(made) == 5  # the first call landed; its answer was lost, so the second was never made
    time.sleep(proxy.outage)
    retry = dataclasses.replace(cluster, first_attempt=False)
    handles = provider.run_workers(retry, CMD, SMALL, 8, launch_id=lid)
    assert len(handles) == 8 and made <= set(handles)
    assert {i["InstanceId"] for i in instances(moto_ec2, cluster)} == set(handles)  # no duplicate
    assert sorted(provider.run_workers(retry, CMD, SMALL, 8, launch_id=lid)) == sorted(handles)  # and again


def test_a_lost_create_fleet_answer_retried_by_token_makes_no_duplicates(proxy: FleetProxy, spot: Any,
                                                                         moto_ec2: Any) -> None:
    provider, cluster = spot(market="spot", endpoint_url=proxy.url)
    lid = launch()
    proxy.lose_fleet(1)
    first = dataclasses.replace(cluster, first_attempt=True)
    with pytest.raises(TransientProviderError):
        provider.run_workers(first, CMD, SMALL, 4, launch_id=lid)
    time.sleep(proxy.outage)
    # even as a first attempt (no look-up), the same launch id sends the same ClientToken, which
    # EC2 (here the proxy) answers with the first call's instances
    handles = EC2Provider(provider.context).run_workers(first, CMD, SMALL, 4, launch_id=lid)
    assert proxy.calls["replayed"] >= 1
    assert {i["InstanceId"] for i in instances(moto_ec2, cluster)} == set(handles) and len(handles) == 4


def test_a_short_create_fleet_answer_returns_what_it_made(proxy: FleetProxy, spot: Any, moto_ec2: Any,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    provider, cluster = spot(market="spot", endpoint_url=proxy.url, batch_size=5)
    proxy.short(2, "InsufficientInstanceCapacity", "UnfulfillableCapacity")
    with caplog.at_level(logging.WARNING, logger="providers.aws_ec2"):
        handles = provider.run_workers(cluster, CMD, SMALL, 10, launch_id=launch())
    assert len(handles) == 2 == len(instances(moto_ec2, cluster))
    assert proxy.calls["CreateFleet"] == 1  # the fleet found no more: the second call is left to Fleet
    assert "2 of 5" in caplog.text and "InsufficientInstanceCapacity" in caplog.text


@pytest.mark.parametrize("codes,error,typed", [
    (["InsufficientInstanceCapacity", "InvalidParameterValue"], CapacityError, None),
    (["SpotMaxPriceTooLow"], CapacityError, None),
    (["MaxSpotInstanceCountExceeded"], CapacityError, None),
    (["UnfulfillableCapacity"], CapacityError, None),
    (["VcpuLimitExceeded", "InvalidParameterValue"], QuotaExceeded, None),
    (["InvalidParameterValue"], PermanentProviderError, None),
    (["InternalError"], CapacityError, None),  # it made none and says so: not an unknown outcome
    ([], CapacityError, None),
])
def test_a_create_fleet_that_made_nothing_raises_the_typed_error_of_its_errors(
        proxy: FleetProxy, spot: Any, moto_ec2: Any, codes: list[str], error: type, typed: str | None) -> None:
    provider, cluster = spot(market="spot", endpoint_url=proxy.url)
    proxy.short(0, *codes)
    with pytest.raises(error) as info:
        provider.run_workers(cluster, CMD, SMALL, 3, launch_id=launch())
    assert type(info.value) is error and all(c in str(info.value) for c in codes)
    if isinstance(info.value, CapacityError):
        assert info.value.instance_type == typed  # several types tried: none to hold alone
    assert instances(moto_ec2, cluster) == []


def test_a_launch_left_with_one_type_names_it_in_its_capacity_error(spot: Any) -> None:
    provider, cluster = spot(market="spot", instance_types=["c6i.large", "m6i.large"])
    cluster = dataclasses.replace(cluster, excluded_types=frozenset({"c6i.large"}))  # one left: RunInstances
    calls = Calls(provider.client(cluster))
    inject(provider.client(cluster), "RunInstances", 400, ec2_error("SpotMaxPriceTooLow"))
    with pytest.raises(CapacityError) as info:
        provider.run_workers(cluster, CMD, SMALL, 1, launch_id=launch())
    assert info.value.instance_type == "m6i.large" and "CreateFleet" not in calls


@pytest.mark.parametrize("code", SPOT_CODES)
def test_spot_capacity_errors_raised_by_create_fleet_are_capacity_errors(spot: Any, code: str) -> None:
    provider, cluster = spot(market="spot")
    inject(provider.client(cluster), "CreateFleet", 400, ec2_error(code))
    with pytest.raises(CapacityError) as info:
        provider.run_workers(cluster, CMD, SMALL, 2, launch_id=launch())
    assert type(info.value) is CapacityError and code in str(info.value) and info.value.instance_type is None


# -- interruptions ------------------------------------------------------------------------

def test_observe_reports_reclaimed_spot_instances_as_interrupted(spot: Any) -> None:
    provider, cluster = spot(market="spot", instance_type="t3.micro")
    cluster = dataclasses.replace(cluster, pool="spot")
    handles = provider.run_workers(cluster, CMD, SMALL, 4, launch_id=launch())
    gone, going, killed, alive = handles
    reclaim_spot_instance(gone, region=SPOT_REGION)
    reclaim_spot_instance(going, terminated=False, region=SPOT_REGION)
    provider.kill_workers(cluster, [killed])  # terminated by Fleet: not an interruption
    calls = Calls(provider.client(cluster))
    seen = provider.observe(cluster, handles)
    assert dict(calls) == {"DescribeInstances": 1}
    assert dict(seen.interrupted) == {gone: Cause.SPOT_INTERRUPTION, going: Cause.SPOT_INTERRUPTION}
    assert seen.listed == {alive: 1}
    assert seen.status == {gone: WorkerStatus.STOPPED, going: WorkerStatus.STOPPED, killed: WorkerStatus.STOPPED,
                           alive: WorkerStatus.RUNNING}
    assert provider.observe(cluster, [alive]).interrupted == {}  # only about handles asked or listed


def spot_warning(iid: str, when: str = "2026-03-01T12:00:00Z") -> str:
    return json.dumps({"version": "0", "id": str(uuid.uuid4()), "detail-type": "EC2 Spot Instance Interruption Warning",
                       "source": "aws.ec2", "account": "123456789012", "time": when, "region": REGION,
                       "resources": [f"arn:aws:ec2:{REGION}a:instance/{iid}"],
                       "detail": {"instance-id": iid, "instance-action": "terminate"}})


def rebalance(iid: str) -> str:
    return json.dumps({"version": "0", "id": str(uuid.uuid4()), "detail-type": "EC2 Instance Rebalance Recommendation",
                       "source": "aws.ec2", "account": "123456789012", "time": "2026-03-01T12:00:00Z",
                       "region": REGION, "resources": [f"arn:aws:ec2:{REGION}a:instance/{iid}"],
                       "detail": {"instance-id": iid}})


def queue_size(moto_sqs: Any, url: str) -> int:
    attrs = moto_sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def test_interruptions_come_from_the_queue_and_go_only_when_acknowledged(
        spot: Any, moto_sqs: Any, caplog: pytest.LogCaptureFixture) -> None:
    url = moto_sqs.create_queue(QueueName=f"fleet-{uuid.uuid4().hex[:8]}",
                                Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    provider, cluster = spot(market="spot", interruption_queue_url=url)
    secret = "garbage-" + uuid.uuid4().hex
    for body in [spot_warning("i-0123456789abcdef0"), rebalance("i-0fedcba9876543210"), f"not json {secret}",
                 json.dumps({"detail-type": "EC2 Instance State-change Notification", "detail": {
                     "instance-id": "i-0123456789abcdef0", "state": secret}}),
                 json.dumps({"detail-type": "EC2 Spot Instance Interruption Warning", "detail": {"note": secret}})]:
        moto_sqs.send_message(QueueUrl=url, MessageBody=body)
    sqs_calls = Calls(provider.sqs(cluster))
    with caplog.at_level(logging.WARNING, logger="providers.aws_ec2"):
        got = provider.interruptions(cluster)
    assert sorted((n.handle, n.cause) for n in got) == [("i-0123456789abcdef0", Cause.SPOT_INTERRUPTION),
                                                        ("i-0fedcba9876543210", Cause.REBALANCE)]
    warning = next(n for n in got if n.cause is Cause.SPOT_INTERRUPTION)
    assert warning.deadline == 1772366400.0 + 120 and all(n.receipt for n in got)
    assert next(n for n in got if n.cause is Cause.REBALANCE).deadline is None
    assert sqs_calls["ReceiveMessage"] == 1 and sqs_calls["DeleteMessageBatch"] == 1  # the garbage, at once
    assert queue_size(moto_sqs, url) == 2  # the garbage is gone, the notices are not
    assert caplog.text.count("dropping message") == 3 and secret not in caplog.text  # never the payload
    # not deleted on receive: once the visibility timeout is over, they come again
    time.sleep(1.5)
    again = provider.interruptions(cluster)
    assert sorted(n.handle for n in again) == sorted(n.handle for n in got)
    provider.acknowledge(cluster, again)
    assert queue_size(moto_sqs, url) == 0
    time.sleep(1.5)
    assert provider.interruptions(cluster) == []


def test_interruptions_are_bounded_per_call_and_none_without_a_queue(spot: Any, moto_sqs: Any) -> None:
    provider, cluster = spot(market="spot")
    calls = Calls(provider.sqs(cluster))
    assert provider.interruptions(cluster) == [] and provider.acknowledge(cluster, []) is None
    assert dict(calls) == {}
    url = moto_sqs.create_queue(QueueName=f"fleet-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    for chunk in range(12):
        moto_sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "MessageBody": rebalance(f"i-{chunk:02x}{i:06x}abcdef012")} for i in range(10)])
    provider, cluster = spot(market="spot", interruption_queue_url=url)
    calls = Calls(provider.sqs(cluster))
    got = provider.interruptions(cluster)
    assert len(got) == 100 and calls["ReceiveMessage"] == 10  # 10 receives of 10, the rest next sweep
    provider.acknowledge(cluster, got + got[:3])  # a notice twice: deleted once
    assert calls["DeleteMessageBatch"] == 10
    assert queue_size(moto_sqs, url) == 20


def test_a_missing_queue_is_a_permanent_error_naming_the_option(spot: Any, aws_world: AwsWorld) -> None:
    provider, cluster = spot(interruption_queue_url=f"{aws_world.url}/123456789012/no-such-queue", max_attempts=1)
    with pytest.raises(PermanentProviderError, match="interruption_queue_url"):
        provider.interruptions(cluster)


def test_parse_notice_accepts_eventbridge_and_sns_shapes_and_refuses_the_rest() -> None:
    iid = "i-0123456789abcdef0"

    def parse(body: Any) -> Interruption | str:
        return parse_notice({"Body": body, "ReceiptHandle": "r", "MessageId": "m"})

    assert parse(spot_warning(iid, "2026-03-01T12:00:00+00:00")) == Interruption(
        iid, Cause.SPOT_INTERRUPTION, 1772366400.0 + 120, "r")
    wrapped = json.dumps({"Type": "Notification", "Message": rebalance(iid)})
    assert parse(wrapped) == Interruption(iid, Cause.REBALANCE, None, "r")
    undated = json.loads(spot_warning(iid))
    undated.pop("time")
    assert parse(json.dumps(undated)) == Interruption(iid, Cause.SPOT_INTERRUPTION, None, "r")
    for body in [None, "", "{", "[1]", "null", json.dumps({"detail-type": 3}),
                 json.dumps({"detail-type": "EC2 Instance Rebalance Recommendation", "detail": "x"}),
                 json.dumps({"detail-type": "EC2 Instance Rebalance Recommendation", "detail": {"instance-id": 7}}),
                 json.dumps({"detail-type": "EC2 Instance Rebalance Recommendation",
                             "detail": {"instance-id": "rm -rf /"}}),
                 json.dumps({"Type": "Notification", "Message": "{"})]:
        assert isinstance(parse(body), str), body
