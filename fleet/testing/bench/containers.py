"""`fleet bench` section 6, `containers`: time to N running containers through Fleet with the
docker provider against podman's Docker API, beside a plain loop of docker SDK calls."""

from __future__ import annotations

import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleet.testing.bench.controlplane import SWEEP_INTERVAL, control_plane


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
