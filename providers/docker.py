"""The docker provider: one Docker Engine container per handle, through the `docker` SDK.

Any engine that serves the Docker Engine API works (Docker, podman's `podman system service`).

Identity. Each container runs `container.image` with `container.command` and an environment of
`container.env`, `FLEET_ID`, `FLEET_CLUSTER`, `FLEET_HANDLE` (the container's name),
`FLEET_WORKERS` (the workers sharing it, e.g. for Celery's `--concurrency`) and
`FLEET_LAUNCH_ID`. `${VAR}` in the command is expanded from that environment (not the host's),
so `["celery", ..., "--concurrency", "${FLEET_WORKERS}"]` works without a shell.
`container.secrets` may use `env:` and `file:` references, read by the control plane at each
launch into the container's environment (which `docker inspect` shows to whoever may use the
Docker host); no error of a launch carries an env or secret value (they are cut out). Hardware
becomes the container's limits: `cpu` -> `NanoCpus`, `memory_mb` -> `Memory`, `gpus` -> a
device request for that many GPUs (needs the engine's GPU support, e.g. nvidia-container-toolkit).

Labels: `fleet.id`, `fleet.cluster`, `fleet.launch` (the launch id), `fleet.workers`, plus the
`labels` option. `list_workers` and `worker_status` find containers by the fleet id and cluster
labels, so another fleet's containers are never reported or killed.

Idempotency. A container's name (and handle) is deterministic, `fleet-<launch id[:20]>-<index>`.
`run_workers` first lists the launch's containers by label and creates only the missing ones;
a create that conflicts on the name (409, or podman's 500 "already in use") adopts the
existing container if its labels are this fleet's and cluster's. An adopted container that was
created but never started is started.

Status (one labelled list call per `worker_status`):
  created, restarting (and podman's configured / initialized) -> INITIALIZING;
  running, paused -> RUNNING (a paused container still holds its resources; Fleet must not
  launch a replacement and orphan it when it is unpaused);
  exited, dead, removing, stopping, stopped, or not found -> STOPPED.
Exited containers stay on the host (for `docker logs`) unless `auto_remove` is set; `kill_workers`
removes them.

Kill = forced removal (SIGKILL, then remove); a container that is already gone is a success.

Options (`provider_options`):
  base_url     Docker host, e.g. "unix:///run/podman/podman.sock"; default: the environment's
               (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH, else the local socket).
  network_mode "host", "bridge", "none", "container:<id>" or a network name; default: engine's.
  volumes      bind mounts: ["/host:/in/container:ro", ...] or {"/host": {"bind": "/x", "mode": "ro"}}.
  labels       extra labels (may not use the `fleet.` prefix).
  working_dir  working directory inside the container.
  pull         pull a missing image (default false: never pull; a missing image is an error).
  auto_remove  let the engine remove a container when it exits (loses its logs).
  timeout      seconds per Engine API call (default 60).

Errors: 429 -> RateLimited (Retry-After honoured); missing image, 400 bad parameters, 401/403,
unknown network, a command the runtime cannot execute -> PermanentProviderError saying what to
fix; connection errors, timeouts and other 5xx -> TransientProviderError.
"""

from __future__ import annotations

import re
import string
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleet.errors import PermanentProviderError, ProviderError, RateLimited, TransientProviderError
from fleet.inputs import worker_count
from fleet.pricing import Quote, free
from fleet.provider import Cluster, ContainerSpec, Hardware, Provider, ProviderContext, WorkerStatus, import_sdk
from fleet.secrets import LOCAL_SCHEMES, resolve_local, scrub

LABEL_ID, LABEL_CLUSTER, LABEL_LAUNCH, LABEL_WORKERS = "fleet.id", "fleet.cluster", "fleet.launch", "fleet.workers"
LABEL_POOL = "fleet.pool"  # set only for a cluster that declares pools
_BIND = re.compile(r"^[^:]+:/[^:]*(:[a-zA-Z,]+)?$")
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]")
_PARALLEL = 8  # concurrent Engine API calls per run / kill

