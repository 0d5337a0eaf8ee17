"""Redis that is full, and Redis that goes silent, under a control plane of real processes.

* Full: `maxmemory` with `noeviction`, filled from outside with a big key while a `fleet.scale`
  waits on the queue. Redis still serves the worker's BRPOP but refuses the write that records
  the popped message as unacked: the message must go back on its queue (never set aside as
  poison, never lost), the worker must live, a caller must get `RedisRefusesWrites`, and the
  request is served once the key is deleted.
* Silent: a proxy (tests/kits/blackhole.py) between every control-plane process and Redis that
  keeps every connection open and forwards nothing, then forwards new connections again while
  the old ones stay dead. A caller's timeout must bound its call; public tasks and the sweep
  must come back within about 30 s of the heal.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu import Connection

from fleet.client import PublicTasks
from fleet.embedded import EmbeddedRedis
from fleet.errors import FleetError, RedisRefusesWrites
from fleet.store import Store
from fleet.testing.plane import Plane, plane
from tasks.transport import Transport
from tests.conftest import wait_for
from tests.kits.blackhole import BlackHole

ONE = """
    [clusters.one]
    provider = "memory"
    max_workers = 4
    [clusters.one.container]
    command = ["worker"]
"""


@pytest.fixture
def full(tmp_path: Path) -> Iterator[Plane]:
    # no beat: only our request is on the queues while Redis refuses writes
    with plane(tmp_path, ONE, beat=False, persist=False) as p:
        yield p
        p.r.config_set("maxmemory", 0)


def break_disk(r: redis.Redis, tmp: Path) -> str:
    """MISCONF, as on a full disk: RDB snapshots on, and the last one failed (its folder is gone).
    Returns the folder to mend it with."""
    original = str(r.config_get("dir")["dir"])
    gone = tmp / "gone"
    gone.mkdir()
    r.config_set("save", "3600 1")
    r.config_set("stop-writes-on-bgsave-error", "yes")
    r.config_set("dir", str(gone))
    gone.rmdir()
    r.bgsave()
    wait_for(lambda: r.info("persistence")["rdb_last_bgsave_status"] == "err", what="a failed snapshot")
    return original


def mend_disk(r: redis.Redis, original: str) -> None:
    r.config_set("dir", original)
    r.bgsave()
    wait_for(lambda: r.info("persistence")["rdb_last_bgsave_status"] == "ok", what="a snapshot")


def fill(r: redis.Redis) -> str:
    """Set maxmemory a little above what Redis uses (noeviction), then grow one key until a write
    is refused with OOM; then lower maxmemory by 1 MiB, so that what a pop frees never makes room."""
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", int(r.info("memory")["used_memory"]) + 4 * 2**20)
    chunk = b"x" * 2**19
    for _ in range(100):
        try:
            r.append("test:big", chunk)
        except redis.exceptions.OutOfMemoryError:
            r.config_set("maxmemory", int(r.info("memory")["used_memory"]) - 2**20)
            return "test:big"
    raise AssertionError("Redis never refused a write")


@pytest.mark.parametrize("refusal", ["OOM", "MISCONF"])
def test_a_full_redis_never_loses_nor_sets_aside_a_request(full: Plane, refusal: str, tmp_path: Path) -> None:
    p = full
    p.call("fleet.status", "one")
    control = p.stack.procs["control"]
    dead_letters = p.r.llen(p.keys.dead_letters)
    for _ in range(40):  # until the stopped worker's pending BRPOP takes the request (Redis pops it)
        os.kill(control.pid, signal.SIGSTOP)
        pending = p.client().send_task("fleet.scale", args=["one", 3])
        if p.r.llen("celery") == 0:
            break
        os.kill(control.pid, signal.SIGCONT)
        pending.get(timeout=20)
    else:
        pytest.fail("the worker never had a BRPOP pending when stopped")
    try:
        folder = fill(p.r) if refusal == "OOM" else break_disk(p.r, tmp_path)
        # a caller gets the typed refusal, by the server's error code (the text starts "Command # 1")
        started = time.monotonic()
        with pytest.raises(RedisRefusesWrites, match=rf"^Redis refuses writes: {refusal} "):
            PublicTasks(p.stack.url, p.fleet_id, timeout=5).call("fleet.scale", "one", 2)
        assert time.monotonic() - started < 5
    finally:
        os.kill(control.pid, signal.SIGCONT)
    # the worker pops the request (its BRPOP may have taken it while stopped), and Redis refuses
    # to record it as unacked; or its consumer, refused, reconnects until Redis has room
    time.sleep(3)  # Redis stays full: the request must stay on its queue (or unacked) all along
    assert control.poll() is None
    if refusal == "OOM":  # (MISCONF refuses the put-back too: the worker holds the request meanwhile)
        wait_for(lambda: p.r.llen("celery") + p.r.hlen("unacked") == 1, timeout=2,
                 what="the request on its queue or unacked")
    assert not re.search(rb"set aside a message|it is dropped", p.log.read_bytes())
    log = p.log.read_bytes()
    print(f"{refusal}: popped and refused {log.count(b'goes back on its queue')} time(s), "
          f"put-back refused {log.count(b'cannot put back')} time(s)")
    if refusal == "OOM":
        p.r.delete("test:big")
        p.r.config_set("maxmemory", 0)
    else:
        mend_disk(p.r, folder)
    assert pending.get(timeout=30)["desired"] == 3  # served once there is room
    assert control.poll() is None
    assert p.r.llen(p.keys.dead_letters) == dead_letters
    assert not re.search(rb"set aside a message|it is dropped", p.log.read_bytes())


def test_unacked_messages_are_restored_at_once_though_redis_is_full(tmp_path: Path) -> None:
    """What a consumer that reconnects (or stops) while Redis is full restores: kombu's restore
    is one transaction, refused whole; it used to wait for the visibility timeout (an hour)."""
    with EmbeddedRedis(tmp_path / "redis", persist=False, die_with_parent=True) as server, \
            Connection(server.url, transport=Transport) as conn:
        r = redis.Redis(port=server.port)
        queue = conn.SimpleQueue("fleet-full-restore")
        queue.put({"n": 1})
        queue.get(timeout=5)  # delivered, not acknowledged
        assert r.hlen("unacked") == 1
        fill(r)
        queue.channel.qos.restore_unacked()
        assert (r.llen("fleet-full-restore"), r.hlen("unacked"), r.zcard("unacked_index")) == (1, 0, 0)
        r.delete("test:big")
        r.config_set("maxmemory", 0)
        again = queue.get(timeout=5)
        assert again.payload == {"n": 1} and again.delivery_info.get("redelivered")
        again.ack()
        queue.close()


SLOW = """
    [clusters.slow]
    provider = "memory"
    max_workers = 4
    boot_timeout = 1
    [clusters.slow.container]
    command = ["worker"]
    [clusters.slow.provider_options]
    boot_seconds = 3600
