"""`fleet bench`: how fast and how cheap Fleet is, measured side by side on this machine, in one run.

Sections (see docs/benchmarks.md for figures and what they led to):

1. ``convergence``: scale 0 -> N -> 0 through a real ``celery -A tasks worker`` subprocess
   (threads pool) and a real Redis (embedded, no persistence), with the ``memory`` provider (it
   lives in the worker process, as do the worker's Fleet state objects). A driver thread sends
   ``fleet.sweep`` every ``SWEEP_INTERVAL`` seconds, exactly what ``celery beat`` sends. Beside
   it, N round trips of the no-op task ``fleet.noop``.
2. ``sweep``: one full sweep (``Manager.sweep_cluster`` per cluster, in this process, no-op
   dispatcher) over many handles and clusters; Redis round trips counted by a counting
   connection class, commands from INFO commandstats.
3. ``throughput``: ``fleet.scale`` requests per second one control-plane worker absorbs, beside
   no-op tasks per second.
4. ``cloud``: API calls to scale 0 -> N -> 0 on aws_ec2 and aws_ecs (moto server) and gce (the
   fake server of fleet.testing.backends.gce), through the managed layer in this process with an
   in-process dispatcher, beside one call per instance.
5. ``containers``: time to N running containers through Fleet with the docker provider against
   podman's Docker API, beside a plain loop of docker SDK calls.

The control plane of sections 1, 3 and 5 is `fleet.stack.Stack` (through `fleet.testing.plane`),
the one `fleet up` runs. Cloud SDKs and backends are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
import textwrap
import time
import traceback
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from fleet.embedded import EmbeddedRedis
from fleet.keys import Keyspace
from fleet.testing.plane import Plane, plane
from fleet.wrappers import ProviderWrapper

SECTIONS = ("convergence", "sweep", "throughput", "cloud", "containers")
SWEEP_INTERVAL = 0.25


@dataclass
class Sizes:
    converge: tuple[int, ...] = (100, 1000, 10_000)
    sweep: tuple[tuple[int, int], ...] = tuple((h, c) for h in (1000, 10_000, 100_000) for c in (10, 100))
    scale_requests: int = 2000
    cloud: int = 1000
    containers: int = 20
    skip: dict[str, str] = field(default_factory=dict)

    @classmethod
    def quick(cls, only: tuple[str, ...]) -> Sizes:
        skip = {} if only else {"cloud": "--quick without --only cloud",
                                "containers": "--quick without --only containers"}
        return cls(converge=(20,), sweep=((200, 2), (400, 2), (400, 4)), scale_requests=100, cloud=20, containers=3,
                   skip=skip)


# -- measuring helpers -------------------------------------------------------------------

def commandstats(client: redis.Redis) -> Counter[str]:
    """Calls per Redis command since the server started (commands run by scripts included)."""
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in client.info("commandstats").items()})


def delta(after: Counter[str], before: Counter[str], *, minus: Counter[str] | None = None) -> Counter[str]:
    out = Counter({k: after[k] - before.get(k, 0) for k in after})
    out["info"] = 0  # our own INFO calls
    out.subtract(minus or Counter())
    return +out


def op_counts(client: redis.Redis, fleet_id: str) -> Counter[str]:
    """Provider operations the instrumentation recorded: op -> count (all providers)."""
    raw = client.hgetall(Keyspace(fleet_id).metrics)
    out: Counter[str] = Counter()
    for k, v in raw.items():
        key = k.decode()
        if key.startswith("op_count|"):
            _, _provider, op = key.split("|")
            out[op] += int(v)
    return out


class CountingConnection(redis.Connection):
    """Counts round trips: every packed send (one command, or a whole pipeline) is one."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


