"""The local provider, Fleet's embedded default: a container is one process group on this machine.

Each container runs the cluster's `container.command` (with `${VAR}` expanded from its
environment) in a new session, with the container's `env`, the `FLEET_*` identity and
`FLEET_LAUNCH_ID`, and `FLEET_PYTHON` (the interpreter running Fleet), over the control plane's
own environment less `FLEET_REDIS_PASSWORD` and `FLEET_REDIS_PASSWORD_FILE`. `FLEET_WORKERS` workers
share it, e.g. as Celery's `--concurrency`. `container.secrets` may use `env:` and `file:`
references, read at each launch into the process's environment only; an error that the command
cannot start names it as written, never expanded.

Handles are deterministic, `<launch id>-<index>`, and live in the process's own environment, so
the provider finds its processes again by reading `/proc/<pid>/environ`: after a control-plane
restart (`list_workers`) and as the guard against PID reuse (a reused PID does not carry the
handle). A marker file per handle (`<state_dir>/launched/<fleet>/<cluster>/<handle>`, created
exclusively before the process starts) makes a handle start at most once, so a redelivered launch
starts nothing new even when the first process has died since. Output goes to
`<state_dir>/logs/<cluster>/<handle>.log`.
"""

from __future__ import annotations

import os
import signal
import string
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fleet.errors import PermanentProviderError
from fleet.pricing import Quote, free
from fleet.provider import Cluster, ContainerSpec, Hardware, Provider, ProviderContext, WorkerStatus
from fleet.secrets import LOCAL_SCHEMES, resolve_local


class LocalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kill_grace: float = Field(default=10.0, ge=0, le=600, description="seconds between SIGTERM and SIGKILL")
    cwd: str | None = Field(default=None, description="working directory of the processes")


#: the control plane's own Redis password: never handed down to the processes it launches (a
#: cluster's `container.env` or `container.secrets` may still set them)
PRIVATE_ENV = ("FLEET_REDIS_PASSWORD", "FLEET_REDIS_PASSWORD_FILE", "FLEET_REDIS_SENTINEL_PASSWORD",
               "FLEET_REDIS_SENTINEL_PASSWORD_FILE")


def _inherited() -> dict[str, str]:
    """This process's environment less PRIVATE_ENV: what a launched process starts from."""
    return {key: value for key, value in os.environ.items() if key not in PRIVATE_ENV}


def _environ(pid: int) -> dict[bytes, bytes] | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    return dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)