"""

#: a caller's timeout during the outage
CALL_TIMEOUT = 4.0
#: the longest recovery allowed after the heal
RECOVERY = 30.0


def test_a_silent_redis_hangs_nothing_and_service_returns_after_the_heal(tmp_path: Path) -> None:
    backend = EmbeddedRedis(tmp_path / "backend", persist=False, die_with_parent=True)
    with backend, BlackHole(backend.port) as proxy, \
            plane(tmp_path, SLOW, fleet="sweep_interval = 1\n", redis_url=proxy.url) as p:
        store = Store(redis.Redis(port=backend.port), p.fleet_id)
        PublicTasks(proxy.url, p.fleet_id, timeout=20).call("fleet.scale", "slow", 2)
        # the sweep times out workers that never boot: a steady stream of boot_timeout events
        wait_for(lambda: any(e["kind"] == "boot_timeout" for e in store.events("slow")), timeout=30,
                 what="a sweep")
        proxy.go_silent()
        started = time.monotonic()
        with pytest.raises(FleetError) as refused:
            PublicTasks(proxy.url, p.fleet_id, timeout=CALL_TIMEOUT).call("fleet.status", "slow")
        took = time.monotonic() - started
        print(f"a call with timeout {CALL_TIMEOUT:g} s into the silent Redis returned after {took:.1f} s: "
              f"{type(refused.value).__name__}")
        assert took < CALL_TIMEOUT + 1.5
        time.sleep(10)  # every process is now stuck on a silent connection, or retrying
        healed_at, healed = time.time(), time.monotonic()
        proxy.heal()

        def served() -> bool:
            try:
                return PublicTasks(proxy.url, p.fleet_id, timeout=3).call("fleet.status", "slow")["cluster"] == "slow"
            except FleetError:
                return False

        wait_for(served, timeout=RECOVERY + 30, interval=0.2, what="a public task served after the heal")
        served_after = time.monotonic() - healed
        wait_for(lambda: any(e["kind"] == "boot_timeout" and e["at"] > healed_at for e in store.events("slow")),
                 timeout=RECOVERY + 30, interval=0.2, what="a sweep after the heal")
        swept_after = time.monotonic() - healed
        print(f"healed at {healed_at:.1f}; after the heal: public tasks served in {served_after:.1f} s, the sweep ran in {swept_after:.1f} s")
        assert served_after < RECOVERY and swept_after < RECOVERY
        for role, proc in p.stack.procs.items():
            assert proc.poll() is None, f"{role} exited"
