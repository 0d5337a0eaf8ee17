"""The docker provider beyond the contract suite, against podman's Docker API (tests/kits/docker.py):
what a container carries, adoption on a retried launch, state mapping, kill safety, error mapping,
and a real Celery worker running in a container."""

from __future__ import annotations

import json
import os
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import ValidationError

from fleet.errors import PermanentProviderError, RateLimited, TransientProviderError
from fleet.provider import Cluster, ContainerSpec, Hardware, ProviderContext, WorkerStatus
from providers.docker import DockerProvider, container_name
from tests.conftest import REDIS_URL, wait_for
from tests.kits.docker import Podman, docker_options

PROJECT = Path(__file__).resolve().parents[1]
SLEEP = ("sleep", "3600")


@pytest.fixture
def dp(podman: Podman, tmp_path: Path) -> Iterator[tuple[DockerProvider, Cluster]]:
    """A provider and a fresh cluster (2 workers per container); its containers go afterwards."""
    fleet_id = "d" + uuid.uuid4().hex[:8]
    provider = DockerProvider(ProviderContext(fleet_id, tmp_path))
    cluster = Cluster(fleet_id, "dk", 2, docker_options(podman))
    yield provider, cluster
    api = podman.client().api
    for c in api.containers(all=True, filters={"label": [f"fleet.id={fleet_id}"]}):
        api.remove_container(c["Id"], force=True)


def spec(podman: Podman, command: tuple[str, ...] = SLEEP, **env: str) -> ContainerSpec:
    return ContainerSpec(image=podman.image, command=command, env=env)


def test_container_carries_identity_labels_limits_and_expanded_command(podman: Podman, dp: Any) -> None:
    provider, cluster = dp
    launch = uuid.uuid4().hex
    container = spec(podman, ("sh", "-c", "sleep 3600", "argv0", "${FLEET_WORKERS}", "${NOT_SET}"), EXTRA="yes")
    handles = provider.run_workers(cluster, container, Hardware(cpu=0.5, memory_mb=256), 3, launch_id=launch)
    assert handles == [container_name(launch, 0)] * 2 + [container_name(launch, 1)]
    api = podman.client().api
    for h in set(handles):
        info = api.inspect_container(h)
        assert info["Name"].lstrip("/") == h
        env = dict(item.split("=", 1) for item in info["Config"]["Env"])
        workers = str(handles.count(h))
        assert (env["FLEET_ID"], env["FLEET_CLUSTER"], env["FLEET_HANDLE"]) == (cluster.fleet_id, "dk", h)
        assert (env["FLEET_WORKERS"], env["FLEET_LAUNCH_ID"], env["EXTRA"]) == (workers, launch, "yes")
        assert info["Config"]["Cmd"][-2:] == [workers, "${NOT_SET}"]  # expanded from the container's env
        labels = info["Config"]["Labels"]
        assert {k: labels.get(k) for k in ("fleet.id", "fleet.cluster", "fleet.launch", "fleet.workers")} == {
            "fleet.id": cluster.fleet_id, "fleet.cluster": "dk", "fleet.launch": launch, "fleet.workers": workers}
        assert labels.items() >= podman.labels.items()  # the `labels` option
        assert info["HostConfig"]["NanoCpus"] == 500_000_000
        assert info["HostConfig"]["Memory"] == 256 * 1024 * 1024
    wait_for(lambda: set(provider.worker_status(cluster, list(set(handles))).values()) == {WorkerStatus.RUNNING},
             what="both containers running")


