"""A TCP proxy in front of a redis-server that can go silent: every connection it holds, and every
new one it accepts, stays open and carries nothing, in either direction (no RST, no FIN), as when
a route or a NAT entry is lost. `heal()` forwards new connections again; the old ones stay dead,
as a lost NAT entry's flows do."""

from __future__ import annotations

import select
import socket
import threading
from typing import Any


class _Pair:
    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client = client
        self.upstream = upstream
        self.dead = upstream is None

    def close(self) -> None:
        for s in (self.client, self.upstream):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass


class BlackHole:
    """Use as a context manager; `url` is the Redis URL through the proxy."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"
        self.silent = False
        self.pairs: list[_Pair] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> BlackHole:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self.listener.close()
        with self._lock:
            for pair in self.pairs:
                pair.close()
        for t in self._threads:
            t.join(timeout=5)

    def go_silent(self) -> None:
        """Every connection held now, and every new one, carries nothing from here on."""
        with self._lock:
            self.silent = True
            for pair in self.pairs:
                pair.dead = True

    def heal(self) -> None:
        """New connections are forwarded again; the ones held stay dead."""
        with self._lock:
            self.silent = False

    def _spawn(self, target: Any, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.listener], [], [], 0.2)
                if not ready:
                    continue
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                silent = self.silent
            upstream = None if silent else socket.create_connection(self.target)
            pair = _Pair(client, upstream)
            with self._lock:
                self.pairs.append(pair)
            if upstream is not None:
                self._spawn(self._pump, pair)

    def _pump(self, pair: _Pair) -> None:
        assert pair.upstream is not None
        ends = {pair.client: pair.upstream, pair.upstream: pair.client}
        while not self._stop.is_set():
            if pair.dead:
                return  # nothing read nor written again: the sockets stay open until the end
            try:
                ready, _, _ = select.select(list(ends), [], [], 0.1)
                for src in ready:
                    if pair.dead:
                        break
                    data = src.recv(65536)
                    if not data:
                        pair.close()
                        return
                    ends[src].sendall(data)
            except OSError:
                pair.close()
                return
