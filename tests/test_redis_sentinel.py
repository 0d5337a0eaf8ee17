"""Fleet behind Redis Sentinel, with real servers (tests/kits/sentinel.py: a primary, a replica,
three sentinels): Fleet's broker transport serves `sentinel://` (poison set aside, as on
`redis://`), and after the primary is SIGKILLed and Sentinel promotes the replica, a broker
channel and a `fleet.connection.connect()` client (the CLI's, the console's) made before the kill
reach the new primary within seconds, with a message acknowledged by the replica before the kill
still delivered."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection

from fleet.config import FleetSettings
from fleet.connection import RedisTarget, connect
from fleet.deadletters import dead_letter_key
from tasks.transport import CONNECTION_ERRORS, SentinelTransport
from tests.kits.sentinel import MASTER, Topology, sentinel_topology

FLEET = "sentinel-t"
QUEUE = "fleet-sentinel-test"
#: What a client meets while Sentinel promotes the replica.
RETRIED: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, redis.ReadOnlyError)


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    with sentinel_topology(tmp_path) as running:
        yield running


def broker(topology: Topology) -> Connection:
    return Connection(topology.url(), transport=SentinelTransport,
                      transport_options={"master_name": MASTER, "fleet_id": FLEET, "socket_timeout": 2,
                                         "socket_connect_timeout": 1})


def test_poison_on_a_queue_behind_sentinel_is_set_aside(topology: Topology) -> None:
    with broker(topology) as conn:
        queue = conn.SimpleQueue(QUEUE)
        assert isinstance(queue.channel, SentinelTransport.Channel)
        primary = redis.Redis(port=topology.primary)
        primary.lpush(QUEUE, b"\xff not json")  # popped first
        queue.put({"n": 1})
        message = queue.get(timeout=10)
        assert message.payload == {"n": 1}
        message.ack()
        assert primary.llen(dead_letter_key(FLEET)) == 1  # set aside on the primary, not fatal
        queue.close()


def _until(what: str, attempt: Any, timeout: float = 30.0) -> Any:
    """Call `attempt` until it returns without a connection error; its result."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return attempt()
        except RETRIED as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not recover: {exc!r}") from exc
            time.sleep(0.1)


def test_after_a_failover_the_broker_and_fleets_clients_reach_the_new_primary(topology: Topology) -> None:
    target = RedisTarget.from_settings(topology.url(), FleetSettings(id=FLEET, redis_sentinel_master=MASTER),
                                       env={})
    client = connect(target)  # what the CLI, the console and fleet.probe use
    client.set("fleet:before", "1")
    with broker(topology) as conn:
        queue = conn.SimpleQueue(QUEUE)
        queue.put({"n": "before"})
        assert redis.Redis(port=topology.primary).wait(1, 5000) == 1  # the replica has it

        killed = topology.kill_primary()
        promoted = topology.wait_promoted()

        def serve() -> Any:
            try:
                message = queue.get(timeout=2)
            except CONNECTION_ERRORS:
                queue.channel._disconnect_pools()  # what kombu does on a connection error
                raise
            message.ack()
            return message.payload

        assert _until("the broker channel", serve) == {"n": "before"}
        served = time.monotonic()
        queue.put({"n": "after"})
        assert queue.get(timeout=5).payload == {"n": "after"}
        queue.close()
    assert _until("connect()'s client", lambda: client.set("fleet:after", "1"))
    reconnected = time.monotonic()
    assert int(client.info("server")["tcp_port"]) == topology.replica
    assert client.get("fleet:before") == b"1"
    print(f"\nfailover: promoted {promoted - killed:.1f} s after SIGKILL; broker served again after "
          f"{served - killed:.1f} s; connect() client after {reconnected - killed:.1f} s")


CLUSTERS = """
[clusters.web]
provider = "local"
max_workers = 8
[clusters.web.container]
command = ["sh", "-c", "exec sleep 600"]
[clusters.web.provider_options]
kill_grace = 1
"""


def test_a_control_plane_behind_sentinel_converges_on_the_new_primary(topology: Topology, tmp_path: Path,
                                                                      local_fleets: set[str]) -> None:
    """SIGKILL the primary mid scale-up: public tasks are served again and the cluster converges,
    with no handle launched twice and every live process tracked; the CLI works on the URL."""
    from fleet.store import Store
    from fleet.testing.plane import plane
    from tests.conftest import wait_for
    from tests.test_clock_skew import Census, fleet_cli, processes

    fleet = f'redis_sentinel_master = "{MASTER}"\nsweep_interval = 1\n'
    with plane(tmp_path, CLUSTERS, fleet=fleet, redis_url=topology.url()) as p, Census(p.fleet_id).running() as seen:
        local_fleets.add(p.fleet_id)
        assert p.call("fleet.status", "web")["cluster"] == "web"
        pending = p.client().send_task("fleet.scale", args=["web", 6])
        wait_for(lambda: len(processes(p.fleet_id)) >= 1, timeout=30, interval=0.02, what="a first launch")
        killed = topology.kill_primary()
        topology.wait_promoted()

        def served() -> bool:
            try:
                return bool(p.call("fleet.status", "web", timeout=3)["cluster"] == "web")
            except Exception:  # noqa: BLE001 - not yet
                return False

        wait_for(served, timeout=60, interval=0.2, what="a public task served after the failover")
        serving = time.monotonic() - killed
        try:  # sent before the kill and not acknowledged by Redis's replica: may be lost with the write
            lost = 0 if pending.get(timeout=5)["desired"] == 6 else 1
        except Exception:  # noqa: BLE001 - lost (counted)
            lost = 1
        del pending  # its result consumer unsubscribes now, while Redis runs, not at exit
        cli = fleet_cli(p, "scale", "web", "6")
        assert cli.returncode == 0, cli.stderr[-2000:]

        last: dict[str, Any] = {}

        def converged() -> bool:
            s = p.call("fleet.status", "web")
            last.update(status={k: s.get(k) for k in ("desired", "running", "initializing", "stopping", "draining")},
                        processes=sorted(processes(p.fleet_id)))
            return s["desired"] == 6 and s["running"] == 6 and len(last["processes"]) == 6

        wait_for(converged, timeout=90, interval=0.2, what=lambda: f"convergence on the new primary (last: {last})")
        converging = time.monotonic() - killed
        status = fleet_cli(p, "status", "web")
        assert status.returncode == 0, status.stderr[-2000:]
        live = processes(p.fleet_id)
        tracked = set(Store(p.r, p.fleet_id).read_many(["web"])["web"].handles)
        orphans = set(live) - tracked
        assert int(p.r.info("server")["tcp_port"]) == topology.replica
    assert not seen.doubled, f"launched twice: {sorted(set(seen.doubled))}"
    assert not orphans, f"untracked processes: {sorted(orphans)}"
    print(f"\ncontrol plane: public tasks served {serving:.1f} s after SIGKILL, converged after {converging:.1f} s; "
          f"handles seen {len(seen.handles)}, launched twice 0, orphans 0, in-flight requests lost {lost}")