def test_retried_launch_adopts_a_created_container_and_never_duplicates(podman: Podman, dp: Any) -> None:
    provider, cluster = dp
    launch = uuid.uuid4().hex
    api = podman.client().api
    # A first attempt died between create and start: the container exists, never started.
    name = container_name(launch, 0)
    first = api.create_container(podman.image, list(SLEEP), name=name, labels={
        **podman.labels, "fleet.id": cluster.fleet_id, "fleet.cluster": "dk", "fleet.launch": launch,
        "fleet.workers": "2"})["Id"]
    assert provider.worker_status(cluster, [name]) == {name: WorkerStatus.INITIALIZING}
    handles = provider.run_workers(cluster, spec(podman), Hardware(), 4, launch_id=launch)
    again = provider.run_workers(cluster, spec(podman), Hardware(), 4, launch_id=launch)
    assert handles == again == [name, name, container_name(launch, 1), container_name(launch, 1)]
    listed = api.containers(all=True, filters={"label": [f"fleet.launch={launch}"]})
    assert sorted(n for c in listed for n in c["Names"]) == sorted(f"/{h}" for h in set(handles))
    assert api.inspect_container(name)["Id"] == first  # adopted, not replaced
    wait_for(lambda: provider.worker_status(cluster, [name]) == {name: WorkerStatus.RUNNING}, what="adopted one started")
    assert provider.list_workers(cluster) == {name: 2, container_name(launch, 1): 2}


def test_a_name_conflict_with_a_foreign_container_is_not_adopted(podman: Podman, dp: Any) -> None:
    provider, cluster = dp
    launch = uuid.uuid4().hex
    api = podman.client().api
    # Same name, another fleet's labels (only the launch label lookup misses it: it is not ours).
    api.create_container(podman.image, list(SLEEP), name=container_name(launch, 0),
                         labels={**podman.labels, "fleet.id": cluster.fleet_id + "x", "fleet.cluster": "dk"})
    with pytest.raises(PermanentProviderError, match=container_name(launch, 0)):
        provider.run_workers(cluster, spec(podman), Hardware(), 1, launch_id=launch)


@pytest.mark.parametrize("auto_remove", [False, True])
def test_a_container_that_exits_on_its_own_is_stopped(podman: Podman, dp: Any, auto_remove: bool) -> None:
    provider, cluster = dp
    cluster = Cluster(cluster.fleet_id, cluster.name, 1, docker_options(podman, auto_remove=auto_remove))
    (h,) = set(provider.run_workers(cluster, spec(podman, ("sh", "-c", "exit 3")), Hardware(), 1,
                                    launch_id=uuid.uuid4().hex))
    wait_for(lambda: provider.worker_status(cluster, [h]) == {h: WorkerStatus.STOPPED}, what="exited = stopped")
    assert provider.list_workers(cluster) == {}
    api = podman.client().api
    left = api.containers(all=True, filters={"label": [f"fleet.id={cluster.fleet_id}"]})
    if not auto_remove:  # kept for its logs until killed
        assert [c["State"] for c in left] == ["exited"]
        assert provider.kill_workers(cluster, [h]) == {h: True}
        left = api.containers(all=True, filters={"label": [f"fleet.id={cluster.fleet_id}"]})
    wait_for(lambda: not api.containers(all=True, filters={"label": [f"fleet.id={cluster.fleet_id}"]}),
             what="the container to be removed")


def test_kill_removes_only_this_fleets_containers(podman: Podman, dp: Any, tmp_path: Path) -> None:
    provider, cluster = dp
    other = Cluster("e" + cluster.fleet_id[1:], cluster.name, 2, cluster.options)
    (theirs,) = set(provider.run_workers(other, spec(podman), Hardware(), 1, launch_id=uuid.uuid4().hex))
    try:
        # Their handle, asked of our cluster: unknown to us, so a success that touches nothing.
        assert provider.kill_workers(cluster, [theirs, "fleet-never-0"]) == {theirs: True, "fleet-never-0": True}
        assert provider.worker_status(other, [theirs])[theirs] != WorkerStatus.STOPPED
        assert provider.worker_status(cluster, [theirs]) == {theirs: WorkerStatus.STOPPED}
        assert provider.kill_workers(other, [theirs]) == {theirs: True}
        assert provider.worker_status(other, [theirs]) == {theirs: WorkerStatus.STOPPED}
    finally:
        provider.kill_workers(other, [theirs])