def _alive(pid: int) -> bool:
    """True unless the process is gone or a zombie (reaping it if it is our child)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


class LocalProvider(Provider[LocalOptions]):
    options_model = LocalOptions
    first_check = 0.1  # a process runs as soon as it is spawned
    call_timeout = 60.0  # a kill waits kill_grace (default 10 s), then up to 5 s after SIGKILL
    secret_schemes = LOCAL_SCHEMES  # read at launch, passed in the process's environment only

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        self._pids: dict[str, int] = {}
        self._lock = threading.Lock()

    # -- finding our processes -------------------------------------------------------------
    def _scan(self, cluster: Cluster[LocalOptions]) -> dict[str, tuple[int, dict[bytes, bytes]]]:
        """Every live process-group leader of this fleet id and cluster (and pool), by handle."""
        fid, name, pool = cluster.fleet_id.encode(), cluster.name.encode(), cluster.pool.encode()
        found: dict[str, tuple[int, dict[bytes, bytes]]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            env = _environ(pid)
            if not env or env.get(b"FLEET_ID") != fid or env.get(b"FLEET_CLUSTER") != name:
                continue
            if pool and env.get(b"FLEET_POOL") != pool:
                continue
            try:
                if os.getpgid(pid) != pid:
                    continue  # a child of a container process, not the container itself
            except ProcessLookupError:
                continue
            if b"FLEET_HANDLE" in env and _alive(pid):
                found[env[b"FLEET_HANDLE"].decode()] = (pid, env)
        with self._lock:
            self._pids.update({h: pid for h, (pid, _) in found.items()})
        return found

    def _pid(self, cluster: Cluster[LocalOptions], handle: str, rescan: bool = True) -> int | None:
        """The live PID of `handle`, verified by its environment (the PID-reuse guard)."""
        with self._lock:
            pid = self._pids.get(handle)
        if pid is not None:
            env = _environ(pid)
            if env and env.get(b"FLEET_HANDLE") == handle.encode() and _alive(pid):
                return pid
        if rescan:
            hit = self._scan(cluster).get(handle)
            return hit[0] if hit else None
        return None

    # -- the contract ----------------------------------------------------------------------
    def run_workers(self, cluster: Cluster[LocalOptions], container: ContainerSpec, hardware: Hardware, count: int,
                    *, launch_id: str) -> list[str]:
        opts = cluster.options
        logs = self.context.state_dir / "logs" / cluster.name
        marks = self.context.state_dir / "launched" / cluster.fleet_id / cluster.name
        logs.mkdir(parents=True, exist_ok=True)
        marks.mkdir(parents=True, exist_ok=True)
        handles: list[str] = []
        for index, workers in enumerate(cluster.containers_for(count)):
            handle = f"{launch_id[:16]}-{index}"
            # A handle is started at most once, ever: a redelivered launch whose process has died
            # since returns the (stopped) handle instead of starting it again.
            try:
                (marks / handle).touch(exist_ok=False)
            except FileExistsError:
                pass
            else:
                try:
                    self._spawn(cluster, container, opts, handle, workers, launch_id, logs / f"{handle}.log")
                except BaseException:
                    (marks / handle).unlink(missing_ok=True)
                    raise
            handles += [handle] * workers
        return handles

    def _spawn(self, cluster: Cluster[LocalOptions], container: ContainerSpec, opts: LocalOptions, handle: str,
               workers: int, launch_id: str, log: Path) -> None:
        secrets = resolve_local(cluster.name, container.secrets)
        env = {**_inherited(), **container.env, **secrets, **cluster.identity_env(handle, workers),
               "FLEET_LAUNCH_ID": launch_id, "FLEET_PYTHON": sys.executable}
        argv = [string.Template(arg).safe_substitute(env) for arg in container.command]
        with open(log, "ab") as out:
            try:
                proc = subprocess.Popen(argv, env=env, cwd=opts.cwd, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
                # Names the command as written, never as expanded: ${VAR} may hold a secret.
                raise PermanentProviderError(
                    f"cannot start container.command[0] {container.command[0]!r} of cluster {cluster.name!r}: "
                    "fix container.command", exc.strerror or type(exc).__name__) from None
        with self._lock:
            self._pids[handle] = proc.pid

    def worker_status(self, cluster: Cluster[LocalOptions], handles: Sequence[str]) -> dict[str, WorkerStatus]:
        missing = [h for h in handles if self._pid(cluster, h, rescan=False) is None]
        found = self._scan(cluster) if missing else {}
        return {
            h: WorkerStatus.RUNNING if (h in found or h not in missing) else WorkerStatus.STOPPED
            for h in handles
        }

    def kill_workers(self, cluster: Cluster[LocalOptions], handles: Sequence[str]) -> dict[str, bool]:
        opts = cluster.options
        pids = {h: pid for h in handles if (pid := self._pid(cluster, h, rescan=False)) is not None}
        missing = [h for h in handles if h not in pids]
        if missing:
            found = self._scan(cluster)
            pids.update({h: found[h][0] for h in missing if h in found})
        result = dict.fromkeys(handles, True)
        for h, pid in pids.items():
            if not self._signal(pid, signal.SIGTERM):
                result[h] = False
        deadline = time.monotonic() + opts.kill_grace
        waiting = dict(pids)
        while waiting and time.monotonic() < deadline:
            waiting = {h: p for h, p in waiting.items() if _alive(p)}
            if waiting:
                time.sleep(0.05)
        for h, pid in waiting.items():
            if not self._signal(pid, signal.SIGKILL):
                result[h] = False
        deadline = time.monotonic() + 5  # SIGKILL is not instant on a loaded machine
        while waiting and time.monotonic() < deadline:
            waiting = {h: p for h, p in waiting.items() if _alive(p)}  # reaps our children
            if waiting:
                time.sleep(0.02)
        with self._lock:
            for h in handles:
                self._pids.pop(h, None)
        return result

    @staticmethod
    def _signal(pgid: int, sig: int) -> bool:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            return False
        return True

    def prices(self, cluster: Cluster[LocalOptions], hardware: Hardware) -> list[Quote]:
        """Free: Fleet pays for no machine here (a configured `price_per_hour` wins)."""
        return [Quote("", "", free())]

    def find_launch(self, cluster: Cluster[LocalOptions], launch_id: str) -> list[str]:
        """The launch's live processes (found by the FLEET_LAUNCH_ID in their environment)."""
        found = self._scan(cluster)
        return [h for h, (_, env) in sorted(found.items()) if env.get(b"FLEET_LAUNCH_ID") == launch_id.encode()
                for _ in range(int(env.get(b"FLEET_WORKERS", b"1")))]

    def list_workers(self, cluster: Cluster[LocalOptions]) -> dict[str, int]:
        return {h: int(env.get(b"FLEET_WORKERS", b"1")) for h, (_, env) in self._scan(cluster).items()}
