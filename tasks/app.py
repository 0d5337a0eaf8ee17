"""The Celery app (`celery -A tasks worker`, `celery -A tasks beat`).

Configuration is read lazily from the environment the first time it is needed: `FLEET_CONFIG`
(the cluster spec file) and `FLEET_REDIS_URL` (else `fleet.redis_url`, else the running embedded
Redis). Broker, result backend and state share that one Redis.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_ready
from kombu import Queue

from fleet.config import FleetConfig, load_config
from fleet.manager import Manager
from fleet.runtime import consumed_queue, control_queue, queues_for, resolve_redis_url, worker_role
from tasks.transport import broker_transport

log = logging.getLogger(__name__)

# `celery -A tasks flower` reads its options from FLOWER_* variables once this app is loaded.
# Its own default address is every one (0.0.0.0 and ::, with no authentication, while its log
# says 127.0.0.1): default it to loopback; `--address` (or FLOWER_ADDRESS) still chooses another.
os.environ.setdefault("FLOWER_ADDRESS", "127.0.0.1")

#: Seconds a reconcile waits after it is asked for, so that a burst of requests coalesces into one.
RECONCILE_DELAY = 0.05

_lock = threading.Lock()
_config: FleetConfig | None = None
_manager: Manager | None = None


def config() -> FleetConfig:
    global _config
    with _lock:
        if _config is None:
            _config = load_config()
        return _config


def celery_settings() -> dict[str, Any]:
    cfg = config()
    url = resolve_redis_url(cfg)
    fid = cfg.fleet.id
    return {
        "broker_url": url,
        "broker_transport": broker_transport(url),
        "result_backend": url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        # A Redis that refuses writes (MISCONF: its disk is full; OOM) answers BRPOP with an error:
        # Celery then reconnects with back-off instead of exiting, and serves again once it heals.
        "broker_channel_error_retry": True,
        # Celery's consumer, but a message it refuses goes to the dead-letter list (tasks.consumer)
        "worker_consumer": "tasks.consumer:Consumer",
        # Task events cost a Redis PUBLISH per task and state: off unless `fleet.task_events`.
        # Flower (`celery -A tasks flower`) switches them on in every worker it sees anyway.
        "worker_send_task_events": cfg.fleet.task_events,
        "task_send_sent_event": cfg.fleet.task_events,
        # Redelivery of an unacked task after a worker died; the sweep re-sends lost launches and
        # kills much sooner (launch_timeout, kill back-off), so this only needs to be long.
        # `fleet_id` names the dead-letter list of the transport (tasks.transport).
        "broker_transport_options": {"visibility_timeout": 3600, "fleet_id": fid},
        "result_expires": 3600,
        "task_default_queue": "celery",
        # Public tasks arrive on the default queue ("celery"), so a plain send_task reaches us.
        # The queues this process consumes follow its role (FLEET_ROLE, fleet.runtime).
        "task_queues": [Queue(q) for q in queues_for(worker_role(), cfg)],
        "beat_schedule": {
            "fleet-sweep": {
                "task": "fleet.sweep",
                "schedule": cfg.fleet.sweep_interval,
                "options": {"queue": control_queue(fid), "expires": cfg.fleet.sweep_interval},
            }
        },
    }


app = Celery("fleet", include=["tasks.public", "tasks.internal"])
app.add_defaults(celery_settings)


class CeleryDispatcher:
    """The managed layer's outgoing work, as Celery messages on the right queues."""

    def __init__(self, config: FleetConfig) -> None:
        self.fleet_id = config.fleet.id
        self.config = config

    def _queue(self, provider: str) -> str:
        return consumed_queue(self.config, provider)  # a retired cluster's provider may have no queue of its own

    def run(self, cluster: str, launch_id: str, provider: str) -> None:
        app.send_task("fleet.run", (cluster, launch_id), queue=self._queue(provider))

    def kill(self, cluster: str, handles: Sequence[str], provider: str, pool: str = "") -> None:
        args = (cluster, list(handles), pool) if pool else (cluster, list(handles))
        app.send_task("fleet.kill", args, queue=self._queue(provider))

    def reconcile(self, cluster: str) -> None:
        # A short delay lets a burst coalesce: until the reconcile starts, the cluster's `queued`
        # marker stays set and further requests send nothing (see Manager.request_reconcile).
        app.send_task("fleet.reconcile", (cluster,), queue=control_queue(self.fleet_id), countdown=RECONCILE_DELAY)

    def drain(self, cluster: str, handles: Sequence[str], provider: str) -> None:
        # on the provider's queue: it waits for the cluster's workers to answer a broadcast
        app.send_task("fleet.drain", (cluster, list(handles)), queue=self._queue(provider))

    def check(self, cluster: str, delay: float, provider: str) -> None:
        app.send_task("fleet.check", (cluster, delay), queue=self._queue(provider),
                      countdown=delay)


@worker_ready.connect
def _warn_forgotten(**_: Any) -> None:
    """Clusters removed from the config while they still had workers: say so once, at start."""
    try:
        forgotten = manager().queries.forgotten_clusters()
    except redis.RedisError as exc:
        log.warning("cannot check for clusters removed from the config: %s", exc)
        return
    for name, n in sorted(forgotten.items()):
        log.warning("cluster %r is not in the config but Redis still tracks %d of its handles (live, or dead "
                    "with remains to kill): nothing sweeps or kills them. Put it back, scale it to 0, then "
                    "remove it.", name, n)


@worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    """A control-plane worker serves /metrics too when FLEET_METRICS_PORT is set."""
    port = os.environ.get("FLEET_METRICS_PORT")
    if port:
        from fleet.metrics import serve

        serve(config(), manager().redis, int(port), os.environ.get("FLEET_METRICS_ADDR", "127.0.0.1"))


def manager() -> Manager:
    """This process's managed layer, built on first use."""
    global _manager
    cfg = config()
    with _lock:
        if _manager is None:
            url = resolve_redis_url(cfg)
            client = redis.Redis.from_url(url, health_check_interval=30)
            _manager = Manager(cfg, client, CeleryDispatcher(cfg), url=url)
        return _manager