def machine() -> dict[str, Any]:
    model, mem = "?", "?"
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "memory": mem, "python": platform.python_version(),
            "platform": platform.platform()}


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process, in KiB."""
    out = {}
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(("VmRSS", "VmHWM")):
                out[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return out


# -- a control plane of real processes ------------------------------------------------------

PROVIDER_LIMITS = """
[providers.{name}]
ops_per_second = 10000
concurrent_launches = 64
"""


class ControlPlane:
    """Measurements on a control plane of real processes (`Plane`: one `celery -A tasks worker`
    subprocess, threads pool, and a real beat sending `fleet.sweep` every `sweep_interval`)."""

    def __init__(self, running: Plane, sweep_interval: float, concurrency: int) -> None:
        self.p = running
        self.fleet_id = running.fleet_id
        self.r = running.r
        self.client = running.client()
        self.sweep_interval = sweep_interval
        self.concurrency = concurrency
        self.client.send_task("fleet.noop").get(timeout=60)  # the worker is up and consuming

    @property
    def worker_pid(self) -> int:
        return self.p.stack.procs["worker"].pid

    def converged(self, cluster: str, n: int, polls: Counter[str]) -> bool:
        """running == desired == n, nothing pending or on its way (every bench handle holds one
        worker). Cheap checks first: HVALS only once the counts add up."""
        k = self.p.keys.cluster(cluster)
        pipe = self.r.pipeline(transaction=False)
        pipe.hget(k.desired, "n")
        pipe.hlen(k.pending)
        pipe.hlen(k.handles)
        desired, pending, handles = pipe.execute()
        polls.update(hget=1, hlen=2)
        if desired is None or int(desired) != n or pending or handles != n:
            return False
        if n == 0:
            return True
        polls.update(hvals=1)
        return b"".join(self.r.hvals(k.handles)).count(b'"s":"running"') == n

    def wait(self, cluster: str, n: int, polls: Counter[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.converged(cluster, n, polls):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def round_trips(self, n: int, timeout: float = 600.0) -> float:
        """Seconds for n no-op task round trips (send all, then wait for every result)."""
        started = time.perf_counter()
        results = [self.client.send_task("fleet.noop") for _ in range(n)]
        for res in results:
            res.get(timeout=timeout)
        return time.perf_counter() - started

    def scale_to(self, cluster: str, n: int, timeout: float) -> dict[str, Any]:
        polls: Counter[str] = Counter()
        before_cmd, before_ops = commandstats(self.r), op_counts(self.r, self.fleet_id)
        started = time.perf_counter()
        self.client.send_task("fleet.scale", args=[cluster, n]).get(timeout=60)
        ok = self.wait(cluster, n, polls, timeout)
        elapsed = time.perf_counter() - started
        cmds = delta(commandstats(self.r), before_cmd, minus=polls)
        ops = op_counts(self.r, self.fleet_id)
        ops.subtract(before_ops)
        return {"seconds": round(elapsed, 3), "converged": ok, "redis_commands": sum(cmds.values()),
                "celery_messages": cmds.get("lpush", 0), "provider_calls": dict(+ops),
                "top_commands": dict(cmds.most_common(8))}


@contextmanager
def control_plane(work: Path, clusters_toml: str, providers: tuple[str, ...] = ("memory",),
                  sweep_interval: float = SWEEP_INTERVAL, concurrency: int = 8) -> Iterator[ControlPlane]:
    """A Stack of its own (embedded Redis without persistence, one worker, one beat) in `work`."""
    work.mkdir(parents=True, exist_ok=True)
    fleet = f"sweep_interval = {sweep_interval}\nlaunch_timeout = 120\n" + "".join(
        PROVIDER_LIMITS.format(name=p) for p in providers)
    with plane(work, clusters_toml, fleet=fleet, prefix="b", persist=False, concurrency=concurrency,
               worker_args=["--without-heartbeat"]) as running:
        yield ControlPlane(running, sweep_interval, concurrency)


def memory_clusters(names_max: dict[str, int]) -> str:
    return "".join(textwrap.dedent(f"""
        [clusters.{name}]
        provider = "memory"
        max_workers = {mx}
        boot_timeout = 3600
        [clusters.{name}.container]
        command = ["worker"]
        """) for name, mx in names_max.items())


# -- sections 1 and 3 ----------------------------------------------------------------------

def section_convergence(cp: ControlPlane, sizes: tuple[int, ...], say: Callable[[str], None]) -> dict[str, Any]:
    rows = []
    memory: dict[str, Any] = {}
    for n in sizes:
        say(f"convergence: N = {n}: {n} no-op round trips ...")
        before = commandstats(cp.r)
        baseline = cp.round_trips(n)
        base_cmds = delta(commandstats(cp.r), before)
        timeout = 120 + n / 20
        say(f"convergence: N = {n}: scale 0 -> {n} ...")
        up = cp.scale_to("bench", n, timeout)
        if n == max(sizes):
            memory = {"handles": n, **proc_status(cp.worker_pid)}
        say(f"convergence: N = {n}: scale {n} -> 0 ...")
        down = cp.scale_to("bench", 0, timeout)
        rows.append({"n": n, "baseline_seconds": round(baseline, 3), "baseline_redis_commands": sum(base_cmds.values()),
                     "baseline_celery_messages": base_cmds.get("lpush", 0), "up": up, "down": down,
                     "ratio_up": round(up["seconds"] / baseline, 2),
                     "ratio_down": round(down["seconds"] / baseline, 2)})
    memory.update(after=proc_status(cp.worker_pid))
    return {"worker": f"1 `celery -A tasks worker --pool threads --concurrency {cp.concurrency}` subprocess",
            "sweep_interval": cp.sweep_interval, "rows": rows, "memory": memory}


def _worker_rate(results: list[Any]) -> float:
    """Tasks per second the worker finished them at: (n - 1) / (last done - first done), from the
    `date_done` the worker stores with each result (the client's own pace does not count)."""
    from datetime import datetime

    done = []
    for res in results:
        d = res.date_done
        done.append(datetime.fromisoformat(d) if isinstance(d, str) else d)
    span = (max(done) - min(done)).total_seconds()
    return (len(done) - 1) / span if span > 0 else float("inf")


def section_throughput(cp: ControlPlane, m: int, say: Callable[[str], None]) -> dict[str, Any]:
    """A burst of `m` fleet.scale requests (values 0..4 in turn, so each may change the plan)
    against one cluster, then `m` no-op tasks, through the same worker."""
    say(f"throughput: {m} fleet.scale requests ...")
    before = commandstats(cp.r)
    started = time.perf_counter()
    results = [cp.client.send_task("fleet.scale", args=["burst", i % 5]) for i in range(m)]
    for res in results:
        res.get(timeout=600)
    scale_s = time.perf_counter() - started
    cmds = delta(commandstats(cp.r), before)
    scale_rate = _worker_rate(results)
    say(f"throughput: {m} no-op tasks ...")
    started = time.perf_counter()
    results = [cp.client.send_task("fleet.noop") for _ in range(m)]
    for res in results:
        res.get(timeout=600)
    noop_s = time.perf_counter() - started
    noop_rate = _worker_rate(results)
    launches = int(cp.r.hget(cp.p.keys.metrics, "events|burst|launch") or 0)
    return {"requests": m, "scale_per_second": round(scale_rate, 1), "noop_per_second": round(noop_rate, 1),
            "ratio": round(scale_rate / noop_rate, 2),
            "client_scale_per_second": round(m / scale_s, 1), "client_noop_per_second": round(m / noop_s, 1),
            "celery_messages": cmds.get("lpush", 0), "launch_events": launches,
            "redis_commands_per_request": round(sum(cmds.values()) / m, 1)}


# -- section 2: sweep cost -------------------------------------------------------------------

class _Dispatcher:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def run(self, *a: Any) -> None:
        self.calls["run"] += 1

    def kill(self, *a: Any) -> None:
        self.calls["kill"] += 1

    def reconcile(self, *a: Any) -> None:
        self.calls["reconcile"] += 1

    def drain(self, *a: Any) -> None:
        self.calls["drain"] += 1


class _Timed(ProviderWrapper):
    """Sums the seconds spent in the provider it wraps (to report Fleet's own time apart)."""

    seconds = 0.0

    def _call(self, op: str, cluster: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(cluster, *args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started


def _time_provider(wrapped: ProviderWrapper) -> _Timed:
    """Put a _Timed right around the raw provider under `wrapped`'s wrappers."""
    layer = wrapped
    while isinstance(layer.inner, ProviderWrapper):
        layer = layer.inner
    timer = _Timed(layer.inner, layer.name)
    layer.inner = timer
    return timer


def section_sweep(work: Path, cases: tuple[tuple[int, int], ...], say: Callable[[str], None]) -> dict[str, Any]:
    from fleet.config import parse_config
    from fleet.manager import Manager
    from providers.memory import MemoryProvider

    server = EmbeddedRedis(work / "sweep-redis", persist=False, die_with_parent=True)
    url = server.start()
    rows = []
    try:
        plain = redis.Redis.from_url(url)
        for handles, clusters in cases:
            say(f"sweep: {handles} handles over {clusters} clusters: seeding ...")
            plain.flushdb()
            MemoryProvider.reset()
            fid = "s" + uuid.uuid4().hex[:8]
            names = [f"c{i:03d}" for i in range(clusters)]
            data = {"fleet": {"id": fid, "launch_timeout": 600},
                    "providers": {"memory": {"ops_per_second": 10000}},
                    "clusters": {c: {"provider": "memory", "max_workers": 1_000_000, "boot_timeout": 36000,
                                     "container": {"command": ["worker"]}} for c in names}}
            config = parse_config(data, "<bench>")
            pool = redis.ConnectionPool.from_url(url, connection_class=CountingConnection)
            dispatcher = _Dispatcher()
            manager = Manager(config, redis.Redis(connection_pool=pool), dispatcher, url=url)
            raw = manager.pool.raw("memory")
            per = handles // clusters
            for c in names:
                spec, ref = config.spec(c), manager.pool.cluster(c)
                for start in range(0, per, 5000):
                    count = min(5000, per - start)
                    lid = uuid.uuid4().hex
                    got = raw.run_workers(ref, spec.container, spec.hardware, count, launch_id=lid)
                    manager.store.record_launch(c, lid, got)
                manager.store.set_desired(c, per)
            timer = _time_provider(manager.pool.get("memory"))
            row: dict[str, Any] = {"handles": handles, "clusters": clusters}
            for label in ("first", "steady"):  # first: every handle turns running; steady: nothing changes
                say(f"sweep: {handles} handles over {clusters} clusters: {label} sweep ...")
                before, sent, timer.seconds = commandstats(plain), CountingConnection.sent, 0.0
                started = time.perf_counter()
                for c in names:
                    manager.sweeper.sweep_cluster(c)
                elapsed = time.perf_counter() - started
                cmds = delta(commandstats(plain), before)
                row[label] = {"seconds": round(elapsed, 3), "provider_seconds": round(timer.seconds, 3),
                              "fleet_seconds": round(elapsed - timer.seconds, 3),
                              "round_trips": CountingConnection.sent - sent,
                              "round_trips_per_cluster": round((CountingConnection.sent - sent) / clusters, 1),
                              "redis_commands": sum(cmds.values())}
            st = manager.store.read_many(names)
            row["running"] = sum(s.count("running") for s in st.values())
            rows.append(row)
            pool.disconnect()
    finally:
        server.stop()
        MemoryProvider.reset()
    return {"rows": rows}


# -- section 4: cloud API economy --------------------------------------------------------------

class _QueueDispatcher:
    """Runs the managed layer's work in this process, one job at a time, in order."""

    def __init__(self) -> None:
        self.jobs: deque[tuple[str, tuple[Any, ...]]] = deque()
        self.manager: Any = None

    def run(self, cluster: str, launch_id: str, provider: str) -> None:
        self.jobs.append(("run", (cluster, launch_id)))

    def kill(self, cluster: str, handles: Any, provider: str) -> None:
        self.jobs.append(("kill", (cluster, list(handles))))

    def reconcile(self, cluster: str) -> None:
        self.jobs.append(("reconcile", (cluster,)))

    def drain(self, cluster: str, handles: Any) -> None:
        pass

    def work(self) -> None:
        from fleet.errors import TransientProviderError

        while self.jobs:
            kind, args = self.jobs.popleft()
            try:
                if kind == "run":
                    self.manager.launcher.run_launch(*args)
                elif kind == "kill":
                    self.manager.launcher.kill_handles(*args)
                else:
                    self.manager.reconciler.reconcile(*args)
            except TransientProviderError:
                time.sleep(0.2)
                self.jobs.append((kind, args))


def _drive(manager: Any, dispatcher: _QueueDispatcher, cluster: str, n: int, timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    manager.api.scale(cluster, n)
    sweeps = 0
    while True:
        dispatcher.work()
        st = manager.store.read(cluster)
        if st.converged and st.desired and st.desired.n == n:
            return {"seconds": round(time.perf_counter() - started, 2), "sweeps": sweeps, "converged": True}
        if time.perf_counter() - started > timeout:
            return {"seconds": round(time.perf_counter() - started, 2), "sweeps": sweeps, "converged": False}
        manager.sweeper.sweep_cluster(cluster)
        sweeps += 1
        time.sleep(0.05)


EC2_MUTATING = {"RunInstances", "TerminateInstances", "StopInstances", "CreateTags"}
ECS_MUTATING = {"RunTask", "StopTask", "TagResource"}
GCE_MUTATING = {"insert", "delete"}


def section_cloud(work: Path, n: int, say: Callable[[str], None]) -> dict[str, Any]:
    from fleet.config import parse_config
    from fleet.control.reconciler import LAUNCH_CHUNK
    from fleet.manager import Manager
    from fleet.testing.backends.aws import moto_world
    from fleet.testing.backends.gce import FakeGCE

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's access log

    server = EmbeddedRedis(work / "cloud-redis", persist=False, die_with_parent=True)
    url = server.start()
    fake = FakeGCE()
    fake.ready_after_reads = 0
    gce_url = fake.start()
    rows: dict[str, Any] = {}
    try:
        with moto_world() as aws:
            fid = "k" + uuid.uuid4().hex[:8]
            common = {"max_workers": n, "boot_timeout": 3600, "container": {"command": ["worker"]}}
            data = {"fleet": {"id": fid, "launch_timeout": 600, "orphan_grace": 3600},
                    "providers": {p: {"ops_per_second": 10000, "concurrent_launches": 64}
                                  for p in ("aws_ec2", "aws_ecs", "gce")},
                    "clusters": {
                        "ec2": {**common, "provider": "aws_ec2", "provider_options": aws.ec2_options()},
                        "ecs": {**common, "provider": "aws_ecs", "hardware": {"cpu": 0.25, "memory_mb": 512},
                                "provider_options": aws.ecs_options()},
                        "gce": {**common, "provider": "gce", "provider_options": {
                            "project": "fleet-bench", "zone": "bench-zone-a", "api_endpoint": gce_url,
                            "anonymous": True,
                            "source_image": "projects/debian-cloud/global/images/family/debian-12",
                            "operation_timeout": 60, "retry_deadline": 5}},
                    }}
            config = parse_config(data, "<bench>")
            dispatcher = _QueueDispatcher()
            manager = Manager(config, redis.Redis.from_url(url), dispatcher, url=url)
            dispatcher.manager = manager
            for cluster, mutating in (("ec2", EC2_MUTATING), ("ecs", ECS_MUTATING), ("gce", GCE_MUTATING)):
                calls: Counter[str] = Counter()
                if cluster == "gce":
                    fake.reset_counters()
                else:
                    provider: Any = manager.pool.raw(config.spec(cluster).provider)
                    client = provider.client(manager.pool.cluster(cluster))
                    client.meta.events.register("before-call",
                                                lambda model, calls=calls, **_: calls.update([model.name]))
                row: dict[str, Any] = {}
                for phase, target in (("up", n), ("down", 0)):
                    say(f"cloud: {cluster}: scale to {target} ...")
                    calls.clear()
                    if cluster == "gce":
                        fake.reset_counters()
                    result = _drive(manager, dispatcher, cluster, target, timeout=600)
                    seen = Counter(fake.calls) if cluster == "gce" else Counter(calls)
                    row[phase] = {**result, "mutating": sum(v for k, v in seen.items() if k in mutating),
                                  "reads": sum(v for k, v in seen.items() if k not in mutating), "calls": dict(seen)}
                row["mutating"] = row["up"]["mutating"] + row["down"]["mutating"]
                row["reads"] = row["up"]["reads"] + row["down"]["reads"]
                row["baseline_mutating"] = 2 * n  # one run and one terminate per instance
                rows[cluster] = row
    finally:
        fake.stop()
        server.stop()
    return {"n": n, "launch_chunk": LAUNCH_CHUNK, "providers": rows}


# -- section 5: real containers ----------------------------------------------------------------

def section_containers(work: Path, n: int, say: Callable[[str], None]) -> dict[str, Any]:
    from fleet.testing.backends.podman import podman_missing, podman_service

    missing = podman_missing()
    if missing:
        return {"skipped": f"needs podman, runc and /bin/busybox (missing: {missing})"}
    try:
        import docker
    except ImportError:
        return {"skipped": "the docker SDK is not installed (pip install 'fleet[docker]')"}

    # podman's Docker API on a private socket with the test image, as the docker provider's tests use
    with podman_service("fleet-bench.run") as podman:
        base_url, image, label = podman.base_url, podman.image, podman.session_label
        api = docker.DockerClient(base_url=base_url, timeout=60).api
        key, value = label.split("=", 1)

        def plain(count: int, prefix: str) -> float:
            started = time.perf_counter()
            for i in range(count):
                name = f"{prefix}-{i}"
                host = api.create_host_config(nano_cpus=int(0.25e9), mem_limit=256 * 1024 * 1024)
                api.create_container(image, ["sleep", "3600"], name=name, labels={key: value}, host_config=host,
                                     detach=True)
                api.start(name)
            return time.perf_counter() - started

        def remove_plain() -> None:
            for c in api.containers(all=True, filters={"label": [label, "fleet-bench.plain=1"]}):
                api.remove_container(c["Id"], force=True)

        say("containers: warm-up ...")
        plain(1, f"warm-{uuid.uuid4().hex[:6]}")
        for c in api.containers(all=True, filters={"label": [label]}):
            api.remove_container(c["Id"], force=True)
        say(f"containers: plain docker SDK loop, {n} x (create + start) ...")
        baseline = plain(n, f"plain-{uuid.uuid4().hex[:6]}")
        for c in api.containers(all=True, filters={"label": [label]}):
            api.remove_container(c["Id"], force=True)
        clusters = textwrap.dedent(f"""
            [clusters.docker]
            provider = "docker"
            max_workers = {n}
            boot_timeout = 600
            hardware = {{ cpu = 0.25, memory_mb = 256 }}
            [clusters.docker.container]
            image = "{image}"
            command = ["sleep", "3600"]
            [clusters.docker.provider_options]
            base_url = "{base_url}"
            timeout = 60
            labels = {{ "{key}" = "{value}" }}
            """)
        with control_plane(work / "containers", clusters, providers=("docker",)) as cp:
            say(f"containers: Fleet, scale 0 -> {n} ...")
            up = cp.scale_to("docker", n, timeout=300)
            say(f"containers: Fleet, scale {n} -> 0 ...")
            down = cp.scale_to("docker", 0, timeout=300)
        remove_plain()
    return {"n": n, "baseline_seconds": round(baseline, 3), "fleet_up": up, "fleet_down": down,
            "ratio": round(up["seconds"] / baseline, 2), "sweep_interval": SWEEP_INTERVAL}


# -- the run -----------------------------------------------------------------------------------

def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    conv = results.get("convergence", {})
    row = next((r for r in conv.get("rows", []) if r["n"] == 1000), None)
    if row:
        worst = max(row["ratio_up"], row["ratio_down"])
        out.append({"target": "N=1000 converges within 3x 1000 no-op round trips", "value": worst, "met": worst <= 3})
    sweep = results.get("sweep", {}).get("rows", [])
    if sweep:
        by_clusters: dict[int, set[int]] = {}
        for r in sweep:
            by_clusters.setdefault(r["clusters"], set()).add(r["steady"]["round_trips"])
        flat = all(len(v) == 1 for v in by_clusters.values())
        out.append({"target": "sweep round trips independent of handles",
                    "value": {k: sorted(v) for k, v in by_clusters.items()}, "met": flat})
    thr = results.get("throughput", {})
    if "scale_per_second" in thr:
        out.append({"target": ">= 500 scale requests/s per worker", "value": thr["scale_per_second"],
                    "met": thr["scale_per_second"] >= 500})
    ec2 = results.get("cloud", {}).get("providers", {}).get("ec2")
    if ec2:
        out.append({"target": "EC2 0 -> N -> 0 in <= 25 mutating calls", "value": ec2["mutating"],
                    "met": ec2["mutating"] <= 25})
    cont = results.get("containers", {})
    if "ratio" in cont:
        out.append({"target": "real containers overhead ratio <= 1.10", "value": cont["ratio"],
                    "met": cont["ratio"] <= 1.10})
    return out


def run_bench(*, quick: bool = False, only: tuple[str, ...] = (), json_path: str | None = None,
              console: Any = None) -> int:
    from rich.console import Console

    console = console or Console()
    err = Console(stderr=True)

    def say(text: str) -> None:
        err.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {text}", highlight=False)

    sizes = Sizes.quick(only) if quick else Sizes()
    wanted = [s for s in SECTIONS if not only or s in only]
    results: dict[str, Any] = {"machine": machine(), "quick": quick, "sections": wanted}
    failed = False
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))

    def guarded(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        nonlocal failed
        if name in sizes.skip:
            results[name] = {"skipped": sizes.skip[name]}
            return
        started = time.perf_counter()
        try:
            results[name] = fn()
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
            failed = True
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            err.print(traceback.format_exc(), highlight=False)
        results[name]["section_seconds"] = round(time.perf_counter() - started, 1)

    try:
        if "convergence" in wanted or "throughput" in wanted:
            top = max(sizes.converge) if "convergence" in wanted else 10
            try:
                with control_plane(work / "cp", memory_clusters({"bench": max(top, 1), "burst": 8})) as cp:
                    if "convergence" in wanted:
                        guarded("convergence", lambda: section_convergence(cp, sizes.converge, say))
                    if "throughput" in wanted:
                        guarded("throughput", lambda: section_throughput(cp, sizes.scale_requests, say))
            except Exception as exc:  # noqa: BLE001 - the control plane did not start
                failed = True
                for name in ("convergence", "throughput"):
                    if name in wanted and name not in results:
                        results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        if "sweep" in wanted:
            guarded("sweep", lambda: section_sweep(work, sizes.sweep, say))
        if "cloud" in wanted:
            guarded("cloud", lambda: section_cloud(work, sizes.cloud, say))
        if "containers" in wanted:
            guarded("containers", lambda: section_containers(work, sizes.containers, say))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["targets"] = targets(results)
    render(results, console)
    text = json.dumps(results, separators=(",", ":"), default=str)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(text, flush=True)
    return 1 if failed else 0


def render(results: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    m = results["machine"]
    console.print(f"fleet bench on {m['cpu']}, {m['cores']} cores, {m['memory']}, Python {m['python']}")
    for name in SECTIONS:
        data = results.get(name)
        if data is None:
            continue
        if "skipped" in data or "error" in data:
            console.print(f"[yellow]{name}: {data.get('skipped') or data.get('error')}[/yellow]")
            continue
        table = Table(title=name, title_justify="left")
        if name == "convergence":
            for col in ("N", "no-op RTs s", "up s", "down s", "ratio up/down", "Redis cmds up/down",
                        "Celery msgs up/down", "provider calls up/down"):
                table.add_column(col)
            for r in data["rows"]:
                up, down = r["up"], r["down"]
                table.add_row(str(r["n"]), f"{r['baseline_seconds']:.2f}",
                              f"{up['seconds']:.2f}" + ("" if up["converged"] else " (timeout)"),
                              f"{down['seconds']:.2f}" + ("" if down["converged"] else " (timeout)"),
                              f"{r['ratio_up']} / {r['ratio_down']}",
                              f"{up['redis_commands']} / {down['redis_commands']}",
                              f"{up['celery_messages']} / {down['celery_messages']}",
                              f"{sum(up['provider_calls'].values())} / {sum(down['provider_calls'].values())}")
            mem = data.get("memory", {})
            if mem:
                table.caption = (f"worker at {mem.get('handles')} handles: RSS {mem.get('VmRSS', 0) / 1024:.0f} MiB, "
                                 f"peak {mem.get('after', {}).get('VmHWM', 0) / 1024:.0f} MiB; "
                                 f"sweep every {data['sweep_interval']} s")
        elif name == "sweep":
            for col in ("handles", "clusters", "first sweep s", "steady sweep s", "of which provider s",
                        "round trips", "per cluster", "Redis cmds"):
                table.add_column(col)
            for r in data["rows"]:
                s = r["steady"]
                table.add_row(str(r["handles"]), str(r["clusters"]), f"{r['first']['seconds']:.3f}",
                              f"{s['seconds']:.3f}", f"{s['provider_seconds']:.3f}", str(s["round_trips"]),
                              str(s["round_trips_per_cluster"]), str(s["redis_commands"]))
        elif name == "throughput":
            for col in ("requests", "fleet.scale /s", "no-op /s", "ratio", "client-side scale/no-op /s",
                        "Celery msgs", "Redis cmds/request"):
                table.add_column(col)
            table.add_row(str(data["requests"]), str(data["scale_per_second"]), str(data["noop_per_second"]),
                          str(data["ratio"]), f"{data['client_scale_per_second']} / {data['client_noop_per_second']}",
                          str(data["celery_messages"]), str(data["redis_commands_per_request"]))
        elif name == "cloud":
            for col in ("provider", "N", "mutating", "reads", "baseline mutating", "up s", "down s", "calls"):
                table.add_column(col)
            for p, r in data["providers"].items():
                calls = Counter(r["up"]["calls"]) + Counter(r["down"]["calls"])
                table.add_row(p, str(data["n"]), str(r["mutating"]), str(r["reads"]), str(r["baseline_mutating"]),
                              f"{r['up']['seconds']:.1f}", f"{r['down']['seconds']:.1f}",
                              ", ".join(f"{k} {v}" for k, v in sorted(calls.items())))
        elif name == "containers":
            for col in ("N", "docker SDK loop s", "Fleet up s", "ratio", "Fleet down s"):
                table.add_column(col)
            table.add_row(str(data["n"]), f"{data['baseline_seconds']:.2f}", f"{data['fleet_up']['seconds']:.2f}",
                          str(data["ratio"]), f"{data['fleet_down']['seconds']:.2f}")
        console.print(table)
    if results.get("targets"):
        table = Table(title="targets (issue 6)", title_justify="left")
        for col in ("target", "value", "met"):
            table.add_column(col)
        for t in results["targets"]:
            table.add_row(t["target"], json.dumps(t["value"]), "yes" if t["met"] else "[red]no[/red]")
        console.print(table)