def test_a_missing_image_is_a_permanent_error_naming_it(podman: Podman, dp: Any) -> None:
    provider, cluster = dp
    image = f"localhost/not-here-{uuid.uuid4().hex[:6]}:nope"
    with pytest.raises(PermanentProviderError, match=image) as info:
        provider.run_workers(cluster, ContainerSpec(image=image, command=SLEEP), Hardware(), 2,
                             launch_id=uuid.uuid4().hex)
    assert "pull" in str(info.value)
    with pytest.raises(PermanentProviderError, match=r"container\.image"):
        provider.run_workers(cluster, ContainerSpec(command=SLEEP), Hardware(), 1, launch_id=uuid.uuid4().hex)


def test_a_command_that_cannot_run_is_permanent_and_leaves_nothing(podman: Podman, dp: Any) -> None:
    provider, cluster = dp
    with pytest.raises(PermanentProviderError, match="cannot start"):
        provider.run_workers(cluster, spec(podman, ("/no/such/program",)), Hardware(), 1, launch_id=uuid.uuid4().hex)
    api = podman.client().api
    assert api.containers(all=True, filters={"label": [f"fleet.id={cluster.fleet_id}"]}) == []


def test_an_unreachable_docker_host_is_transient(tmp_path: Path) -> None:
    provider = DockerProvider(ProviderContext("u", tmp_path))
    cluster = Cluster("u", "c", 1, DockerProvider.validate_options({"base_url": f"unix://{tmp_path}/none.sock"}))
    with pytest.raises(TransientProviderError, match="cannot reach"):
        provider.worker_status(cluster, ["fleet-x-0"])
    bad = Cluster("u", "c", 1, DockerProvider.validate_options({"base_url": "bogus://nowhere"}))
    with pytest.raises(PermanentProviderError, match="base_url"):
        provider.list_workers(bad)


class _Refusing(BaseHTTPRequestHandler):
    """A Docker host that knows its version and answers everything else with `status`."""

    status = 429

    def do_GET(self) -> None:
        if self.path.endswith("/version"):
            self._send(200, {"ApiVersion": "1.41", "Version": "fake"})
        else:
            self._send(self.status, {"message": f"refused with {self.status}"})

    do_POST = do_DELETE = do_GET

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if code == 429:
            self.send_header("Retry-After", "7")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("status, error", [(429, RateLimited), (503, TransientProviderError),
                                           (403, PermanentProviderError), (400, PermanentProviderError)])
