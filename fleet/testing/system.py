"""Debian packages some tests need (podman for the docker provider's tests, ...), installed by the
test run itself, so that the README's test command passes verbatim on a fresh machine.

As root on a machine with apt-get, the missing packages are installed (`apt-get update` first if
the package lists are missing or stale). Anywhere else the tests that need them fail with one
clear line saying what to install."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Mapping

_lock = threading.Lock()


def missing(needs: Mapping[str, Callable[[], bool]]) -> list[str]:
    """The packages of `needs` (package -> "is it here?") that are not here."""
    return [package for package, present in needs.items() if not present()]


def ensure_debian_packages(needs: Mapping[str, Callable[[], bool]], what: str) -> None:
    """Install the packages of `needs` that are missing, or raise RuntimeError saying how to."""
    with _lock:
        lacking = missing(needs)
        if not lacking:
            return
        command = f"apt-get install -y {' '.join(lacking)}"
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise RuntimeError(f"{what} need the Debian packages {', '.join(lacking)}; install them as root: {command}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *lacking]
        done = subprocess.run(install, env=env, capture_output=True, text=True)
        if done.returncode != 0:  # the package lists may be missing or stale on a fresh machine
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, text=True)
            done = subprocess.run(install, env=env, capture_output=True, text=True)
        if done.returncode != 0 or missing(needs):
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"{what} need the Debian packages {', '.join(lacking)}, and `{command}` failed: "
                               + " / ".join(tail))
