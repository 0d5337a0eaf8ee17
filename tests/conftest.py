"""Shared fixtures: a real Redis server on a free port, a real Celery worker (threads pool) and a
real embedded beat, all against one test fleet config. Nothing here mocks Redis or Celery."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
import textwrap
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from fleet.embedded import EmbeddedRedis
from fleet.testing import wait_for

# Each provider's kit (and the real backend it needs) for the provider contract suite.
pytest_plugins = [f"tests.kits.{name}" for name in ("memory", "local", "docker", "aws", "gce")]
__all__ = ["wait_for"]  # tests import it from here too

ROOT = Path(tempfile.mkdtemp(prefix="fleet-tests-"))
# A fleet id of its own per test session: processes or keys left by another run are not ours.
FLEET_ID = "t" + uuid.uuid4().hex[:6]
SWEEP = 0.5
PY = sys.executable
# A real Celery worker of the demo's job app, named after its handle (for drain and autoscale).
CELERY_CMD = [PY, "-m", "celery", "-A", "fleet.demo.jobs", "worker", "--queues", "auto-jobs", "--pool", "threads",
              "--concurrency", "${FLEET_WORKERS}", "--hostname", "${FLEET_HANDLE}@%h", "--loglevel", "WARNING",
              "--without-gossip", "--without-mingle", "--prefetch-multiplier", "1"]
# A local "container": records its environment, then sleeps; exits on SIGTERM.
LOCAL_CMD = [PY, "-c", "import os,json,time,sys; open(os.environ['OUT_DIR']+'/'+os.environ['FLEET_HANDLE']+'.json','w')"
             ".write(json.dumps(dict(os.environ))); time.sleep(3600)"]

CONFIG = textwrap.dedent(f"""
    [fleet]
    id = "{FLEET_ID}"
    sweep_interval = {SWEEP}
    orphan_grace = 2
    launch_timeout = 20
    kill_retry = 0.5

    # sweeps every 0.5 s over several clusters: far more than the default 10 operations a second
    [providers.memory]
    ops_per_second = 1000
    [providers.faulty]
    ops_per_second = 1000
    [providers.local]
    ops_per_second = 1000

    [clusters.shared]
    provider = "memory"
    workers_per_container = 4
    max_workers = 16
    [clusters.shared.container]
    command = ["worker"]

    [clusters.single]
    provider = "memory"
    max_workers = 20
    [clusters.single.container]
    command = ["worker"]

    [clusters.booting]
    provider = "memory"
    max_workers = 10
    boot_timeout = 3600
    [clusters.booting.container]
    command = ["worker"]
    [clusters.booting.provider_options]
    boot_seconds = 3600

    [clusters.burst]
    provider = "memory"
    workers_per_container = 3
    max_workers = 12
    [clusters.burst.container]
    command = ["worker"]

    [clusters.flaky]
    provider = "faulty"
    max_workers = 10
    [clusters.flaky.container]
    command = ["worker"]
    [clusters.flaky.provider_options]
    inner = "memory"

    [clusters.slowboot]
    provider = "memory"
    max_workers = 4
    boot_timeout = 1
    [clusters.slowboot.container]
    command = ["worker"]
    [clusters.slowboot.provider_options]
    boot_seconds = 3600

    [clusters.auto]
    provider = "local"
    max_workers = 4
    queues = ["auto-jobs"]
    drain_timeout = 30
    [clusters.auto.autoscale]
    tasks_per_worker = 2
    scale_down_delay = 4
    agreeing_sweeps = 3
    [clusters.auto.container]
    command = {json.dumps(CELERY_CMD)}
    [clusters.auto.provider_options]
    kill_grace = 10

    [clusters.local]
    provider = "local"
    workers_per_container = 2
    max_workers = 6
    [clusters.local.container]
    command = {json.dumps(LOCAL_CMD)}
    env = {{ OUT_DIR = "{ROOT / 'local-out'}" }}
    [clusters.local.provider_options]
    kill_grace = 2
""")

# It lives as long as this process: Celery result objects still talk to it at interpreter exit.
_server = EmbeddedRedis(ROOT / "redis", persist=False, die_with_parent=True)
REDIS_URL = _server.start()
(ROOT / "fleet.toml").write_text(CONFIG)
(ROOT / "local-out").mkdir()
os.environ.update(FLEET_CONFIG=str(ROOT / "fleet.toml"), FLEET_REDIS_URL=REDIS_URL,
                  FLEET_STATE_DIR=str(ROOT / "state"))


@pytest.fixture(scope="session")
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture(scope="session")
def r() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


@pytest.fixture(scope="session")
def celery_app() -> Any:
    from tasks import app

    return app


@pytest.fixture(scope="session")
def control_plane(celery_app: Any) -> Iterator[Any]:
    """A real control-plane worker (threads pool, every queue of the app) and a real beat, in this
    process (`Stack(in_process=True)`), so that tests can reach into the providers' memory."""
    from fleet.config import load_config
    from fleet.stack import Stack

    with Stack(load_config(ROOT / "fleet.toml"), ROOT / "fleet.toml", redis_url=REDIS_URL, state_dir=ROOT / "state",
               in_process=True, concurrency=8):
        yield celery_app


