"""What every section of the store stands on: the client, the fleet's keyspace (`fleet.keys`),
Redis time (`fleet.clock`) and the Lua scripts (`fleet.scripts`, `fleet/lua/`)."""

from __future__ import annotations

from typing import Any

import redis

from fleet import clock
from fleet.keys import ClusterKeys, Keyspace
from fleet.scripts import Scripts

#: the events stream's bound (passed to the event-writing scripts too: lua/prelude.lua)
EVENTS_MAXLEN = 1000


class StoreBase:
    """One fleet's client, keys and scripts. Safe to share across threads (redis-py pools)."""

    def __init__(self, client: redis.Redis, fleet_id: str) -> None:
        self.r = client
        self.fleet_id = fleet_id
        self.keys = Keyspace(fleet_id)
        self._scripts = Scripts(client)

    def of(self, cluster: str) -> ClusterKeys:
        return self.keys.cluster(cluster)

    def now(self) -> float:
        """Redis time (`fleet.clock`): every time stored in or compared with the state."""
        return clock.now(self.r)

    def _script(self, name: str, cluster: str, keys: list[str], args: list[Any]) -> Any:
        """Run one of the event-writing scripts (see lua/prelude.lua for the leading keys and args)."""
        return self._scripts[name](keys=[self.of(cluster).events, self.keys.metrics, *keys],
                                   args=[cluster, EVENTS_MAXLEN, self.now(), *args])
