"""A control plane of real processes on a fleet of its own, for the tests that attack one and for
`fleet bench`: `Stack` (the same one `fleet up` runs) with its own embedded Redis, workers and
beat, a log file, a Celery client, and the fleet's keys."""

from __future__ import annotations

import re
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from fleet.config import FleetConfig, load_config
from fleet.connection import RedisTarget, connect
from fleet.keys import Keyspace
from fleet.stack import Stack


@dataclass
class Plane:
    stack: Stack
    r: redis.Redis
    log: Path
    config: FleetConfig

    @property
    def fleet_id(self) -> str:
        return self.config.fleet.id

    def client(self) -> Celery:
        app = Celery("test-client", broker=self.stack.url, backend=self.stack.url, set_as_current=False)
        # the fleet's ACL user, password and TLS files (fleet.connection.RedisTarget), if any
        target = RedisTarget.from_settings(self.stack.url, self.config.fleet)
        app.conf.update({k: v for k, v in target.celery_settings().items()
                         if k in target.broker_access() or k.startswith(("redis_username", "redis_password",
                                                                           "redis_backend_use_ssl"))})
        if target.sentinel:  # the master's name, for the broker and the result backend
            app.conf.update({k: target.celery_settings()[k]
                             for k in ("broker_transport_options", "result_backend_transport_options")})
        app.conf.broker_connection_retry_on_startup = True
        return app

    def call(self, task: str, *args: Any, timeout: float = 20.0) -> Any:
        """Send a public task by name, as another service would, and wait for its answer."""
        result = self.client().send_task(task, args=list(args))
        try:
            return result.get(timeout=timeout)
        except BaseException:
            # Unanswered, it stays subscribed, and its finaliser would unsubscribe whenever the
            # garbage collector runs it: perhaps after Redis is gone, retrying inside the collector
            # (which can break an unrelated ast.parse: CPython gh-106905). Its client goes with it.
            result.backend = None
            raise

    @property
    def keys(self) -> Keyspace:
        return Keyspace(self.fleet_id)

    def wait_ready(self, role: str = "worker", timeout: float = 60.0, count: int = 1) -> None:
        """Until the log says a `role` worker is ready, `count` times (a restarted one: 2)."""
        deadline = time.monotonic() + timeout
        marker = re.compile(rb"-" + re.escape(role.encode()) + rb"-\d+@\S* ready\.")
        while time.monotonic() < deadline:
            if len(marker.findall(self.log.read_bytes())) >= count:
                return
            time.sleep(0.1)
        raise AssertionError(f"the control-plane {role} was not ready within {timeout} s")


@contextmanager
def plane(tmp: Path, clusters: str, *, fleet: str = "", prefix: str = "p", redis_url: str = "",
          **stack: Any) -> Iterator[Plane]:
    """A Stack for a fleet of its own: `clusters` and `fleet` are TOML (the `[clusters.*]` tables
    and extra `[fleet]` settings). Stopped, Redis and all, at the end. `redis_url` puts it on a
    Redis of the caller's (else an embedded one of its own)."""
    fleet_id = prefix + uuid.uuid4().hex[:8]
    path = tmp / "fleet.toml"
    path.write_text(f'[fleet]\nid = "{fleet_id}"\nstate_dir = "{tmp / "state"}"\n' + textwrap.dedent(fleet)
                    + "\n" + textwrap.dedent(clusters))
    config = load_config(path)
    log_path = tmp / "control-plane.log"
    # its own embedded Redis and state folder, whatever FLEET_REDIS_URL and FLEET_STATE_DIR say
    with open(log_path, "ab") as log, Stack(config, path, log=log, redis_url=redis_url, state_dir=tmp / "state",
                                            die_with_parent=True, **stack) as running:
        plain = running.redis is not None  # its own embedded Redis: no user, password nor TLS of the config's
        p = Plane(running, redis.Redis.from_url(running.url) if plain
                  else connect(RedisTarget.from_settings(running.url, config.fleet)), log_path, config)
        for role in running.roles:
            if role != "beat" and not running.in_process:
                p.wait_ready(role)
        yield p