@pytest.fixture(scope="session", autouse=True)
def _no_local_leftovers() -> Iterator[None]:
    """Whatever a test did, no local worker process of this session outlives it."""
    yield
    from fleet.config import load_config
    from fleet.provider import Cluster, ProviderContext
    from providers.local import LocalProvider

    config = load_config(ROOT / "fleet.toml")
    provider = LocalProvider(ProviderContext(FLEET_ID, ROOT))
    for name in ("local", "auto"):
        spec = config.spec(name)
        ref = Cluster(FLEET_ID, name, spec.workers_per_container, LocalProvider.validate_options(spec.provider_options))
        provider.kill_workers(ref, list(provider.list_workers(ref)))


@pytest.fixture
def fleet(control_plane: Any, r: redis.Redis) -> Iterator[Any]:
    """The running control plane, with this fleet's state and memory workers wiped first."""
    from providers.memory import MemoryProvider
    from tasks.app import manager

    # in one DEL, so that a task still at work from the last test never reads half-wiped state;
    # the epoch stays: losing it means "Redis lost data"
    keys = [k for k in r.scan_iter(f"fleet:{FLEET_ID}:*") if k != f"fleet:{FLEET_ID}:epoch".encode()]
    if keys:
        r.delete(*keys)
    MemoryProvider.reset()
    yield manager()


def converged(manager: Any, cluster: str, n: int) -> Callable[[], bool]:
    def check() -> bool:
        st = manager.store.read(cluster)
        return st.converged and st.desired.n == n

    return check


def workers_by_handle(manager: Any, cluster: str) -> list[int]:
    return sorted(r.workers for r in manager.store.read(cluster).handles.values())


# -- the managed layer in this process, its work run in order (fleet.testing.inline) ------------

def wipe(fleet_id: str) -> None:
    """Delete every key of a test's own fleet from the session's Redis."""
    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(match=f"fleet:{fleet_id}:*"))
    if keys:
        r.delete(*keys)


@pytest.fixture
def fid() -> Iterator[str]:
    """A fleet id of this test's own, its keys deleted afterwards."""
    fleet_id = "t" + uuid.uuid4().hex[:9]
    yield fleet_id
    wipe(fleet_id)


def inline(fleet_id: str, clusters: dict[str, Any], state: Path | None = None) -> tuple[Any, Any]:
    """(Manager, InlineDispatcher) of `clusters` on the session's Redis (no orphan adoption during
    a test: orphan_grace of an hour; no rate limit on the memory and local providers)."""
    from fleet.config import parse_config
    from fleet.testing.inline import inline_manager

    config = parse_config({"fleet": {"id": fleet_id, "orphan_grace": 3600, **({"state_dir": str(state)} if state else {})},
                           "providers": {"memory": {"ops_per_second": 10000}, "local": {"ops_per_second": 10000}},
                           "clusters": clusters}, "<test>")
    return inline_manager(config, REDIS_URL)


def work(d: Any, most: int = 300) -> Counter[str]:
    """Run the queued jobs in order, `most` at most: a livelock must fail the test, not hang it
    (no retry: an error fails the test too)."""
    done: Counter[str] = Counter()
    while d.jobs and sum(done.values()) < most:
        kind, args = d.jobs.popleft()
        done[kind] += 1
        d.do(kind, args)
    assert not d.jobs, f"still {len(d.jobs)} jobs after {most}: a livelock ({dict(done)})"
    return done


@contextmanager
def inline_cloud(fake: Any, config: Any) -> Iterator[tuple[Any, Any]]:
    """(Manager, InlineDispatcher) of `config` (clusters on moto and the fake GCE server), every
    cluster scaled back to 0 and the fleet's keys deleted afterwards."""
    from fleet.testing.inline import drive, inline_manager

    fake.clear_faults()
    fake.ready_after_reads = 0
    manager, dispatcher = inline_manager(config, REDIS_URL)
    try:
        yield manager, dispatcher
    finally:
        for cluster in config.clusters:
            drive(manager, dispatcher, cluster, 0, timeout=120)
        fake.ready_after_reads = 1
        wipe(config.fleet.id)


@pytest.fixture
def local_fleets() -> Iterator[set[str]]:
    """Fleet ids whose local workers (which outlive their control plane) are SIGKILLed at the end."""
    from tests.test_clock_skew import processes

    ids: set[str] = set()
    yield ids
    for fleet_id in ids:
        for pids in processes(fleet_id).values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
