"""The Docker Engine API for tests and benchmarks, served by podman (no Docker engine needed): a
containers.conf selecting runc and cgroupfs, a registry-less image `localhost/fleet-worker:test`
imported from a busybox root fs, and `podman system service` on a private unix socket. Needs the
Debian packages podman, runc and busybox-static (`ensure_podman` installs them as root) and the
`docker` SDK.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.testing.system import ensure_debian_packages, missing

IMAGE = "localhost/fleet-worker:test"
CONTAINERS_CONF = """\
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
"""


@dataclass(frozen=True)
class Podman:
    base_url: str
    image: str
    session_label: str  # "key=value" carried by every container this session creates

    @property
    def labels(self) -> dict[str, str]:
        key, value = self.session_label.split("=", 1)
        return {key: value}

    def client(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.base_url, timeout=30)


def _build_image(work: Path, env: dict[str, str]) -> None:
    root = work / "rootfs"
    (root / "bin").mkdir(parents=True)
    for folder in ("tmp", "etc", "proc", "sys", "dev"):
        (root / folder).mkdir()
    (root / "tmp").chmod(0o1777)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    subprocess.run(["tar", "-C", str(root), "-cf", str(work / "rootfs.tar"), "."], check=True)
    subprocess.run(["podman", "import", str(work / "rootfs.tar"), IMAGE], env=env, check=True,
                   capture_output=True)


#: The Debian packages the podman recipe needs, each with how to tell it is here.
PODMAN_PACKAGES = {
    "podman": lambda: shutil.which("podman") is not None,
    "runc": lambda: shutil.which("runc") is not None,
    "busybox-static": lambda: os.access("/bin/busybox", os.X_OK),
}


def podman_missing() -> list[str]:
    """What the podman recipe needs that this machine lacks (empty when nothing)."""
    return missing(PODMAN_PACKAGES)


def ensure_podman() -> None:
    """Install what the podman recipe needs (as root, with apt-get), or raise saying how to."""
    ensure_debian_packages(PODMAN_PACKAGES, "the docker provider's tests (podman serves the Docker Engine API)")


@contextmanager
def podman_service(label_key: str) -> Iterator[Podman]:
    """podman's Docker API on a private socket, with the test image imported; its containers
    (labelled `label_key`=<random>), the service and its folder are removed after. Raises
    RuntimeError if the service does not come up (`fleet bench` uses it too)."""
    import docker

    work = Path(tempfile.mkdtemp(prefix="fleet-podman-"))
    try:
        (work / "containers.conf").write_text(CONTAINERS_CONF)
        env = {**os.environ, "CONTAINERS_CONF": str(work / "containers.conf")}
        _build_image(work, env)
        base_url = f"unix://{work}/podman.sock"
        with open(work / "service.log", "wb") as log:
            service = subprocess.Popen(["podman", "system", "service", "--time=0", base_url], env=env,
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            backend = Podman(base_url, IMAGE, f"{label_key}={uuid.uuid4().hex[:12]}")
            try:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        if docker.DockerClient(base_url=base_url, timeout=5).ping():
                            break
                    except Exception as exc:  # noqa: BLE001 - not up yet
                        if service.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError(f"podman system service did not come up ({exc}); "
                                               f"see {work}/service.log") from None
                    time.sleep(0.1)
                yield backend
            finally:
                try:
                    api = backend.client().api
                    for c in api.containers(all=True, filters={"label": [backend.session_label]}):
                        api.remove_container(c["Id"], force=True)
                except Exception:  # noqa: BLE001 - teardown is best effort; the service goes anyway
                    pass
                service.terminate()
                try:
                    service.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    service.kill()
                    service.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)
