"""A fault-injecting wrapper around another provider, for chaos tests (as Arvados's stub driver).

Options: `inner` (a registered provider name) and `inner_options`; `journal` (a file that gets
a line per call: op, start, end, pid); error rates per call
(`run_error_rate`, `status_error_rate`, `kill_error_rate`: transient errors; `rate_limit_rate`
and `quota_rate` on run); `never_boot_rate` (workers that stay initializing forever);
`die_rate` (per status call, each worker dies behind Fleet's back with this probability);
`slow_seconds` (each call sleeps up to this long); `seed`. Capacity: `capacity_rate` (a run
raises CapacityError) and `capacity_file` (while it exists, every run does). Interruptions:
`interrupt_rate` (per status call, each live worker is reclaimed by the "cloud" with this
probability, killed and reported in `observe().interrupted`), `notice_rate` (per status call,
each live worker is warned, through `interruptions`, that it goes in `notice_seconds`; it is
reclaimed then unless Fleet killed it first); `notice_file` (each handle named on a line of it
is warned so, deterministically and across processes; `acknowledge` removes its line). Tests in
the same process may also queue exact errors with `script` (see `Scripted`).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fleet.errors import (
    CapacityError,
    PermanentProviderError,
    QuotaExceeded,
    RateLimited,
    TransientProviderError,
)
from fleet.provider import (
    Cause,
    Cluster,
    ContainerSpec,
    Hardware,
    Interruption,
    Observation,
    Provider,
    ProviderContext,
    WorkerStatus,
)
from fleet.registry import provider_class

Rate = Field(default=0.0, ge=0, le=1)


class FaultyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    inner: str = "local"
    inner_options: dict[str, Any] = Field(default_factory=dict)
    run_error_rate: float = Rate
    status_error_rate: float = Rate
    kill_error_rate: float = Rate
    rate_limit_rate: float = Rate
    quota_rate: float = Rate
    never_boot_rate: float = Rate
    #: a launch or kill reaches the inner provider, then its answer is lost (a transient error)
    lost_answer_rate: float = Rate
    die_rate: float = Rate
    slow_seconds: float = Field(default=0.0, ge=0, le=60)
    seed: int | None = None
    calm_file: str | None = Field(default=None, description="while this file exists, inject nothing")
    capacity_rate: float = Rate
    capacity_file: str | None = Field(default=None, description="while this file exists, every run has no capacity")
    interrupt_rate: float = Rate
    notice_rate: float = Rate
    notice_seconds: float = Field(default=2.0, ge=0, le=3600)
    notice_file: str | None = None
    #: append one line per call, `op start end pid` (Unix seconds), to this file: what the provider
    #: itself saw, from every control-plane process (tests measure the shared limits with it)
    journal: str | None = None


def scripted_error(spec: str) -> Exception:
    """'transient' | 'rate_limited[:seconds]' | 'quota' | 'capacity[:type]' | 'permanent' | 'kill_fail'
    (and 'lost', which a run or kill raises after the inner provider did the work: see `_after`)."""
    kind, _, arg = spec.partition(":")
    if kind == "rate_limited":
        return RateLimited("injected throttling", retry_after=float(arg or 1.0))
    if kind == "quota":
        return QuotaExceeded("injected quota")
    if kind == "capacity":
        return CapacityError("injected capacity shortage", instance_type=arg or None)
    if kind == "permanent":
        return PermanentProviderError("injected permanent error: fix the injected option")
    return TransientProviderError(f"injected {kind or 'transient'} error")


class FaultyProvider(Provider[FaultyOptions]):
    options_model = FaultyOptions
    call_timeout = 90.0  # slow_seconds (at most 60) on top of the inner provider's own time

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        self._inner: dict[str, Provider[Any]] = {}
        self._rng = random.Random()
        self._seeded = False
        self._lock = threading.Lock()
        self._never_boot: set[str] = set()
        #: exact errors the next calls raise, by operation ("run", "status", "kill"); tests only
        self.script: dict[str, deque[str]] = {"run": deque(), "status": deque(), "kill": deque(), "find": deque()}
        #: the excluded_types of every run call that reached the inner provider; tests only
        self.excluded_seen: list[frozenset[str]] = []
        self._reclaimed: dict[str, Cause] = {}  # handles the "cloud" took, and why
        self._notices: dict[str, Interruption] = {}  # warnings given, not yet acknowledged
        self._due: dict[str, float] = {}  # warned handle -> when the "cloud" takes it

    @classmethod
    def validate_options(cls, options: Any) -> BaseModel:
        opts = FaultyOptions.model_validate(dict(options))
        provider_class(opts.inner).validate_options(opts.inner_options)
        return opts

    def _parts(self, cluster: Cluster[FaultyOptions]) -> tuple[Provider[Any], Cluster[Any], FaultyOptions]:
        opts = cluster.options
        with self._lock:
            if opts.seed is not None and not self._seeded:
                self._rng.seed(opts.seed)
                self._seeded = True
            if opts.inner not in self._inner:
                self._inner[opts.inner] = provider_class(opts.inner)(self.context)
        cls = provider_class(opts.inner)
        ref = Cluster(cluster.fleet_id, cluster.name, cluster.workers_per_container,
                      cls.validate_options(opts.inner_options), cluster.excluded_types, cluster.first_attempt,
                      cluster.pool, cluster.revision)
        return self._inner[opts.inner], ref, opts

    def _chance(self, rate: float, opts: FaultyOptions | None = None) -> bool:
        if opts is not None and opts.calm_file and os.path.exists(opts.calm_file):
            return False
        with self._lock:
            return rate > 0 and self._rng.random() < rate

    def _before(self, op: str, opts: FaultyOptions, rate: float) -> None:
        if opts.slow_seconds and not (opts.calm_file and os.path.exists(opts.calm_file)):
            with self._lock:
                delay = self._rng.uniform(0, opts.slow_seconds)
            time.sleep(delay)
        with self._lock:
            queued = self.script[op][0] if self.script[op] else None
            if queued is not None and queued != "lost":
                self.script[op].popleft()
        if queued and queued != "lost":
            raise scripted_error(queued)
        if self._chance(rate, opts):
            raise TransientProviderError(f"injected {op} error")

    def _after(self, op: str, opts: FaultyOptions) -> None:
        """After the inner provider did the work: its answer may be lost on the way back."""
        with self._lock:
            lost = bool(self.script[op]) and self.script[op][0] == "lost"
            if lost:
                self.script[op].popleft()
        if lost or self._chance(opts.lost_answer_rate, opts):
            raise TransientProviderError(f"injected lost answer of {op} (the call was carried out)")

    @contextmanager
    def _journal(self, op: str, opts: FaultyOptions) -> Iterator[None]:
        started = time.time()
        try:
            yield
        finally:
            if opts.journal:
                with open(opts.journal, "a") as out:  # one short append: whole lines, even across processes
                    out.write(f"{op} {started:.6f} {time.time():.6f} {os.getpid()}\n")

    def run_workers(self, cluster: Cluster[FaultyOptions], container: ContainerSpec, hardware: Hardware, count: int,
                    *, launch_id: str) -> list[str]:
        with self._journal("run", cluster.options):
            return self._run_workers(cluster, container, hardware, count, launch_id=launch_id)

    def worker_status(self, cluster: Cluster[FaultyOptions], handles: Sequence[str]) -> dict[str, WorkerStatus]:
        with self._journal("status", cluster.options):
            return self._worker_status(cluster, handles)

    def kill_workers(self, cluster: Cluster[FaultyOptions], handles: Sequence[str]) -> dict[str, bool | WorkerStatus]:
        with self._journal("kill", cluster.options):
            return self._kill_workers(cluster, handles)

    def list_workers(self, cluster: Cluster[FaultyOptions]) -> dict[str, int] | None:
        with self._journal("list", cluster.options):
            return self._list_workers(cluster)

    def find_launch(self, cluster: Cluster[FaultyOptions], launch_id: str) -> list[str] | None:
        with self._journal("find", cluster.options):
            return self._find_launch(cluster, launch_id)

    def _run_workers(self, cluster: Cluster[FaultyOptions], container: ContainerSpec, hardware: Hardware, count: int,
                     *, launch_id: str) -> list[str]:
        inner, ref, opts = self._parts(cluster)
        with self._lock:
            self.excluded_seen.append(cluster.excluded_types)
        self._before("run", opts, opts.run_error_rate)
        if self._chance(opts.rate_limit_rate, opts):
            raise RateLimited("injected throttling", retry_after=1.0)
        if self._chance(opts.quota_rate, opts):
            raise QuotaExceeded("injected quota")
        if (opts.capacity_file and os.path.exists(opts.capacity_file)) or self._chance(opts.capacity_rate, opts):
            raise CapacityError("injected capacity shortage")
        handles = inner.run_workers(ref, container, hardware, count, launch_id=launch_id)
        for h in set(handles):
            if self._chance(opts.never_boot_rate, opts):
                with self._lock:
                    self._never_boot.add(h)
        self._after("run", opts)
        return handles

    def _worker_status(self, cluster: Cluster[FaultyOptions], handles: Sequence[str]) -> dict[str, WorkerStatus]:
        inner, ref, opts = self._parts(cluster)
        self._before("status", opts, opts.status_error_rate)
        doomed = [h for h in handles if self._chance(opts.die_rate, opts)]
        if doomed:
            inner.kill_workers(ref, doomed)
        self._interrupt(inner, ref, opts, handles)
        status = inner.worker_status(ref, handles)
        with self._lock:
            return {h: WorkerStatus.INITIALIZING if h in self._never_boot and s == WorkerStatus.RUNNING else s
                    for h, s in status.items()}

    def _kill_workers(self, cluster: Cluster[FaultyOptions], handles: Sequence[str]) -> dict[str, bool | WorkerStatus]:
        inner, ref, opts = self._parts(cluster)
        self._before("kill", opts, opts.kill_error_rate)
        killed = dict(inner.kill_workers(ref, handles))
        self._after("kill", opts)
        return killed

    def _interrupt(self, inner: Provider[Any], ref: Cluster[Any], opts: FaultyOptions, handles: Sequence[str]) -> None:
        """The "cloud" reclaims some workers, at once or after a warning."""
        now = time.time()
        with self._lock:
            due = [h for h in handles if self._due.get(h, now + 1) <= now]
        taken = due + [h for h in handles if h not in self._due and self._chance(opts.interrupt_rate, opts)]
        for h in handles:
            if h not in self._due and h not in taken and self._chance(opts.notice_rate, opts):
                with self._lock:
                    self._due[h] = now + opts.notice_seconds
                    self._notices[h] = Interruption(h, Cause.SPOT_INTERRUPTION, now + opts.notice_seconds, f"r-{h}")
        if taken:
            inner.kill_workers(ref, taken)
            with self._lock:
                for h in taken:
                    self._reclaimed[h] = Cause.SPOT_INTERRUPTION
                    self._due.pop(h, None)

    def observe(self, cluster: Cluster[FaultyOptions], handles: Sequence[str]) -> Observation:
        with self._journal("observe", cluster.options):  # one call to Fleet: one line, one token
            listed = self._list_workers(cluster)
            asked = list(dict.fromkeys([*handles, *(listed or {})]))
            status = self._worker_status(cluster, asked) if asked else {}
        with self._lock:
            taken = {h: self._reclaimed[h] for h in asked if h in self._reclaimed}
        return Observation(listed, status, taken)

    def interruptions(self, cluster: Cluster[FaultyOptions]) -> list[Interruption]:
        opts = cluster.options
        with self._lock:
            out = list(self._notices.values())
        if opts.notice_file and os.path.exists(opts.notice_file):
            deadline = os.path.getmtime(opts.notice_file) + opts.notice_seconds
            for line in open(opts.notice_file).read().split():
                out.append(Interruption(line, Cause.SPOT_INTERRUPTION, deadline, f"file:{line}"))
        return out

    def acknowledge(self, cluster: Cluster[FaultyOptions], notices: Sequence[Interruption]) -> None:
        opts = cluster.options
        with self._lock:
            for n in notices:
                self._notices.pop(n.handle, None)
            done = {n.handle for n in notices if n.receipt.startswith("file:")}
            if done and opts.notice_file and os.path.exists(opts.notice_file):
                left = [h for h in open(opts.notice_file).read().split() if h not in done]
                with open(opts.notice_file, "w") as out:
                    out.write("".join(f"{h}\n" for h in left))

    def _find_launch(self, cluster: Cluster[FaultyOptions], launch_id: str) -> list[str] | None:
        inner, ref, opts = self._parts(cluster)
        self._before("find", opts, opts.status_error_rate)
        return inner.find_launch(ref, launch_id)

    def _list_workers(self, cluster: Cluster[FaultyOptions]) -> dict[str, int] | None:
        inner, ref, opts = self._parts(cluster)
        self._before("status", opts, opts.status_error_rate)
        return inner.list_workers(ref)
