"""The gce provider beyond the contract suite, against the fake Compute REST server
(fleet/testing/backends/gce.py) through google-cloud-compute's real REST client."""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from fleet.errors import CapacityError, PermanentProviderError, QuotaExceeded, RateLimited, TransientProviderError
from fleet.provider import Cause, Cluster, ContainerSpec, Hardware, Observation, ProviderContext, WorkerStatus
from fleet.testing.backends.gce import FakeGCE, parse_filter, parse_terms
from providers.gce import METADATA_NAME, GCEProvider, instance_name, label_value, request_id
from tests.kits.gce import PROJECT, ZONE, gce_options

CMD = ContainerSpec(command=("celery", "-A", "tasks", "worker", "--concurrency", "${FLEET_WORKERS}"),
                    env={"BROKER_HOST": "10.0.0.5"})
SMALL = Hardware(cpu=0.25, memory_mb=512)

Make = Callable[..., tuple[GCEProvider, Cluster]]


@pytest.fixture
def fake(gce_server: tuple[FakeGCE, str]) -> Iterator[FakeGCE]:
    server, _ = gce_server
    server.clear_faults()
    server.ready_after_reads, server.operation_polls = 1, 1
    server.reset_counters()
    yield server
    server.clear_faults()
    server.ready_after_reads, server.operation_polls = 1, 1


@pytest.fixture
def make(gce_server: tuple[FakeGCE, str], fake: FakeGCE, tmp_path: Path) -> Iterator[Make]:
    """Build (provider, cluster) with a fresh fleet id; everything launched is deleted after."""
    _, url = gce_server
    made: list[tuple[GCEProvider, Cluster]] = []

    def build(per: int = 1, **options: Any) -> tuple[GCEProvider, Cluster]:
        fleet_id = "g" + uuid.uuid4().hex[:8]
        cluster = Cluster(fleet_id, "gce", per, GCEProvider.validate_options(gce_options(url, **options)))
        made.append((GCEProvider(ProviderContext(fleet_id, tmp_path)), cluster))
        return made[-1]

    yield build
    fake.clear_faults()
    fake.operation_polls = 1
    for provider, cluster in made:
        for name in [n for n in fake.names(PROJECT, ZONE) if (fake.get(PROJECT, ZONE, n) or {}).get(
                "labels", {}).get("fleet-id") == cluster.fleet_id]:
            provider.kill_workers(cluster, [name])


def labels_of(cluster: Cluster, launch_id: str | None = None, **more: str) -> dict[str, str]:
    out = {"fleet-id": cluster.fleet_id, "fleet-cluster": cluster.name, **more}
    return out | ({"fleet-launch": launch_id} if launch_id else {})


# -- idempotency ---------------------------------------------------------------------------

def test_a_retried_insert_reuses_its_request_id(make: Make, fake: FakeGCE) -> None:
    provider, cluster = make()
    launch = uuid.uuid4().hex
    fake.fail("bulk_insert", 503, processed=True)  # the instance is created, the answer is lost
    handles = provider.run_workers(cluster, CMD, SMALL, 1, launch_id=launch)
    assert handles == [instance_name(launch, 0)]
    inserts = [q for kind, _, q in fake.log if kind == "bulk_insert"]
    assert [q["requestId"] for q in inserts] == [[request_id(launch, handles, ZONE)]] * 2  # api_core retried
    assert str(uuid.UUID(inserts[0]["requestId"][0])) == inserts[0]["requestId"][0]
    assert provider.list_workers(cluster) == {handles[0]: 1}


