"""RabbitMQ's management API, read for what a cluster's queues hold: messages ready, and messages
delivered to a consumer but not acknowledged yet (prefetched, or running under `acks_late`),
including those of workers that do not answer Celery's inspect. The broker refreshes these
figures every `collect_statistics_interval` (5 s by default), so they may lag by that much.

Only the standard library: one GET per queue, with HTTP basic auth from the management URL (or,
when it has none, from the broker URL).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from kombu import Connection


@dataclass(frozen=True)
class Depth:
    """What `queues` hold: `ready` waits in the queues; `unacked` was delivered and not yet
    acknowledged (None: not known, no management API)."""

    ready: int
    unacked: int | None = None


class Management:
    """The management API at `url` (http(s)://[user:password@]host:port[/prefix]) of the broker
    at `broker_url` (its vhost is the one read)."""

    def __init__(self, url: str, broker_url: str, timeout: float = 2.0) -> None:
        parts = urlsplit(url)
        broker = Connection(broker_url)
        user = unquote(parts.username) if parts.username else broker.userid
        password = unquote(parts.password) if parts.password else broker.password
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        self._base = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}/api"
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self._vhost = quote(broker.virtual_host or "/", safe="")
        self._timeout = timeout

    def depth(self, queues: Sequence[str]) -> Depth:
        """Messages ready and unacknowledged in `queues` (a queue that does not exist holds none).
        Raises OSError (urllib's errors) or ValueError when the API cannot be read."""
        ready = unacked = 0
        for queue in queues:
            request = urllib.request.Request(f"{self._base}/queues/{self._vhost}/{quote(queue, safe='')}",
                                             headers={"Authorization": self._auth})
            try:
                with urllib.request.urlopen(request, timeout=self._timeout) as answer:  # http(s) only: see ClusterSpec
                    found = json.load(answer)
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    continue  # no such queue: nothing there
                raise
            ready += int(found.get("messages_ready", 0))
            unacked += int(found.get("messages_unacknowledged", 0))
        return Depth(ready, unacked)
