"""A Celery app with Celery's own defaults and one no-op task: the floor `fleet bench` measures
Fleet's request path against, in the same run (`celery -A fleet.testing.bare worker`, on its
default pool). Broker and result backend: BARE_REDIS_URL."""

from __future__ import annotations

import os

from celery import Celery

app = Celery("bare", broker=os.environ.get("BARE_REDIS_URL"), backend=os.environ.get("BARE_REDIS_URL"))
app.conf.task_default_queue = "bare"  # its own queue on a shared Redis
app.conf.broker_connection_retry_on_startup = True


@app.task(name="bare.noop")
def noop() -> None:
    return None