def test_the_same_launch_twice_inserts_nothing_new(make: Make, fake: FakeGCE) -> None:
    provider, cluster = make(per=2)
    launch = uuid.uuid4().hex
    first = provider.run_workers(dataclasses.replace(cluster, first_attempt=True), CMD, SMALL, 5, launch_id=launch)
    assert fake.calls == {"bulk_insert": 2, "operation": 2}  # full and partial containers; no look-up first
    names = [instance_name(launch, i) for i in range(3)]
    ids = {q["requestId"][0] for kind, _, q in fake.log if kind == "bulk_insert"}
    assert ids == {request_id(launch, names[:2], ZONE), request_id(launch, names[2:], ZONE)}
    assert first == [names[0]] * 2 + [names[1]] * 2 + [names[2]]
    fake.reset_counters()
    assert provider.run_workers(cluster, CMD, SMALL, 5, launch_id=launch) == first  # a retry: looks first
    assert fake.calls == {"list": 1}
    # a restarted control plane (fresh provider) finds them too
    again = GCEProvider(provider.context).run_workers(cluster, CMD, SMALL, 5, launch_id=launch)
    assert again == first and fake.calls["bulk_insert"] == 0


def test_a_name_conflict_with_our_instance_is_adopted(make: Make, fake: FakeGCE) -> None:
    provider, cluster = make()
    launch = uuid.uuid4().hex
    name = instance_name(launch, 0)
    # made by an earlier insert whose launch label the list did not show yet: no launch label
    fake.add_instance(PROJECT, ZONE, name, labels_of(cluster))
    before = fake.names(PROJECT, ZONE)
    assert provider.run_workers(cluster, CMD, SMALL, 2, launch_id=launch) == [name, instance_name(launch, 1)]
    assert fake.calls["bulk_insert"] == 2 and fake.calls["get"] == 2  # a 409: each name checked, the rest again
    assert fake.names(PROJECT, ZONE) - before == {instance_name(launch, 1)}


def test_a_name_taken_by_a_foreign_instance_is_refused(make: Make, fake: FakeGCE) -> None:
    provider, cluster = make()
    launch = uuid.uuid4().hex
    fake.add_instance(PROJECT, ZONE, instance_name(launch, 0), {"owner": "someone-else"})
    try:
        with pytest.raises(PermanentProviderError, match=instance_name(launch, 0)):
            provider.run_workers(cluster, CMD, SMALL, 1, launch_id=launch)
    finally:
        fake.instances.pop((PROJECT, ZONE, instance_name(launch, 0)), None)


def test_instance_names_are_valid_gce_names() -> None:
    import re

    for launch in (uuid.uuid4().hex, "Launch_ID with spaces/and UPPER", "x" * 200, "a"):
        for index in (0, 7, 1234):
            name = instance_name(launch, index)
            assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name), name
    assert instance_name("ABC", 0) != instance_name("abc", 0)


# -- listing and status --------------------------------------------------------------------

def test_lists_follow_page_tokens(make: Make, fake: FakeGCE) -> None:
    provider, cluster = make(page_size=2)
    handles = provider.run_workers(cluster, CMD, SMALL, 5, launch_id=uuid.uuid4().hex)
    fake.reset_counters()
    assert provider.list_workers(cluster) == dict.fromkeys(handles, 1)
    lists = [q for kind, _, q in fake.log if kind == "list"]
    assert len(lists) == 3 and all(q["maxResults"] == ["2"] for q in lists)
    assert [q.get("pageToken") for q in lists] == [None, ["2"], ["4"]]
    assert parse_filter(lists[0]["filter"][0]) == labels_of(cluster)
    assert set(provider.worker_status(cluster, handles)) == set(handles)


def test_status_follows_the_instance_lifecycle(make: Make, fake: FakeGCE) -> None:
    provider, cluster = make()
    (h,) = provider.run_workers(cluster, CMD, SMALL, 1, launch_id=uuid.uuid4().hex)
    assert provider.worker_status(cluster, [h]) == {h: WorkerStatus.INITIALIZING}  # PROVISIONING
    assert provider.worker_status(cluster, [h]) == {h: WorkerStatus.RUNNING}
    for state, expected in (("STAGING", WorkerStatus.INITIALIZING), ("STOPPING", WorkerStatus.STOPPED),
                            ("SUSPENDED", WorkerStatus.STOPPED), ("TERMINATED", WorkerStatus.STOPPED)):
        fake.set_status(PROJECT, ZONE, h, state)
        assert provider.worker_status(cluster, [h, "fleet-nope-0"]) == {h: expected, "fleet-nope-0": WorkerStatus.STOPPED}
    # a worker that exited powered its VM off (TERMINATED): not listed, but killing deletes it
    assert provider.list_workers(cluster) == {}
    assert provider.kill_workers(cluster, [h]) == {h: True}
    assert h not in fake.names(PROJECT, ZONE)


