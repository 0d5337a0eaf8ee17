"""The RabbitMQ tests' job app (tests/rabbit_jobs.py: `acks_late`, prefetch 4, `rabbit.block`
counting each run and blocking until `<prefix>:release`) on a broker behind Redis Sentinel: broker
`SENTINEL_JOBS_BROKER` (sentinel://...), master `SENTINEL_JOBS_MASTER`, queue `SENTINEL_JOBS_QUEUE`,
results and bookkeeping in the plain Redis at `SENTINEL_JOBS_REDIS`. Plain Celery over kombu's own
Sentinel transport, as a user's job app would be."""

from __future__ import annotations

import os

from celery import Celery

from tests.rabbit_jobs import make_app


def sentinel_app(broker: str, master: str, redis_url: str, queue: str) -> Celery:
    """The job app (or a client of it) on the Sentinel-managed broker `broker`."""
    app = make_app(broker, redis_url, queue, "classic")  # the queue type: ignored by Redis
    app.conf.broker_transport_options = {"master_name": master, "socket_timeout": 2, "socket_connect_timeout": 1}
    return app


if "SENTINEL_JOBS_BROKER" in os.environ:  # a worker: `celery -A tests.sentinel_jobs worker ...`
    app = sentinel_app(os.environ["SENTINEL_JOBS_BROKER"], os.environ["SENTINEL_JOBS_MASTER"],
                       os.environ["SENTINEL_JOBS_REDIS"], os.environ["SENTINEL_JOBS_QUEUE"])