_INITIALIZING = {"created", "restarting", "configured", "initialized"}
_RUNNING = {"running", "paused"}
# Anything else the engine reports (exited, dead, removing, stopping, stopped) is STOPPED.


class DockerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str | None = Field(
        default=None, min_length=1,
        description="Docker host URL; default: the environment's (DOCKER_HOST or the local socket)")
    network_mode: str | None = Field(default=None, min_length=1, description="container network mode, e.g. 'host'")
    volumes: list[str] | dict[str, dict[str, str]] | None = Field(
        default=None, description="bind mounts: ['/host:/container:ro', ...] or the SDK's dict form")
    labels: dict[str, str] = Field(default_factory=dict, description="extra container labels (not 'fleet.*')")
    working_dir: str | None = Field(default=None, min_length=1, description="working directory in the container")
    pull: bool = Field(default=False, description="pull the image when the engine does not have it")
    auto_remove: bool = Field(default=False, description="remove a container as soon as it exits")
    timeout: float = Field(default=60.0, gt=0, le=3600, description="seconds per Engine API call")

    @field_validator("volumes")
    @classmethod
    def _binds(cls, value: Any) -> Any:
        if isinstance(value, list):
            for bind in value:
                if not _BIND.match(bind):
                    raise ValueError(f"bind {bind!r} is not 'host-path:/container-path[:mode]'")
        return value

    @field_validator("labels")
    @classmethod
    def _own_labels(cls, value: dict[str, str]) -> dict[str, str]:
        if taken := sorted(k for k in value if k.startswith("fleet.")):
            raise ValueError(f"labels {taken} use the 'fleet.' prefix, which Fleet reserves")
        return value


def container_name(launch_id: str, index: int) -> str:
    """The deterministic container name, which is also the handle."""
    return f"fleet-{_NAME_UNSAFE.sub('-', launch_id[:20])}-{index}"