# -- what the VM gets ----------------------------------------------------------------------

def test_labels_metadata_and_startup_script(make: Make, fake: FakeGCE, tmp_path: Path) -> None:
    provider, cluster = make(per=3)
    launch = uuid.uuid4().hex
    command = ContainerSpec(command=(*CMD.command, "--hostname", "${FLEET_HANDLE}@%h"), env=CMD.env)
    handles = provider.run_workers(cluster, command, SMALL, 4, launch_id=launch)
    name = handles[-1]  # the partial container: one worker
    body = fake.get(PROJECT, ZONE, name)
    assert body is not None
    assert body["labels"] == labels_of(cluster, launch, **{"fleet-workers": "1"})
    assert body["machineType"] == f"zones/{ZONE}/machineTypes/e2-micro"
    assert body["disks"][0]["initializeParams"]["sourceImage"].endswith("family/debian-12")
    items = {i["key"]: i["value"] for i in body["metadata"]["items"]}
    assert set(items) == {"startup-script"}  # nothing else, and so no credentials
    script = items["startup-script"]
    for needle in (f"export FLEET_ID={cluster.fleet_id}", "export FLEET_CLUSTER=gce", METADATA_NAME,
                   "export FLEET_HANDLE", "export FLEET_WORKERS=1", f"export FLEET_LAUNCH_ID={launch}",
                   "export BROKER_HOST=10.0.0.5", "celery -A tasks worker --concurrency 1"):
        assert needle in script
    assert script.index("celery -A") < script.index("shutdown -h now")
    assert not any(w in script.lower() for w in ("token", "secret", "password", "private_key"))
    assert "docker run" not in script

    # run the script for real: the worker runs with its identity, then the VM is powered off
    bin_dir, out = tmp_path / "bin", tmp_path / "out"
    bin_dir.mkdir()
    (bin_dir / "shutdown").write_text(f"#!/bin/sh\necho \"$@\" >> {out}.shutdown\n")
    (bin_dir / "celery").write_text(f"#!/bin/sh\nenv > {out}\necho \"$@\" >> {out}\nexit 3\n")
    # the VM's name comes from the metadata server (every VM of one bulkInsert has the same script)
    (bin_dir / "curl").write_text(f"#!/bin/sh\ncase \"$*\" in *Metadata-Flavor*{METADATA_NAME}*) echo {name};; "
                                  "*) exit 22;; esac\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    subprocess.run(["bash", "-c", script], env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
                   check=True, timeout=30)
    env = out.read_text()
    assert f"FLEET_HANDLE={name}" in env and "FLEET_WORKERS=1" in env and f"FLEET_ID={cluster.fleet_id}" in env
    assert f"-A tasks worker --concurrency 1 --hostname {name}@%h" in env
    assert Path(f"{out}.shutdown").read_text() == "-h now\n"  # after the worker exited, even with 3


def test_an_image_runs_through_docker(make: Make, fake: FakeGCE) -> None:
    provider, cluster = make(spot=True, service_account_email="w@p.iam.gserviceaccount.com")
    container = ContainerSpec(command=("worker", "--n", "${FLEET_WORKERS}"), image="ghcr.io/acme/worker:1")
    (h,) = provider.run_workers(cluster, container, SMALL, 1, launch_id=uuid.uuid4().hex)
    body = fake.get(PROJECT, ZONE, h) or {}
    script = body["metadata"]["items"][0]["value"]
    assert "docker run --rm --network host --name fleet-worker -e FLEET_ID -e FLEET_CLUSTER" in script
    assert "ghcr.io/acme/worker:1 worker --n 1" in script
    assert body["scheduling"]["provisioningModel"] == "SPOT"
    assert body["serviceAccounts"][0]["email"] == "w@p.iam.gserviceaccount.com"


