"""Workers seen running at once: after a launch records its handles, their status is asked a
short, provider-given delay later (`Provider.first_check`), then at twice the delay while any is
still initializing, until the delay would reach `sweep_interval` and the sweep takes over.

Contract:
* Follow-ups coalesce: one is queued per cluster at a time (the `check` marker, which lives as
  long as its delay). The check clears the marker before it reads, so a launch recorded while it
  runs queues the next one: no recorded handle waits for the sweep because of the coalescing.
* A follow-up only reads statuses and writes what changed (`Sweeper.check_initializing`); losing
  one costs nothing but the wait for the next sweep.
"""

from __future__ import annotations

from fleet.config import FleetConfig
from fleet.control.dispatcher import Dispatcher
from fleet.control.pool import ProviderPool
from fleet.control.sweeper import Sweeper
from fleet.store import Store


class FollowUps:
    def __init__(self, config: FleetConfig, store: Store, pool: ProviderPool, dispatcher: Dispatcher,
                 sweeper: Sweeper) -> None:
        self.config = config
        self.store = store
        self.pool = pool
        self.dispatcher = dispatcher
        self.sweeper = sweeper

    def after_launch(self, cluster: str, pool: str = "") -> None:
        """A launch recorded handles: check them after the first delay of its pool's provider."""
        self.schedule(cluster, float(self.pool.of(cluster, pool).raw.first_check))

    def schedule(self, cluster: str, delay: float) -> bool:
        """Queue a follow-up `delay` seconds from now unless one is queued or the sweep comes as
        soon. True if this call queued one."""
        if delay >= self.config.fleet.sweep_interval or not self.store.mark_check(cluster, delay):
            return False
        self.dispatcher.check(cluster, delay, self.config.spec(cluster).pool_list[0].provider)
        return True

    def check(self, cluster: str, delay: float) -> int:
        """The follow-up itself: clear the marker, ask the initializing handles' status, and
        queue the next one (twice the delay) while any is initializing. Returns how many are."""
        self.store.clear_check(cluster)
        left = self.sweeper.check_initializing(cluster)
        if left:
            self.schedule(cluster, delay * 2)
        return left
