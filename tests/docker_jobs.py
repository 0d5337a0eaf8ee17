"""A tiny Celery job app for the docker provider's end-to-end test: it runs inside a podman
container (the host's Python, bind-mounted read-only) and answers with its container's handle.

Broker and result backend come from `DOCKER_JOBS_REDIS_URL`."""

from __future__ import annotations

import os

from celery import Celery

app = Celery("docker_jobs", broker=os.environ["DOCKER_JOBS_REDIS_URL"], backend=os.environ["DOCKER_JOBS_REDIS_URL"])
app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)


@app.task(name="docker_jobs.whoami")
def whoami() -> str:
    """The handle of the container this worker runs in."""
    return os.environ["FLEET_HANDLE"]