class DockerProvider(Provider[DockerOptions]):
    first_check = 0.25  # a container started by the Engine API is running once the call returns
    call_timeout = 120.0  # a launch makes several Engine API calls per container
    options_model = DockerOptions
    secret_schemes = LOCAL_SCHEMES  # read at launch, passed in the container's environment only

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        self._clients: dict[tuple[str | None, float], Any] = {}
        self._lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------
    def _api(self, opts: DockerOptions) -> Any:
        """The low-level APIClient for `opts.base_url`, one cached per URL (and timeout)."""
        key = (opts.base_url, opts.timeout)
        with self._lock:
            client = self._clients.get(key)
        if client is not None:
            return client.api
        docker = import_sdk("docker", "docker")
        try:
            if opts.base_url:
                client = docker.DockerClient(base_url=opts.base_url, timeout=opts.timeout)
            else:
                client = docker.from_env(timeout=opts.timeout)
        except Exception as exc:
            raise _mapped(exc, f"cannot reach the Docker host {opts.base_url or '(from the environment)'}") from exc
        with self._lock:
            client = self._clients.setdefault(key, client)
        return client.api

    def _ours(self, api: Any, cluster: Cluster[DockerOptions], *extra: str) -> dict[str, dict[str, Any]]:
        """Every container (any state) labelled with this fleet id and cluster (and pool), by name."""
        labels = [f"{LABEL_ID}={cluster.fleet_id}", f"{LABEL_CLUSTER}={cluster.name}", *extra]
        if cluster.pool:
            labels.append(f"{LABEL_POOL}={cluster.pool}")
        try:
            listed = api.containers(all=True, filters={"label": labels})
        except Exception as exc:
            raise _mapped(exc, f"cannot list the containers of cluster {cluster.name!r}") from exc
        found: dict[str, dict[str, Any]] = {}
        bad = 0
        for c in listed if isinstance(listed, list) else ():
            names = c.get("Names") if isinstance(c, dict) else None
            if not isinstance(names, list) or not isinstance(c.get("Labels") or {}, dict):
                bad += 1  # judged on its own: the containers beside it are listed all the same
                continue
            for name in names:
                if isinstance(name, str) and name.strip("/"):
                    found[name.lstrip("/")] = c
        if bad:
            self.unreadable(cluster, "docker:containers", "a listed container has no names or labels", bad)
        return found

    # -- the contract -----------------------------------------------------------------------
    def run_workers(self, cluster: Cluster[DockerOptions], container: ContainerSpec, hardware: Hardware, count: int,
                    *, launch_id: str) -> list[str]:
        opts = cluster.options
        if not container.image:
            raise PermanentProviderError(f"cluster {cluster.name!r}: the docker provider needs container.image")
        api = self._api(opts)
        sizes = cluster.containers_for(count)
        if not sizes:
            return []
        existing = self._ours(api, cluster, f"{LABEL_LAUNCH}={launch_id}")
        # env: and file: secrets are read now and go only into the containers' environment; no
        # error of this launch names a value of it (an engine's error may quote the command)
        secrets = resolve_local(cluster.name, container.secrets)
        hidden = [*container.env.values(), *secrets.values()]
        container = container.model_copy(update={"env": {**container.env, **secrets}, "secrets": {}})
        jobs = [(container_name(launch_id, i), n) for i, n in enumerate(sizes)]

        def one(job: tuple[str, int]) -> str:
            name, workers = job
            if name in existing:
                if existing[name].get("State") == "created":
                    self._start(api, name, cluster)
                return name
            return self._create(api, cluster, container, hardware, opts, name, workers, launch_id)

        outcomes: list[str | Exception] = []
        with ThreadPoolExecutor(max_workers=min(_PARALLEL, len(jobs))) as pool:
            for fut in [pool.submit(one, job) for job in jobs]:
                try:
                    outcomes.append(fut.result())
                except Exception as exc:  # noqa: BLE001 - collected; see below
                    outcomes.append(scrub(exc, hidden))
        handles: list[str] = []
        errors = [o for o in outcomes if isinstance(o, Exception)]
        for (name, workers), outcome in zip(jobs, outcomes):
            if not isinstance(outcome, Exception):
                handles += [name] * workers
        # None launched: say why. A transient error (a create whose answer was lost, a broken
        # connection): raise it, so that Fleet keeps the launch counted and retries it with this
        # launch id (its containers are found by name). Some launched and the rest refused for
        # good: report those; Fleet launches the shortfall.
        transient = [e for e in errors if isinstance(e, TransientProviderError)]
        if errors and (not handles or transient):
            permanent = [e for e in errors if isinstance(e, PermanentProviderError)]
            raise (transient or permanent or errors)[0]
        return handles

    def _create(self, api: Any, cluster: Cluster[DockerOptions], container: ContainerSpec, hardware: Hardware,
                opts: DockerOptions, name: str, workers: int, launch_id: str) -> str:
        docker = import_sdk("docker", "docker")
        env = {**container.env, **cluster.identity_env(name, workers), "FLEET_LAUNCH_ID": launch_id}
        command = [string.Template(arg).safe_substitute(env) for arg in container.command]
        labels = {**opts.labels, LABEL_ID: cluster.fleet_id, LABEL_CLUSTER: cluster.name,
                  LABEL_LAUNCH: launch_id, LABEL_WORKERS: str(workers)}
        if cluster.pool:
            labels[LABEL_POOL] = cluster.pool
        if cluster.revision:
            labels["fleet.revision"] = cluster.revision
        devices = ([docker.types.DeviceRequest(count=hardware.gpus, capabilities=[["gpu"]])]
                   if hardware.gpus else None)
        host_config = api.create_host_config(
            nano_cpus=int(hardware.cpu * 1e9), mem_limit=hardware.memory_mb * 1024 * 1024,
            network_mode=opts.network_mode, binds=opts.volumes, auto_remove=opts.auto_remove,
            device_requests=devices)
        kwargs = {"name": name, "environment": env, "labels": labels, "host_config": host_config,
                  "working_dir": opts.working_dir, "detach": True}
        try:
            try:
                api.create_container(container.image, command, **kwargs)
            except docker.errors.ImageNotFound:
                if not opts.pull:
                    raise
                api.pull(container.image)
                api.create_container(container.image, command, **kwargs)
        except docker.errors.APIError as exc:
            if not _conflict(exc):
                raise _mapped(exc, f"cannot create container {name}", image=container.image) from exc
            return self._adopt(api, cluster, name)
        except Exception as exc:
            raise _mapped(exc, f"cannot create container {name}", image=container.image) from exc
        self._start(api, name, cluster, remove_on_failure=True)
        return name

    def _adopt(self, api: Any, cluster: Cluster[DockerOptions], name: str) -> str:
        """The name exists: a retried launch created it. Take it if it is ours, start it if new."""
        try:
            info = api.inspect_container(name)
        except Exception as exc:
            raise _mapped(exc, f"container {name} exists but cannot be inspected") from exc
        labels = (info.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_ID) != cluster.fleet_id or labels.get(LABEL_CLUSTER) != cluster.name:
            raise PermanentProviderError(
                f"container name {name} is taken by a container that is not fleet {cluster.fleet_id!r}'s "
                f"cluster {cluster.name!r}: remove it (docker rm -f {name})")
        if (info.get("State") or {}).get("Status") == "created":
            self._start(api, name, cluster)
        return name

    def _start(self, api: Any, name: str, cluster: Cluster[DockerOptions], remove_on_failure: bool = False) -> None:
        try:
            api.start(name)
        except Exception as exc:
            mapped = _mapped(exc, f"cannot start container {name} of cluster {cluster.name!r}")
            if remove_on_failure:  # else it sits in "created" and a retry would only adopt it
                try:
                    api.remove_container(name, force=True)
                except Exception:  # noqa: BLE001 - best effort; the retry adopts and starts it
                    pass
            raise mapped from exc

    def worker_status(self, cluster: Cluster[DockerOptions], handles: Sequence[str]) -> dict[str, WorkerStatus]:
        if not handles:
            return {}
        found = self._ours(self._api(cluster.options), cluster)
        return {h: _status(found[h].get("State")) if h in found else WorkerStatus.STOPPED for h in handles}

    def kill_workers(self, cluster: Cluster[DockerOptions], handles: Sequence[str]) -> dict[str, bool]:
        unique = list(dict.fromkeys(handles))
        if not unique:
            return {}
        api = self._api(cluster.options)
        docker = import_sdk("docker", "docker")
        found = self._ours(api, cluster)  # only this fleet's and cluster's containers are touched
        doomed = [h for h in unique if h in found]
        result = dict.fromkeys(unique, True)

        def remove(name: str) -> bool:
            try:
                api.remove_container(name, force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                # Already being removed (409 / podman 500): it is going away, which is success.
                return "already in progress" in str(exc.explanation or "")
            except Exception:  # noqa: BLE001 - connection trouble: Fleet retries this handle
                return False
            return True

        if doomed:
            with ThreadPoolExecutor(max_workers=min(_PARALLEL, len(doomed))) as pool:
                result.update(zip(doomed, pool.map(remove, doomed)))
        return result

    def prices(self, cluster: Cluster[DockerOptions], hardware: Hardware) -> list[Quote]:
        """Free: Fleet pays for no machine here (a configured `price_per_hour` wins)."""
        return [Quote("", "", free())]

    def find_launch(self, cluster: Cluster[DockerOptions], launch_id: str) -> list[str]:
        found = self._ours(self._api(cluster.options), cluster, f"{LABEL_LAUNCH}={launch_id}")
        return [name for name, c in sorted(found.items()) for _ in range(self._workers(cluster, c))]

    def list_workers(self, cluster: Cluster[DockerOptions]) -> dict[str, int]:
        found = self._ours(self._api(cluster.options), cluster)
        return {name: self._workers(cluster, c) for name, c in found.items()
                if _status(c.get("State")) != WorkerStatus.STOPPED}

    def _workers(self, cluster: Cluster[DockerOptions], listed: dict[str, Any]) -> int:
        """A container's worker count by its label (absent: 1); anything but a count (anyone who
        can run a container may label it so) is counted as unreadable and taken as 1."""
        count = worker_count((listed.get("Labels") or {}).get(LABEL_WORKERS))
        if count is None:
            self.unreadable(cluster, "docker:labels", f"{LABEL_WORKERS} is not a worker count")
            return 1
        return count


def _status(state: Any) -> WorkerStatus:
    state = str(state or "").lower()
    if state in _RUNNING:
        return WorkerStatus.RUNNING
    if state in _INITIALIZING:
        return WorkerStatus.INITIALIZING
    return WorkerStatus.STOPPED


def _conflict(exc: Any) -> bool:
    """A create refused because the name is taken (Docker: 409; podman 4: 500 'already in use')."""
    return exc.status_code == 409 or "already in use" in str(exc.explanation or "")


# Podman answers some bad requests with 500; these texts mean a person must fix something.
_PERMANENT_TEXT = ("invalid argument", "network not found", "no such network", "executable file not found",
                   "command that was not found", "permission denied", "no such image")


def _mapped(exc: BaseException, what: str, image: str | None = None) -> ProviderError:
    """The typed Fleet error for an SDK / HTTP exception."""
    if isinstance(exc, ProviderError):
        return exc
    docker = import_sdk("docker", "docker")
    requests = import_sdk("requests", "docker")
    cause = f"{type(exc).__name__}: {exc}"[:500]
    if isinstance(exc, docker.errors.ImageNotFound) and image:
        return PermanentProviderError(
            f"{what}: image {image!r} is not on the Docker host; build or load it there, or set "
            f"provider_options.pull = true", cause)
    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code or 0
        text = str(exc.explanation or exc).lower()
        if status == 404 and "no such container" in text:  # removed meanwhile (by a kill): retry later
            return TransientProviderError(f"{what}: the container went away meanwhile", cause)
        if status == 429:
            return RateLimited(f"{what}: the Docker host throttled us", _retry_after(exc), cause)
        if status in (401, 403) or "permission denied" in text:
            return PermanentProviderError(f"{what}: permission denied; check access to the Docker host", cause)
        if 400 <= status < 500 or any(t in text for t in _PERMANENT_TEXT):
            return PermanentProviderError(
                f"{what}: the Docker host refused the request; fix the cluster's container, hardware "
                f"or provider_options", cause)
        return TransientProviderError(f"{what}: Docker host error {status}", cause)
    if isinstance(exc, (requests.exceptions.RequestException, ConnectionError, TimeoutError)) or isinstance(
            exc.__cause__, requests.exceptions.RequestException):
        if _permission(exc):
            return PermanentProviderError(f"{what}: permission denied on the Docker socket; run as a user "
                                          f"that may use it (e.g. in the docker group)", cause)
        return TransientProviderError(f"{what}: cannot reach the Docker host", cause)
    if isinstance(exc, docker.errors.DockerException):  # bad base_url, TLS settings, ...
        return PermanentProviderError(f"{what}: fix provider_options.base_url or the DOCKER_* environment", cause)
    return TransientProviderError(what, cause)


def _permission(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, PermissionError) or "Permission denied" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _retry_after(exc: Any) -> float:
    try:
        return max(0.0, float(exc.response.headers.get("Retry-After", 1.0)))
    except (AttributeError, TypeError, ValueError):
        return 1.0
