"""The provider contract suite (`fleet.provider`'s assumptions, as tests): subclass
`ProviderContract` in a test module and give it a `kit` fixture that yields a `Kit` for your
provider; pytest collects the tests below on your class. Fleet's own providers run it exactly so
(`tests/test_provider_contract.py`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest
from pydantic import ValidationError

from fleet.provider import WorkerStatus
from fleet.testing.kits import Kit

LIVE = (WorkerStatus.INITIALIZING, WorkerStatus.RUNNING)


def killed(result: Mapping[str, bool | WorkerStatus], handles: Sequence[str]) -> bool:
    """A kill answer that says every handle is dead or going away: True, or the status the kill's
    own answer reported, which can then only be STOPPED."""
    return set(result) == set(handles) and all(v is True or v == WorkerStatus.STOPPED for v in result.values())


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05,
             what: str | Callable[[], str] = "") -> Any:
    """Poll until `predicate()` is truthy and return it; fail with `what` (or what it returns, to
    say the last state seen) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {(what() if callable(what) else what) or predicate}")
        time.sleep(interval)


@pytest.mark.fleet_contract
class ProviderContract:
    """The seed's provider semantics, run against the provider of `kit`."""

    def test_run_returns_one_handle_per_worker_shared_by_container(self, kit: Kit) -> None:
        handles = kit.provider.run_workers(kit.cluster, kit.container, kit.hardware, 7, launch_id=uuid.uuid4().hex)
        assert len(handles) == 7
        counts = sorted(handles.count(h) for h in set(handles))
        assert counts == [1, 3, 3]  # full containers and at most one partial one

    def test_status_is_keyed_by_unique_handle_and_unknown_is_stopped(self, kit: Kit) -> None:
        handles = kit.provider.run_workers(kit.cluster, kit.container, kit.hardware, 4, launch_id=uuid.uuid4().hex)
        unique = list(dict.fromkeys(handles))
        asked = ["nope-0"] + unique[::-1]
        status = kit.provider.worker_status(kit.cluster, asked)
        assert set(status) == set(asked)
        assert status["nope-0"] == WorkerStatus.STOPPED
        assert all(status[h] in LIVE for h in unique)

    def test_is_defaults_follow_worker_status(self, kit: Kit) -> None:
        provider, cluster = kit.provider, kit.cluster
        handles = list(dict.fromkeys(provider.run_workers(cluster, kit.container, kit.hardware, 2,
                                                          launch_id=uuid.uuid4().hex)))
        asked = handles + ["nope-1"]
        before = provider.worker_status(cluster, asked)
        running, stopped, init = (provider.is_running(cluster, asked), provider.is_stopped(cluster, asked),
                                  provider.is_initializing(cluster, asked))
        status = provider.worker_status(cluster, asked)
        for h in asked:
            if before[h] != status[h]:
                continue  # it moved on between the calls (a worker that finished booting): no one answer to compare
            assert running[h] == (status[h] == WorkerStatus.RUNNING)
            assert stopped[h] == (status[h] == WorkerStatus.STOPPED)
            assert init[h] == (status[h] == WorkerStatus.INITIALIZING)
        assert stopped["nope-1"] and not stopped[handles[0]]

    def test_kill_is_idempotent_and_accepts_unknown_handles(self, kit: Kit) -> None:
        provider, cluster = kit.provider, kit.cluster
        handles = list(dict.fromkeys(provider.run_workers(cluster, kit.container, kit.hardware, 6,
                                                          launch_id=uuid.uuid4().hex)))
        assert killed(provider.kill_workers(cluster, handles[:1] + ["nope-2"]), [handles[0], "nope-2"])
        wait_for(lambda: provider.worker_status(cluster, handles[:1]) == {handles[0]: WorkerStatus.STOPPED},
                 timeout=15, what="the killed handle to stop")
        assert provider.worker_status(cluster, handles[1:])[handles[1]] in LIVE  # its neighbour lives on
        assert killed(provider.kill_workers(cluster, handles), handles)  # again: still a success
        wait_for(lambda: set(provider.worker_status(cluster, handles).values()) == {WorkerStatus.STOPPED},
                 timeout=15, what="every handle to stop")

    def test_find_launch_finds_what_a_launch_made_and_never_launches(self, kit: Kit) -> None:
        provider, cluster = kit.provider, kit.cluster
        launch_id = uuid.uuid4().hex
        made = provider.run_workers(cluster, kit.container, kit.hardware, 4, launch_id=launch_id)
        if provider.find_launch(cluster, launch_id) is None:
            pytest.skip("this provider cannot look a launch up (find_launch returns None)")
        wait_for(lambda: sorted(provider.find_launch(cluster, launch_id) or []) == sorted(made), timeout=15,
                 what="the launch found by its launch id")
        before = provider.list_workers(cluster)
        assert provider.find_launch(cluster, uuid.uuid4().hex) == []  # a launch that made nothing
        assert provider.find_launch(kit.other, launch_id) == []  # another fleet's cluster of that name
        assert provider.list_workers(cluster) == before  # and asking launched nothing

    def test_same_launch_id_launches_nothing_new(self, kit: Kit) -> None:
        provider, cluster = kit.provider, kit.cluster
        launch_id = uuid.uuid4().hex
        first = provider.run_workers(cluster, kit.container, kit.hardware, 5, launch_id=launch_id)
        second = provider.run_workers(cluster, kit.container, kit.hardware, 5, launch_id=launch_id)
        assert sorted(first) == sorted(second)
        listed = provider.list_workers(cluster)
        if listed is not None:  # a provider that cannot list shows it through its handles only
            assert listed == {h: first.count(h) for h in set(first)}

    def test_list_workers_finds_exactly_this_fleet_and_cluster(self, kit: Kit) -> None:
        provider, cluster, other = kit.provider, kit.cluster, kit.other
        if provider.list_workers(cluster) is None:
            pytest.skip("this provider cannot list")
        mine = provider.run_workers(cluster, kit.container, kit.hardware, 4, launch_id=uuid.uuid4().hex)
        theirs = provider.run_workers(other, kit.container, kit.hardware, 2, launch_id=uuid.uuid4().hex)
        # a fresh instance (a restarted control plane) must find them from the provider's side
        fresh = type(provider)(provider.context)
        assert fresh.list_workers(cluster) == {h: mine.count(h) for h in set(mine)}
        assert fresh.list_workers(other) == {h: theirs.count(h) for h in set(theirs)}
        # killing one fleet's workers leaves the other's alone
        fresh.kill_workers(cluster, list(set(mine)))
        wait_for(lambda: fresh.list_workers(cluster) == {}, timeout=15, what="an empty list")
        assert set(fresh.list_workers(other) or {}) == set(theirs)

    def test_two_pools_of_one_cluster_are_listed_and_found_apart(self, kit: Kit) -> None:
        provider = kit.provider
        if provider.list_workers(kit.cluster) is None:
            pytest.skip("this provider cannot list")
        spot, steady = replace(kit.cluster, pool="spot"), replace(kit.cluster, pool="steady")
        a = provider.run_workers(spot, kit.container, kit.hardware, 3, launch_id=uuid.uuid4().hex)
        b_id = uuid.uuid4().hex
        b = provider.run_workers(steady, kit.container, kit.hardware, 6, launch_id=b_id)
        fresh = type(provider)(provider.context)
        assert fresh.list_workers(spot) == {h: a.count(h) for h in set(a)}
        assert fresh.list_workers(steady) == {h: b.count(h) for h in set(b)}
        # the cluster seen without a pool (how a cluster that declares none is asked) sees both
        assert set(fresh.list_workers(kit.cluster) or {}) == set(a) | set(b)
        found = fresh.find_launch(steady, b_id)
        if found is not None:
            assert sorted(found) == sorted(b)
            assert fresh.find_launch(spot, b_id) == []

    def test_bad_provider_options_are_rejected_clearly(self, kit: Kit) -> None:
        with pytest.raises(ValidationError) as info:
            type(kit.provider).validate_options({**kit.bad_options})
        assert kit.bad_field in str(info.value)
        with pytest.raises(ValidationError, match="no_such_option"):
            type(kit.provider).validate_options({"no_such_option": 1})