# -- kill ----------------------------------------------------------------------------------

def test_delete_is_idempotent_and_touches_only_this_cluster(make: Make, fake: FakeGCE) -> None:
    provider, cluster = make()
    other_provider, other = make()
    (mine,) = provider.run_workers(cluster, CMD, SMALL, 1, launch_id=uuid.uuid4().hex)
    (theirs,) = other_provider.run_workers(other, CMD, SMALL, 1, launch_id=uuid.uuid4().hex)
    fake.reset_counters()
    stopped = WorkerStatus.STOPPED  # not ours, or gone: stopped already, so Fleet need not ask
    assert provider.kill_workers(cluster, ["fleet-unknown-0", theirs]) == {"fleet-unknown-0": stopped, theirs: stopped}
    assert theirs in fake.names(PROJECT, ZONE) and fake.calls["delete"] == 0
    fake.fail("delete", 404)  # deleted by someone else between our list and our delete
    assert provider.kill_workers(cluster, [mine]) == {mine: stopped}
    fake.instances.pop((PROJECT, ZONE, mine), None)
    assert provider.kill_workers(cluster, [mine]) == {mine: stopped}


def test_operations_are_waited_on_within_the_bound(make: Make, fake: FakeGCE) -> None:
    provider, cluster = make()
    provider.run_workers(cluster, CMD, SMALL, 3, launch_id=uuid.uuid4().hex)
    assert fake.calls["operation"] == 1  # one bulkInsert, one wait for its operation
    waits = [path for kind, path, _ in fake.log if kind == "operation"]
    assert all(p.endswith("/wait") for p in waits)
    quick, quick_cluster = make(operation_timeout=0)
    fake.reset_counters()
    fake.operation_polls = 10**6  # never done: the bound, not the fake, ends the wait
    assert len(quick.run_workers(quick_cluster, CMD, SMALL, 2, launch_id=uuid.uuid4().hex)) == 2
    assert fake.calls["operation"] == 0


# -- machine types -------------------------------------------------------------------------

CATALOGUE = [{"name": "big", "cpu": 8, "memory_mb": 32768, "price": 0.4},
             {"name": "mid", "cpu": 4, "memory_mb": 8192, "price": 0.2},
             {"name": "cheap-but-small", "cpu": 2, "memory_mb": 4096, "price": 0.1},
             {"name": "pricey-mid", "cpu": 4, "memory_mb": 16384, "price": 0.3}]


def test_machine_type_is_the_cheapest_that_fits(make: Make, fake: FakeGCE) -> None:
    provider, cluster = make(catalogue=CATALOGUE)
    (h,) = provider.run_workers(cluster, CMD, Hardware(cpu=3, memory_mb=6000), 1, launch_id=uuid.uuid4().hex)
    assert (fake.get(PROJECT, ZONE, h) or {})["machineType"].endswith("/machineTypes/mid")
    fake.reset_counters()
    with pytest.raises(PermanentProviderError, match="catalogue"):
        provider.run_workers(cluster, CMD, Hardware(cpu=16), 1, launch_id=uuid.uuid4().hex)
    assert fake.calls["bulk_insert"] == 0
    explicit, ecluster = make(catalogue=CATALOGUE, machine_type="c3-standard-4")
    (h,) = explicit.run_workers(ecluster, CMD, Hardware(cpu=16), 1, launch_id=uuid.uuid4().hex)
    assert (fake.get(PROJECT, ZONE, h) or {})["machineType"].endswith("/machineTypes/c3-standard-4")


