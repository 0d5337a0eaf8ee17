"""The Celery app (`celery -A tasks worker`, `celery -A tasks beat`).

Configuration is read lazily from the environment the first time it is needed: `FLEET_CONFIG`
(the cluster spec file) and `FLEET_REDIS_URL` (else `fleet.redis_url`, else the running embedded
Redis). Broker, result backend and state share that one Redis.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

import celery.app.amqp
import redis
from celery import Celery
from celery.signals import beat_init, worker_init, worker_ready, worker_shutdown
from kombu import Queue

from fleet.client import masked
from fleet.config import FleetConfig, load_config
from fleet.connection import access_error, connect
from fleet.errors import QueueTaken
from fleet.manager import Manager
from fleet.owner import QueueOwner
from fleet.runtime import (
    consumed_queue,
    control_queue,
    queues_for,
    resolve_redis_target,
    resolve_redis_url,
    worker_role,
)
from tasks.transport import BrokerConnection, broker_transport

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
    target = resolve_redis_target(cfg)
    fid = cfg.fleet.id
    # timeouts and keepalive on every broker and result-backend connection, the URL, ACL user,
    # password and TLS (fleet.connection.RedisTarget)
    timeouts = target.celery_settings()
    return {
        **timeouts,
        "broker_transport": broker_transport(target.url),
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
        "broker_transport_options": {**timeouts["broker_transport_options"], "visibility_timeout": 3600,
                                     "fleet_id": fid},
        "result_expires": 3600,
        "task_default_queue": cfg.fleet.public_queue,
        # Public tasks arrive on the default queue (`fleet.public_queue`, default "celery"), so a
        # plain send_task reaches us; only one fleet may consume it per database (fleet.owner).
        # The queues this process consumes follow its role (FLEET_ROLE, fleet.runtime).
        "task_queues": [Queue(q) for q in queues_for(worker_role(), cfg)],
        "beat_schedule": {
            "fleet-sweep": {
                "task": "fleet.sweep",
                "schedule": cfg.fleet.sweep_interval,
                # no `expires`: the receiver would check it on its own clock (tasks.internal.sweep)
                "options": {"queue": control_queue(fid)},
            }
        },
    }


class AMQP(celery.app.amqp.AMQP):
    Connection = BrokerConnection  # no `:**@` in the banner where no password is set


app = Celery("fleet", include=["tasks.public", "tasks.internal", "tasks.skew"], amqp=AMQP)
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


_owner: QueueOwner | None = None


@worker_init.connect
@beat_init.connect
def _check_access(**_: Any) -> None:
    """A wrong password or ACL user, or a TLS handshake Redis rejects, stops the worker (or beat) at once:
    one line on stderr and exit status 2 (kombu would take it for a lost connection and retry
    for ever). A Redis that does not answer yet is left to Celery, which waits for it."""
    target = resolve_redis_target(config())
    try:
        connect(target).ping()
    except redis.RedisError as exc:
        reason = access_error(exc)
        if reason is None:
            return
        # the real stderr: beat has redirected sys.stderr to its logger by now
        print(f"error: {reason} (Redis at {target.shown})", file=sys.__stderr__ or sys.stderr, flush=True)
        raise SystemExit(2) from None  # (Celery's signals swallow an Exception, not this)


@worker_init.connect
def _claim_public_queue(**_: Any) -> None:
    """A process that consumes the public queue claims it for this fleet first: one line on
    stderr and exit status 2 if another fleet's control plane consumes it (fleet.owner)."""
    global _owner
    cfg = config()
    if cfg.fleet.public_queue not in queues_for(worker_role(), cfg):
        return
    url = resolve_redis_url(cfg)
    owner = QueueOwner(connect(url), cfg.fleet.public_queue, cfg.fleet.id, masked(url))
    try:
        owner.claim()
    except QueueTaken as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None  # (Celery's signals swallow an Exception, not this)
    _owner = owner


@worker_shutdown.connect
def _release_public_queue(**_: Any) -> None:
    if _owner is not None:
        _owner.stop()


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
            client = connect(url)
            _manager = Manager(cfg, client, CeleryDispatcher(cfg), url=url)
        return _manager
