"""A fault-injecting HTTP proxy in front of moto's server, for attacks on the EC2 provider.

It forwards every request to moto, and on top:

* **ClientToken idempotency, as EC2 has it.** moto ignores `ClientToken`; the proxy remembers
  the reply of every RunInstances by its token and replays it for a repeated token, so a retry
  sees what it would on EC2.
* **Lost answers.** `lose(n)` makes the next `n` RunInstances calls reach moto (the instances
  are created) and then answers 503 instead of the reply, followed by an outage of `outage`
  seconds in which every request gets a 503: what a cloud does when a connection breaks after
  the call landed. botocore's own retries fail in the outage, so Fleet sees an unknown outcome.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

UNAVAILABLE = (b'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>ServiceUnavailable</Code>'
               b"<Message>the answer was lost</Message></Error></Errors><RequestID>lost</RequestID></Response>")


class FaultProxy:
    def __init__(self, upstream: str, outage: float = 3.0) -> None:
        parsed = urllib.parse.urlparse(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.outage = outage
        self.calls: Counter[str] = Counter()
        self.lost = 0
        self._to_lose = 0
        self._to_skip = 0
        self._replies: dict[str, tuple[int, list[tuple[str, str]], bytes]] = {}
        self._down_until = 0.0
        self._mutex = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, headers, reply = proxy.handle(self.command, self.path, dict(self.headers), body)
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def lose(self, n: int = 1, skip: int = 0) -> None:
        """Lose the answers of `n` RunInstances calls that reach moto, after `skip` that go through."""
        with self._mutex:
            self._to_lose += n
            self._to_skip = skip

    def _forward(self, method: str, path: str, headers: dict[str, str],
                 body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            conn.request(method, path, body=body, headers={k: v for k, v in headers.items() if k.lower() != "host"})
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def handle(self, method: str, path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        import time

        form = urllib.parse.parse_qs(body.decode(errors="replace"))
        action = (form.get("Action") or ["?"])[0]
        with self._mutex:
            self.calls[action] += 1
            if time.monotonic() < self._down_until:
                return 503, [("Content-Type", "text/xml")], UNAVAILABLE
        token = (form.get("ClientToken") or [None])[0] if action == "RunInstances" else None
        if token is not None:
            with self._mutex:
                if token in self._replies:
                    self.calls["replayed"] += 1
                    return self._replies[token]
        status, out_headers, reply = self._forward(method, path, headers, body)
        if token is not None and status == 200:
            with self._mutex:
                self._replies[token] = (status, out_headers, reply)
                if self._to_lose and self._to_skip:
                    self._to_skip -= 1
                elif self._to_lose:
                    self._to_lose -= 1
                    self.lost += 1
                    self._down_until = time.monotonic() + self.outage
                    return 503, [("Content-Type", "text/xml")], UNAVAILABLE
        return status, out_headers, reply