def test_the_default_catalogue_picks_small_types_for_small_needs(make: Make, fake: FakeGCE) -> None:
    provider, cluster = make()
    (h,) = provider.run_workers(cluster, CMD, Hardware(cpu=2, memory_mb=7000), 1, launch_id=uuid.uuid4().hex)
    assert (fake.get(PROJECT, ZONE, h) or {})["machineType"].endswith("/machineTypes/e2-standard-2")


# -- errors --------------------------------------------------------------------------------

def http_fault(kind: str, status: int, reason: str | None = None, message: str = "injected", **kw: Any):
    return lambda fake: fake.fail(kind, status, reason, message, **kw)


ERRORS = {
    "429": (http_fault("bulk_insert", 429, headers={"Retry-After": "7"}), RateLimited),
    "403-rateLimitExceeded": (http_fault("bulk_insert", 403, "rateLimitExceeded", "Rate Limit Exceeded"), RateLimited),
    "403-userRateLimitExceeded-on-list": (http_fault("list", 403, "userRateLimitExceeded"), RateLimited),
    "403-quotaExceeded": (http_fault("bulk_insert", 403, "quotaExceeded", "Quota 'CPUS' exceeded. Limit: 24.0"), QuotaExceeded),
    "op-QUOTA_EXCEEDED": (lambda fake: fake.fail_operation("QUOTA_EXCEEDED"), QuotaExceeded),
    "op-ZONE_RESOURCE_POOL_EXHAUSTED": (lambda fake: fake.fail_operation("ZONE_RESOURCE_POOL_EXHAUSTED"), CapacityError),
    "op-ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS": (
        lambda fake: fake.fail_operation("ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"), CapacityError),
    "403-forbidden": (http_fault("bulk_insert", 403, "forbidden", "Required 'compute.instances.create' permission"),
                      PermanentProviderError),
    "401": (http_fault("list", 401, "required", "Login Required"), PermanentProviderError),
    "404-image": (http_fault("bulk_insert", 404, "notFound", "The resource 'projects/x/global/images/y' was not found"),
                  PermanentProviderError),
    "400": (http_fault("bulk_insert", 400, "invalid", "Invalid value for field 'resource.machineType'"), PermanentProviderError),
    "503-persistent": (http_fault("bulk_insert", 503, times=1000), TransientProviderError),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_injected_errors_surface_typed(case: str, make: Make, fake: FakeGCE) -> None:
    inject, expected = ERRORS[case]
    provider, cluster = make(retry_deadline=0.3)
    inject(fake)
    with pytest.raises(expected) as info:
        provider.run_workers(cluster, CMD, SMALL, 1, launch_id=uuid.uuid4().hex)
    assert type(info.value) is expected
    assert provider.list_workers(cluster) == {}  # nothing was created
    if case == "429":
        assert info.value.retry_after == 7  # type: ignore[attr-defined]
    if expected is RateLimited and case != "429":
        assert info.value.retry_after > 0  # type: ignore[attr-defined]
    if expected is CapacityError:
        assert info.value.instance_type == "e2-micro" and "e2-micro" in str(info.value)  # type: ignore[attr-defined]
    if case == "403-forbidden":
        assert "roles/compute.instanceAdmin" in info.value.message  # says what to fix
    if case == "404-image":
        assert "source_image" in info.value.message


def test_a_transient_error_is_retried_by_api_core(make: Make, fake: FakeGCE) -> None:
    provider, cluster = make()
    fake.fail("bulk_insert", 503, times=2)
    fake.fail("list", 502)
    handles = provider.run_workers(cluster, CMD, SMALL, 1, launch_id=uuid.uuid4().hex)
    assert len(handles) == 1 and fake.calls["bulk_insert"] == 3 and fake.calls["list"] == 2


def test_quota_part_way_returns_what_was_launched(make: Make, fake: FakeGCE) -> None:
    provider, cluster = make(per=2)
    fake.fail_operation("QUOTA_EXCEEDED", after=1, times=10)  # the full containers, not the partial one
    launch = uuid.uuid4().hex
    handles = provider.run_workers(cluster, CMD, SMALL, 5, launch_id=launch)
    full = [instance_name(launch, 0)] * 2 + [instance_name(launch, 1)] * 2
    assert handles == full  # the shortfall comes later
    fake.clear_faults()
    fake.fail("bulk_insert", 429)
    with pytest.raises(RateLimited):  # throttled part way: raise, a retry of the launch resumes
        provider.run_workers(cluster, CMD, SMALL, 5, launch_id=launch)
    assert provider.run_workers(cluster, CMD, SMALL, 5, launch_id=launch) == [*full, instance_name(launch, 2)]


# -- options -------------------------------------------------------------------------------

@pytest.mark.parametrize("options, field", [
    ({"zone": "z", "source_image": "i"}, "project"),
    ({"project": "p", "source_image": "i"}, "zone"),
    ({"project": "p", "zone": "z"}, "source_image"),
    ({"project": "p", "zone": "z", "source_image": "i", "page_size": 0}, "page_size"),
    ({"project": "p", "zone": "z", "source_image": "i", "api_endpoint": "127.0.0.1:8080"}, "api_endpoint"),
    ({"project": "p", "zone": "z", "source_image": "i", "operation_timeout": -1}, "operation_timeout"),
    ({"project": "p", "zone": "z", "source_image": "i", "spot": True, "preemptible": True}, "spot"),
    ({"project": "p", "zone": "z", "source_image": "i", "catalogue": [{"name": "x", "cpu": 0, "memory_mb": 1, "price": 1}]},
     "catalogue"),
    ({"project": "p", "zone": "z", "source_image": "i", "credentials_json": "{}"}, "credentials_json"),
])
def test_bad_options_are_rejected_naming_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        GCEProvider.validate_options(options)


def test_import_needs_no_sdk_and_a_missing_sdk_says_what_to_install() -> None:
    code = ("import sys; import providers.gce as g; "
            "print(any(m.startswith('google.cloud') for m in sys.modules)); "
            "sys.modules['google.cloud.compute_v1'] = None\n"
            "from fleet.provider import Cluster, ContainerSpec, Hardware, ProviderContext\n"
            "o = g.GCEProvider.validate_options({'project': 'p', 'zone': 'z', 'source_image': 'i'})\n"
            "try: g.GCEProvider(ProviderContext('f', '/tmp')).run_workers(Cluster('f', 'c', 1, o), "
            "ContainerSpec(command=('w',)), Hardware(), 1, launch_id='x')\n"
            "except Exception as e: print(type(e).__name__, e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1])
    first, second = out.stdout.splitlines()[:2]
    assert first == "False"
    assert second.startswith("PermanentProviderError") and "fleet[gce]" in second


# -- API calls of a 20-worker round trip ---------------------------------------------------

def test_api_calls_of_twenty_workers(make: Make, fake: FakeGCE) -> None:
    provider, cluster = make()
    fake.ready_after_reads = 0
    handles = provider.run_workers(dataclasses.replace(cluster, first_attempt=True), CMD, SMALL, 20,
                                   launch_id=uuid.uuid4().hex)
    run = dict(fake.calls)
    fake.reset_counters()
    assert set(provider.worker_status(cluster, handles).values()) == {WorkerStatus.RUNNING}
    status = dict(fake.calls)
    fake.reset_counters()
    assert provider.kill_workers(cluster, handles) == dict.fromkeys(handles, True)
    kill = dict(fake.calls)
    print(f"\nGCE API calls, 20 workers: run {run}, status {status}, kill {kill}")
    assert run == {"bulk_insert": 1, "operation": 1}
    assert status == {"list": 1}
    assert kill == {"list": 1, "delete": 20}  # not waited one by one: Fleet reads their effect back in one list
    assert provider.list_workers(cluster) == {}


# -- markets, preemption and pools ---------------------------------------------------------

@pytest.mark.parametrize("options, market, scheduling", [
    ({}, "standard", {}),
    ({"market": "spot"}, "spot", {"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE"}),
    ({"spot": True}, "spot", {"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE"}),
    ({"spot": True, "market": "spot"}, "spot", {"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE"}),
    ({"market": "preemptible"}, "preemptible",
     {"preemptible": True, "automaticRestart": False, "onHostMaintenance": "TERMINATE"}),
    ({"preemptible": True}, "preemptible",
     {"preemptible": True, "automaticRestart": False, "onHostMaintenance": "TERMINATE"}),
])
def test_the_market_sets_the_scheduling(make: Make, fake: FakeGCE, options: dict[str, Any], market: str,
                                        scheduling: dict[str, Any]) -> None:
    provider, cluster = make(**options)
    assert cluster.options.market == market
    (h,) = provider.run_workers(cluster, CMD, SMALL, 1, launch_id=uuid.uuid4().hex)
    assert (fake.get(PROJECT, ZONE, h) or {}).get("scheduling", {}) == scheduling


@pytest.mark.parametrize("options, words", [
    ({"spot": True, "market": "standard"}, "spot = true contradicts market = 'standard'"),
    ({"spot": True, "market": "preemptible"}, "spot = true contradicts market"),
    ({"preemptible": True, "market": "spot"}, "preemptible = true contradicts market = 'spot'"),
    ({"market": "reserved"}, "market"),
])
def test_contradicting_markets_are_refused(options: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        GCEProvider.validate_options({"project": "p", "zone": "z", "source_image": "i", **options})


def test_a_preempted_spot_vm_is_interrupted_though_gce_deleted_it(make: Make, fake: FakeGCE) -> None:
    provider, cluster = make(market="spot")
    fake.ready_after_reads = 0
    kept, gone = (h for h, _ in itertools.groupby(provider.run_workers(cluster, CMD, SMALL, 2,
                                                                       launch_id=uuid.uuid4().hex)))
    fake.reset_counters()
    steady = provider.observe(cluster, [kept, gone])
    assert steady.interrupted == {} and fake.calls == {"list": 1}  # nothing looks stopped: no extra call
    op = fake.preempt(PROJECT, ZONE, gone)
    assert op["operationType"] == "compute.instances.preempted" and gone not in fake.names(PROJECT, ZONE)
    fake.reset_counters()
    seen = provider.observe(cluster, [kept, gone])
    assert seen.interrupted == {gone: Cause.PREEMPTED}
    assert seen.status == {kept: WorkerStatus.RUNNING, gone: WorkerStatus.STOPPED}
    assert seen.listed == {kept: 1}
    assert fake.calls == {"list": 1, "operation_list": 1}
    (query,) = [q for kind, _, q in fake.log if kind == "operation_list"]
    assert parse_terms(query["filter"][0]) == {"operationType": "compute.instances.preempted"}


def test_a_preempted_preemptible_vm_stays_terminated_and_is_interrupted(make: Make, fake: FakeGCE) -> None:
    provider, cluster = make(market="preemptible")
    (h,) = provider.run_workers(cluster, CMD, SMALL, 1, launch_id=uuid.uuid4().hex)
    fake.preempt(PROJECT, ZONE, h)
    assert (fake.get(PROJECT, ZONE, h) or {})["status"] == "TERMINATED"
    seen = provider.observe(cluster, [h])
    assert seen == Observation({}, {h: WorkerStatus.STOPPED}, {h: Cause.PREEMPTED})
    assert provider.worker_status(cluster, [h]) == {h: WorkerStatus.STOPPED}  # its status is what it was


def test_a_standard_vm_terminated_is_not_interrupted_and_costs_no_extra_call(make: Make, fake: FakeGCE) -> None:
    provider, cluster = make()
    (h,) = provider.run_workers(cluster, CMD, SMALL, 1, launch_id=uuid.uuid4().hex)
    with pytest.raises(ValueError, match="neither Spot nor preemptible"):
        fake.preempt(PROJECT, ZONE, h)  # GCE does not preempt a standard VM
    fake.set_status(PROJECT, ZONE, h, "TERMINATED")
    fake.reset_counters()
    assert provider.observe(cluster, [h, "fleet-gone-0"]) == Observation(
        {}, {h: WorkerStatus.STOPPED, "fleet-gone-0": WorkerStatus.STOPPED}, {})
    assert fake.calls == {"list": 1}


@pytest.mark.parametrize("status", ["TERMINATED", "STOPPING"])
def test_a_spot_vm_its_worker_powered_off_is_not_interrupted(make: Make, fake: FakeGCE, status: str) -> None:
    provider, cluster = make(market="spot")
    (h,) = provider.run_workers(cluster, CMD, SMALL, 1, launch_id=uuid.uuid4().hex)
    other_provider, other = make(market="spot")  # another fleet's VM preempted in the same zone
    (theirs,) = other_provider.run_workers(other, CMD, SMALL, 1, launch_id=uuid.uuid4().hex)
    fake.preempt(PROJECT, ZONE, theirs)
    fake.set_status(PROJECT, ZONE, h, status)  # `shutdown -h now` after the worker exited
    fake.reset_counters()
    seen = provider.observe(cluster, [h])
    assert seen.status == {h: WorkerStatus.STOPPED} and seen.interrupted == {}
    assert fake.calls == {"list": 1, "operation_list": 1}  # the preemptions, asked, say it was not one


def test_preemptions_that_cannot_be_listed_leave_the_status_alone(make: Make, fake: FakeGCE) -> None:
    provider, cluster = make(market="preemptible")
    (h,) = provider.run_workers(cluster, CMD, SMALL, 1, launch_id=uuid.uuid4().hex)
    fake.preempt(PROJECT, ZONE, h)
    fake.fail("operation_list", 403, "forbidden", "Required 'compute.zoneOperations.list' permission")
    assert provider.observe(cluster, [h]) == Observation({}, {h: WorkerStatus.STOPPED}, {})
    assert provider.observe(cluster, [h]).interrupted == {h: Cause.PREEMPTED}  # allowed again: seen


def test_pools_are_labelled_and_listed_apart(make: Make, fake: FakeGCE) -> None:
    provider, cluster = make()
    spot, steady = dataclasses.replace(cluster, pool="Spot Pool"), dataclasses.replace(cluster, pool="steady")
    a_id, b_id = uuid.uuid4().hex, uuid.uuid4().hex
    (a,) = provider.run_workers(spot, CMD, SMALL, 1, launch_id=a_id)
    (b,) = provider.run_workers(steady, CMD, SMALL, 1, launch_id=b_id)
    body = fake.get(PROJECT, ZONE, a) or {}
    pool_label = body["labels"]["fleet-pool"]
    assert pool_label == label_value("Spot Pool") != "Spot Pool"  # made label-safe
    assert (fake.get(PROJECT, ZONE, b) or {})["labels"]["fleet-pool"] == "steady"
    assert "export FLEET_POOL='Spot Pool'" in body["metadata"]["items"][0]["value"]
    fake.reset_counters()
    assert provider.list_workers(spot) == {a: 1} and provider.list_workers(steady) == {b: 1}
    assert parse_filter(fake.log[0][2]["filter"][0]) == labels_of(cluster, **{"fleet-pool": pool_label})
    assert provider.list_workers(cluster) == {a: 1, b: 1}  # no pool: the whole cluster
    assert provider.find_launch(spot, a_id) == [a] and provider.find_launch(steady, a_id) == []
    fake.ready_after_reads = 0
    # the listing is the pool's; a status is a handle's, whatever pool asks
    seen = provider.observe(spot, [b])
    assert seen.listed == {a: 1} and seen.status == {a: WorkerStatus.RUNNING, b: WorkerStatus.RUNNING}
    assert provider.kill_workers(steady, [a]) == {a: True} and a not in fake.names(PROJECT, ZONE)
