"""A private RabbitMQ node for tests and benchmarks: `rabbitmq-server` on free loopback ports
(AMQP, Erlang distribution, management API), its data, logs, config, plugins file and Erlang
cookie in a temporary folder, so it neither touches nor depends on a RabbitMQ the machine may
already run (only epmd on 4369 is shared, as any Erlang node shares it). A vhost per test
(`Rabbit.vhost`) keeps tests apart on one node. Needs the Debian package rabbitmq-server
(`ensure_rabbitmq` installs it as root); talks to the node over AMQP and its management API only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import requests

from fleet.testing.system import ensure_debian_packages, missing

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # not /usr/sbin's wrapper, which runs as user rabbitmq
USER, PASSWORD = "fleet", "fleet-test"  # a node of the test's own, on loopback only

#: The Debian packages a private node needs, each with how to tell it is here.
RABBITMQ_PACKAGES = {"rabbitmq-server": lambda: os.access(SERVER, os.X_OK)}

CONFIG = """\
listeners.tcp.1 = 127.0.0.1:{amqp}
management.tcp.ip = 127.0.0.1
management.tcp.port = {http}
loopback_users = none
default_user = {user}
default_pass = {password}
collect_statistics_interval = 500
vm_memory_high_watermark.absolute = 512MiB
disk_free_limit.absolute = 50MB
log.console = false
log.file.level = warning
"""


def ensure_rabbitmq() -> None:
    """Install rabbitmq-server (as root, with apt-get) when missing, or raise saying how to."""
    ensure_debian_packages(RABBITMQ_PACKAGES, "the RabbitMQ tests (a private rabbitmq-server node)")


def rabbitmq_missing() -> list[str]:
    return missing(RABBITMQ_PACKAGES)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Rabbit:
    """A running private node: AMQP on `port`, the management API on `http_port`."""

    name: str
    port: int
    dist_port: int
    http_port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.session.auth = (USER, PASSWORD)

    def url(self, vhost: str = "/") -> str:
        """The AMQP URL of `vhost`."""
        return f"amqp://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{quote(vhost, safe='')}"

    @property
    def management_url(self) -> str:
        """The management API's base URL, with the credentials."""
        return f"http://{USER}:{PASSWORD}@127.0.0.1:{self.http_port}/"

    def api(self, method: str, path: str, **kwargs: object) -> requests.Response:
        answer = self.session.request(method, f"http://127.0.0.1:{self.http_port}/api/{path}", timeout=10,
                                      **kwargs)  # type: ignore[arg-type]
        answer.raise_for_status()
        return answer

    @contextmanager
    def vhost(self) -> Iterator[str]:
        """A vhost of its own (the node's user may do anything in it), deleted afterwards."""
        name = "fleet-" + uuid.uuid4().hex[:10]
        self.api("PUT", f"vhosts/{name}")
        self.api("PUT", f"permissions/{name}/{USER}", json={"configure": ".*", "write": ".*", "read": ".*"})
        try:
            yield name
        finally:
            if self.process is not None and self.process.poll() is None:
                self.api("DELETE", f"vhosts/{name}")

    def start(self, timeout: float = 90) -> None:
        """Start the node (again, after `stop`: same name, same data), and wait until both AMQP
        and the management API answer. Raises RuntimeError with the log's tail if it does not."""
        env = {**os.environ, "HOME": str(self.folder), "RABBITMQ_NODENAME": self.name,
               "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(self.port),
               "RABBITMQ_DIST_PORT": str(self.dist_port), "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
               "RABBITMQ_LOG_BASE": str(self.folder / "log"),
               "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq.conf"),
               "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
               "RABBITMQ_PID_FILE": str(self.folder / "node.pid"),
               "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.folder / "advanced.config"),
               "RABBITMQ_CONF_ENV_FILE": str(self.folder / "rabbitmq-env.conf")}
        with open(self.folder / "server.out", "ab") as out:
            self.process = subprocess.Popen([SERVER], env=env, cwd=self.folder, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.api("GET", "overview")
                with socket.create_connection(("127.0.0.1", self.port), timeout=2):
                    return
            except (requests.RequestException, OSError) as exc:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    tail = (self.folder / "server.out").read_text(errors="replace").strip().splitlines()[-5:]
                    raise RuntimeError(f"rabbitmq-server {self.name} did not come up ({exc}): "
                                       + " / ".join(tail)) from None
            time.sleep(0.2)

    def stop(self, timeout: float = 60) -> None:
        """Stop the node (SIGTERM: a clean shutdown that keeps durable queues and persistent
        messages), SIGKILL after `timeout`; the whole process group goes (epmd is not ours)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # what of the group is left (erl_child_setup)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.process = None

    def restart(self) -> float:
        """Stop and start the node; returns the seconds it was down."""
        down = time.monotonic()
        self.stop()
        self.start()
        return time.monotonic() - down


@contextmanager
def rabbitmq_node() -> Iterator[Rabbit]:
    """A private RabbitMQ node, with the management plugin, stopped and its folder removed
    afterwards (`fleet bench` may use it too)."""
    ensure_rabbitmq()
    folder = Path(tempfile.mkdtemp(prefix="fleet-rabbit-"))
    ports: list[int] = []
    while len(ports) < 3:  # AMQP, Erlang distribution, management: three different ones
        if (port := free_port()) not in ports:
            ports.append(port)
    node = Rabbit(f"fleet-{uuid.uuid4().hex[:8]}@localhost", ports[0], ports[1], ports[2], folder)
    try:
        (folder / "rabbitmq.conf").write_text(CONFIG.format(amqp=node.port, http=node.http_port, user=USER,
                                                            password=PASSWORD))
        (folder / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (folder / "advanced.config").write_text("[].\n")
        (folder / "rabbitmq-env.conf").write_text("")
        node.start()
        yield node
    finally:
        node.stop(timeout=0)  # its data goes with the folder: no clean shutdown needed
        node.session.close()
        shutil.rmtree(folder, ignore_errors=True)