def test_http_errors_map_to_typed_errors(tmp_path: Path, status: int, error: type) -> None:
    handler = type("Handler", (_Refusing,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        options = DockerProvider.validate_options({"base_url": f"tcp://127.0.0.1:{server.server_address[1]}",
                                                   "timeout": 10})
        provider, cluster = DockerProvider(ProviderContext("h", tmp_path)), Cluster("h", "c", 1, options)
        with pytest.raises(error) as info:
            provider.run_workers(cluster, ContainerSpec(image="x", command=SLEEP), Hardware(), 1, launch_id="l1")
        assert type(info.value) is error
        if status == 429:
            assert info.value.retry_after == 7.0
    finally:
        server.shutdown()
        server.server_close()


class _Recording(BaseHTTPRequestHandler):
    """A Docker host that accepts every create and start and records each request."""

    seen: ClassVar[list[tuple[str, str, Any]]] = []

    def do_GET(self) -> None:
        self.seen.append(("GET", self.path, None))
        self._send(200, {"ApiVersion": "1.41"} if self.path.endswith("/version") else [])

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null")
        self.seen.append(("POST", self.path, body))
        self._send(201, {"Id": uuid.uuid4().hex}) if "/create" in self.path else self._send(204, None)

    def _send(self, code: int, body: Any) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_gpus_become_a_device_request_and_calls_are_bounded(tmp_path: Path) -> None:
    """podman ignores device requests, so this reads what the Engine API receives."""
    handler = type("Handler", (_Recording,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        options = DockerProvider.validate_options({"base_url": f"tcp://127.0.0.1:{server.server_address[1]}",
                                                   "network_mode": "host", "volumes": ["/a:/b:ro"]})
        provider, cluster = DockerProvider(ProviderContext("h", tmp_path)), Cluster("h", "c", 2, options)
        handles = provider.run_workers(cluster, ContainerSpec(image="img", command=SLEEP), Hardware(gpus=2), 5,
                                       launch_id="l2")
        assert len(handles) == 5
        calls = [(m, p.split("?")[0].split("/", 2)[-1]) for m, p, _ in handler.seen if not p.endswith("/version")]
        creates = [b for m, p, b in handler.seen if "/containers/create" in p]
        assert sorted(calls) == sorted([("GET", "containers/json")] + [("POST", "containers/create")] * 3
                                       + [("POST", f"containers/{container_name('l2', i)}/start") for i in range(3)])
        host = creates[0]["HostConfig"]
        assert host["DeviceRequests"] == [{"Driver": "", "Count": 2, "DeviceIDs": [], "Capabilities": [["gpu"]],
                                           "Options": {}}]
        assert host["NetworkMode"] == "host" and host["Binds"] == ["/a:/b:ro"]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("options, field", [
    ({"volumes": ["no-colon"]}, "volumes"), ({"labels": {"fleet.id": "x"}}, "labels"),
    ({"timeout": 0}, "timeout"), ({"pull": "sometimes"}, "pull"), ({"base_url": ""}, "base_url")])
def test_bad_options_are_refused_naming_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        DockerProvider.validate_options(options)


def _host_python_binds() -> list[str]:
    """Read-only binds that let a busybox container run this interpreter, its packages and the project."""
    wanted = {"/usr", "/lib", "/lib64", sys.base_prefix, sys.prefix, str(PROJECT),
              os.path.dirname(os.path.realpath(sys.executable))}
    wanted |= {p for p in sys.path if p and os.path.isdir(p)}
    paths = sorted(p for p in {os.path.abspath(w) for w in wanted} if os.path.exists(p))
    kept = [p for p in paths if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in paths)]
    return [f"{p}:{p}:ro" for p in kept]


def test_containers_run_a_real_celery_worker_that_processes_a_job(podman: Podman, dp: Any) -> None:
    from celery import Celery

    provider, _ = dp
    queue = f"docker-e2e-{uuid.uuid4().hex[:8]}"
    options = docker_options(podman, network_mode="host", volumes=_host_python_binds(), working_dir=str(PROJECT))
    cluster = Cluster(provider.context.fleet_id, "celery", 1, options)
    container = ContainerSpec(
        image=podman.image,
        command=(sys.executable, "-m", "celery", "-A", "tests.docker_jobs", "worker", "--pool", "solo",
                 "--concurrency", "1", "-Q", queue, "-n", "${FLEET_HANDLE}@%h", "--without-gossip",
                 "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"),
        env={"DOCKER_JOBS_REDIS_URL": REDIS_URL, "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"})
    (handle,) = set(provider.run_workers(cluster, container, Hardware(cpu=1, memory_mb=512), 1,
                                         launch_id=uuid.uuid4().hex))
    client = Celery("docker-e2e-client", broker=REDIS_URL, backend=REDIS_URL)
    api = podman.client().api
    try:
        result = client.send_task("docker_jobs.whoami", queue=queue)
        try:
            answer = result.get(timeout=45)
        except Exception as exc:  # noqa: BLE001 - show what the worker said
            logs = api.logs(handle).decode(errors="replace")[-3000:]
            pytest.fail(f"no answer from the containerised worker ({exc!r}); its log:\n{logs}")
        assert answer == handle
        assert provider.worker_status(cluster, [handle]) == {handle: WorkerStatus.RUNNING}
    finally:
        assert provider.kill_workers(cluster, [handle]) == {handle: True}
        client.close()
    assert provider.worker_status(cluster, [handle]) == {handle: WorkerStatus.STOPPED}
