"""Failover without loss (issue 22), with real servers: a primary, a replica and three sentinels
(tests/kits/sentinel.py) under a control plane of real processes (`fleet.testing.plane`).

1. A scale-up of 1,000 workers of the `memory` provider, with the primary SIGKILLed in the middle
   of it: public tasks are served again, the cluster converges at 1,000, the provider made every
   handle once (its own records, read through tests/kits/memory_census.py), every handle it holds
   is tracked, and the acknowledged scale request survived.
2. A replica that missed writes: it is stopped while the control plane records launches on the
   primary, and the primary is SIGKILLed before it catches up, so Sentinel promotes a replica that
   lacks them. Fleet recovers from the provider's list (local processes): it converges, launches
   nothing twice and leaves nothing untracked. The claim that it recovers as from a lost Redis
   does not hold yet (the epoch survives; the stale desired number undoes the acknowledged
   scale): a strict expected failure, see docs/reliability.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from fleet.model import LaunchState
from fleet.store import Store
from fleet.testing.plane import Plane, plane
from tests.conftest import wait_for
from tests.kits.memory_census import VARIABLE, read_census, settled
from tests.kits.sentinel import MASTER, Topology, sentinel_topology
from tests.test_redis_sentinel import CLUSTERS

SCALE = 1000
MEMORY = f"""
[providers.memory]
ops_per_second = 10000
concurrent_launches = 64
[clusters.mem]
provider = "memory"
max_workers = {SCALE}
boot_timeout = 3600
[clusters.mem.container]
command = ["worker"]
[clusters.mem.provider_options]
boot_seconds = 1
"""


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    with sentinel_topology(tmp_path) as running:
        yield running


def _answers(p: Plane, cluster: str) -> Callable[[], dict[str, Any] | None]:
    """A poll of `fleet.status` that answers None while the control plane cannot serve it."""
    def status() -> dict[str, Any] | None:
        try:
            return dict(p.call("fleet.status", cluster, timeout=3))
        except Exception:  # noqa: BLE001 - not served yet
            return None
    return status


def _retrying(read: Callable[[], Any]) -> Any:
    """`read` against the sentinel URL, again while the new primary is not reachable yet."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return read()
        except redis.RedisError:  # the failover under way
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_a_failover_in_the_middle_of_a_1000_worker_scale_up_loses_nothing(topology: Topology,
                                                                           tmp_path: Path) -> None:
    census = tmp_path / "memory-census.json"
    fleet = f'redis_sentinel_master = "{MASTER}"\nsweep_interval = 1\n'
    with plane(tmp_path, MEMORY, fleet=fleet, redis_url=topology.url(),
               worker_args=["--include", "tests.kits.memory_census"], role_env={"worker": {VARIABLE: str(census)}}) as p:
        store = Store(p.r, p.fleet_id)
        assert p.call("fleet.status", "mem")["desired"] is None
        started = time.monotonic()
        assert p.call("fleet.scale", "mem", SCALE)["desired"] == SCALE  # acknowledged

        def midway() -> dict[str, Any] | None:
            s = store.summary("mem").as_dict("mem")
            return s if s["handles"] > 0 and s["running"] < SCALE else None

        at_kill = wait_for(midway, timeout=30, interval=0.005, what="the first launch recorded")
        killed = topology.kill_primary()
        promoted = topology.wait_promoted() - killed
        status = _answers(p, "mem")
        first = wait_for(status, timeout=60, interval=0.1, what="a public task served after the failover")
        serving = time.monotonic() - killed
        lost = 0 if first["desired"] == SCALE else 1  # the scale acknowledged before the kill
        # launches the new primary holds as queued that the provider never ran: their run message
        # was lost with the primary, and the sweep sends it again only RESEND_QUEUED_AFTER later
        ran = set(read_census(census, p.fleet_id)["launches"])
        stranded = [k for k, v in _retrying(lambda: store.read_many(["mem"])["mem"].pending).items()
                    if v.state is LaunchState.QUEUED and k not in ran]

        last: dict[str, Any] = {}

        def converged() -> bool:
            s = status()
            last.update(status=s, live=len(read_census(census, p.fleet_id)["live"]))
            return bool(s and store.summary("mem").converged_at(SCALE) and last["live"] == SCALE)

        wait_for(converged, timeout=120, interval=0.2, what=lambda: f"convergence at {SCALE} (last: {last})")
        converging = time.monotonic() - killed
        world = settled(census, p.fleet_id)
        tracked = set(_retrying(lambda: store.read_many(["mem"])["mem"].handles))
        assert int(p.r.info("server")["tcp_port"]) == topology.replica
    made = [h for handles in world["launches"].values() for h in handles]
    repeated = len(set(made)) - SCALE  # handles are unique per launch id: every one beyond the 1,000 asked
    orphans = set(world["live"]) - tracked
    print(f"\nfailover at {SCALE}: killed with {at_kill['handles']} handles recorded, {at_kill['running']} running "
          f"({killed - started:.2f} s after the scale request); promoted {promoted:.1f} s, public "
          f"tasks served {serving:.1f} s, converged at {SCALE} {converging:.1f} s after SIGKILL; launch ids "
          f"{len(world['launches'])}, handles made {len(set(made))}, launches repeated {repeated}, orphans "
          f"{len(orphans)}, acknowledged requests lost {lost}, provider high water {world['high_water'].get('mem')}; "
          f"launches whose run message was lost {len(stranded)}")
    assert lost == 0, f"the acknowledged scale to {SCALE} was lost: {first}"
    assert repeated == 0, f"{len(made)} handles made for {SCALE} workers"
    assert world["high_water"].get("mem") == SCALE
    assert not orphans, f"{len(orphans)} handles the provider holds are not tracked: {sorted(orphans)[:5]}"
    assert set(world["live"]) == tracked


