"""A Celery job app on RabbitMQ for the RabbitMQ tests: `acks_late`, prefetch 4, one queue
(`JOBS_QUEUE`) of type `JOBS_QUEUE_TYPE` (classic or quorum), broker `JOBS_BROKER` (amqp://),
results and bookkeeping in the Redis at `JOBS_REDIS`. Its job `rabbit.block` counts each run
(`<prefix>:runs`, a hash by tag; `<prefix>:log`, tag and handle of each run) and blocks until `<prefix>:release` is set, so that the tests
decide when work ends."""

from __future__ import annotations

import os
import time

import redis
from celery import Celery
from kombu import Exchange, Queue


def make_app(broker: str, redis_url: str, queue: str, queue_type: str) -> Celery:
    app = Celery("rabbit-jobs", broker=broker, backend=redis_url, set_as_current=False)
    app.conf.update(task_queues=[Queue(queue, Exchange(queue), routing_key=queue,
                                       queue_arguments={"x-queue-type": queue_type})],
                    task_default_queue=queue, task_default_exchange=queue, task_default_routing_key=queue,
                    task_acks_late=True, worker_prefetch_multiplier=4, broker_connection_retry_on_startup=True,
                    worker_hijack_root_logger=False)
    store = redis.Redis.from_url(redis_url)

    @app.task(name="rabbit.block", bind=True)
    def block(self: object, prefix: str, tag: str, most: float = 120.0) -> dict[str, object]:
        """Count this run, then wait for `<prefix>:release` (at most `most` seconds)."""
        store.hincrby(f"{prefix}:runs", tag, 1)
        store.rpush(f"{prefix}:log", f"{tag} {os.environ.get('FLEET_HANDLE', '?')}")
        until = time.monotonic() + most
        while not store.exists(f"{prefix}:release") and time.monotonic() < until:
            time.sleep(0.05)
        store.hincrby(f"{prefix}:done", tag, 1)
        return {"tag": tag, "handle": os.environ.get("FLEET_HANDLE", "?")}

    return app


if "JOBS_BROKER" in os.environ:  # a worker: `celery -A tests.rabbit_jobs worker ...`
    app = make_app(os.environ["JOBS_BROKER"], os.environ["JOBS_REDIS"], os.environ["JOBS_QUEUE"],
                   os.environ.get("JOBS_QUEUE_TYPE", "classic"))
