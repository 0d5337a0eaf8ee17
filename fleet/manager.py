"""The managed layer of one process, put together: the seed's "set the worker number" and "get
the worker numbers" (`api`), and the reconcile, launch, kill and sweep steps behind them
(`fleet.control`). Level-triggered: every step re-reads Redis and moves the cluster towards its
desired number, so a lost message or a dead worker costs one sweep, not state.

Work sent elsewhere goes through a `Dispatcher`, which `tasks/` implements with Celery messages;
the control plane's own Celery app is not known here.
"""

from __future__ import annotations

import redis

from fleet.config import FleetConfig
from fleet.control.api import FleetAPI
from fleet.control.dispatcher import Dispatcher
from fleet.control.draining import CeleryWatch
from fleet.control.epoch import EpochWatch
from fleet.control.followup import FollowUps
from fleet.control.launcher import Launcher
from fleet.control.pool import ProviderPool
from fleet.control.queries import Queries
from fleet.control.reconciler import Reconciler
from fleet.control.sweeper import Sweeper
from fleet.holds import Holds
from fleet.lease import lease_ttl
from fleet.limits import Limits
from fleet.retire import come_back, declared_ttl, spec_record, with_retired
from fleet.store import Store


def url_of(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


class Manager:
    """One fleet's managed layer in one process: config + Redis + providers + a dispatcher."""

    def __init__(self, config: FleetConfig, client: redis.Redis, dispatcher: Dispatcher, url: str = "") -> None:
        self.config = config
        self.redis = client
        self.url = url or url_of(client)
        self.dispatcher = dispatcher
        #: lifetime of the reconcile, sweep and launch leases and of the "reconcile queued" marker:
        #: a worker that dies holding one stalls its cluster for at most this long
        self.lease = lease_ttl(config.fleet.sweep_interval)
        self.store = Store(client, config.fleet.id)
        self.holds = Holds(client, config.fleet.id)
        self.limits = Limits(client, self.url, config.fleet.id)
        try:
            declared = {c: s for c, s in config.clusters.items() if c not in config.retired}
            self.store.declare(declared, declared_ttl(config))
            self.store.remember_pools(declared, {c: spec_record(s) for c, s in declared.items()})
            gone = [c for c in self.store.tracked_clusters() if c not in config.clusters]
            config = with_retired(config, self.store.spec_records(gone))  # fleet.retire
            self.config = config
            come_back(self.store, config, self.url)
        except redis.RedisError:
            pass  # Redis not up yet: the next process start stores them
        self.pool = ProviderPool(config, client, self.holds, self.limits, self.lease)
        self.epoch = EpochWatch(self.store, self.holds, config.fleet.launch_timeout)
        self.queries = Queries(config, client, self.store, self.holds)
        self.reconciler = Reconciler(config, self.store, self.holds, dispatcher, self.epoch, self.lease,
                                     self.pool.launch_batch)
        request = self.reconciler.request
        self.api = FleetAPI(config, self.store, self.holds, self.queries, dispatcher, self.lease, request)
        self.celery = CeleryWatch(config, self.store, dispatcher, self.url)
        self.sweeper = Sweeper(config, self.store, self.holds, self.pool, dispatcher, self.epoch, self.celery,
                               self.lease, request)
        self.followups = FollowUps(config, self.store, self.pool, dispatcher, self.sweeper)
        self.launcher = Launcher(config, self.store, self.holds, self.pool, dispatcher, self.lease, request,
                                 self.followups.after_launch)