LOCAL = CLUSTERS  # the local cluster of tests/test_redis_sentinel.py
BEFORE, AFTER = 2, 5


def _stale_replica_failover(topology: Topology, tmp_path: Path, local_fleets: set[str]) -> dict[str, Any]:
    """Scale `web` to BEFORE (replicated), stall the replica, scale to AFTER (acknowledged, on the
    primary only) and wait until AFTER run; SIGKILL the primary, resume the replica, and wait until
    the control plane converges on whatever the promoted replica holds. What was seen, as a dict."""
    from tests.test_clock_skew import Census, processes

    fleet = f'redis_sentinel_master = "{MASTER}"\nsweep_interval = 1\norphan_grace = 2\nlaunch_timeout = 10\n'
    with plane(tmp_path, LOCAL, fleet=fleet, redis_url=topology.url()) as p, Census(p.fleet_id).running() as seen:
        local_fleets.add(p.fleet_id)
        store = Store(p.r, p.fleet_id)
        status = _answers(p, "web")
        assert p.call("fleet.scale", "web", BEFORE)["desired"] == BEFORE
        wait_for(lambda: store.summary("web").converged_at(BEFORE) and len(processes(p.fleet_id)) == BEFORE,
                 timeout=30, what=f"{BEFORE} running")
        epoch = p.r.get(p.keys.epoch)
        topology.stall_replica()
        with pytest.raises(Exception) as refused:  # applied on the primary, and no replica has it: said so
            p.call("fleet.scale", "web", AFTER)
        wait_for(lambda: store.summary("web").converged_at(AFTER) and len(processes(p.fleet_id)) == AFTER,
                 timeout=30, what=f"{AFTER} running on the primary")
        on_primary = set(store.read_many(["web"])["web"].handles)
        killed = topology.kill_primary()
        topology.resume_replica()
        topology.wait_promoted()
        promoted = _retrying(lambda: store.read_many(["web"])["web"])
        missed = on_primary - set(promoted.handles)
        assert missed, "the replica received every launch: nothing was lost with the primary"
        served = wait_for(status, timeout=60, interval=0.2, what="a public task served after the failover")
        last: dict[str, Any] = {}

        recovering: list[float] = [served["recovering"]]

        def converged() -> bool:
            s = status()
            last.update(status=s, processes=sorted(processes(p.fleet_id)))
            recovering.append(s["recovering"] if s else 0.0)
            return bool(s and store.summary("web").converged and len(last["processes"]) == s["running"])

        wait_for(converged, timeout=60, interval=0.2, what=lambda: f"convergence (last: {last})")
        raw: Any = p.r.xrange(p.keys.cluster("web").events)
        events = [{k.decode(): v.decode() for k, v in e.items()} for _, e in raw]
        facts = {"missed": missed, "on_primary": on_primary, "promoted_desired": promoted.desired,
                 "recovering": max(recovering), "refused": type(refused.value).__name__,
                 "refusal": str(refused.value), "epoch_kept": p.r.get(p.keys.epoch) == epoch,
                 "status": last["status"], "live": set(processes(p.fleet_id)), "seconds": time.monotonic() - killed,
                 "tracked": set(store.read_many(["web"])["web"].handles), "events": events}
    facts.update(doubled=sorted(set(seen.doubled)), seen=set(seen.handles))
    adopted = {h for e in facts["events"] if e["kind"] == "adopted" for h in e.get("handles", "").split(",") if h}
    print(f"\nstale replica: the promoted replica lacked {len(missed)} of {len(on_primary)} handles and the scale to "
          f"{AFTER} (desired {promoted.desired.n if promoted.desired else None}); epoch "
          f"{'kept' if facts['epoch_kept'] else 'changed'}, recovery hold up to {facts['recovering']} s; converged "
          f"{facts['seconds']:.1f} s after SIGKILL at desired {last['status']['desired']}, running "
          f"{last['status']['running']}; adopted {len(adopted & missed)} of the {len(missed)} lost, then killed "
          f"{sum(int(e['count']) for e in facts['events'] if e['kind'] == 'kill')}; launched twice "
          f"{len(facts['doubled'])}, new handles {len(facts['seen'] - on_primary)}, untracked "
          f"{len(facts['live'] - facts['tracked'])}")
    facts["adopted"] = adopted
    return facts


def test_writes_lost_in_a_failover_are_noticed_adopted_and_never_launched_again(topology: Topology, tmp_path: Path,
                                                                                local_fleets: set[str]) -> None:
    """Writes lost to asynchronous replication: the change no replica had was never acknowledged
    (NotReplicated), the failover is noticed and recovered from as a loss of data (the recovery
    hold), what the provider lists is adopted, nothing is launched twice or anew, nothing is left
    untracked, and the cluster settles at the desired number the promoted replica holds."""
    facts = _stale_replica_failover(topology, tmp_path, local_fleets)
    assert facts["refused"] == "NotReplicated", facts["refusal"]
    assert "none of its 1 replica(s) confirmed it" in facts["refusal"]
    assert facts["recovering"] > 0, "the failover went unnoticed: no recovery hold"
    assert not facts["doubled"], f"launched twice: {facts['doubled']}"
    assert facts["seen"] == facts["on_primary"], f"launched after the failover: {facts['seen'] - facts['on_primary']}"
    assert facts["missed"] <= facts["adopted"], "a lost launch was not recovered from the provider's list"
    assert facts["live"] == facts["tracked"], f"untracked {facts['live'] - facts['tracked']}"
    assert facts["status"]["desired"] == BEFORE == facts["status"]["running"]
