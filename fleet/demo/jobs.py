"""The demo's job app: what the managed workers run. Broker and results: `FLEET_REDIS_URL`."""

from __future__ import annotations

import os
import time

from celery import Celery

url = os.environ.get("FLEET_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("demo-jobs", broker=url, backend=url)
app.conf.update(task_default_queue="demo-jobs", task_acks_late=True, worker_prefetch_multiplier=1,
                broker_connection_retry_on_startup=True)


@app.task(name="demo.sleep")
def sleep(seconds: float, tag: str = "") -> dict[str, object]:
    """A job that takes `seconds`: for autoscaling and draining demos and tests."""
    time.sleep(seconds)
    return {"tag": tag, "handle": os.environ.get("FLEET_HANDLE", "?"), "pid": os.getpid()}


@app.task(name="demo.square")
def square(x: int) -> dict[str, object]:
    """A job: square a number, slowly enough that several workers share the load."""
    time.sleep(0.2)
    return {"x": x, "result": x * x, "handle": os.environ.get("FLEET_HANDLE", "?"), "pid": os.getpid()}
