"""Providers by name, found lazily through the `fleet.providers` entry-point group, or registered
in this process with `register` (a test, a program that embeds Fleet)."""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from fleet.errors import ProviderNotFound
from fleet.provider import Provider

GROUP = "fleet.providers"

#: provider classes registered in this process (`register`), by name
_registered: dict[str, type[Provider[Any]]] = {}


def available() -> dict[str, EntryPoint]:
    """Every registered provider name and its entry point (nothing is imported); those
    registered in this process (`register`) as entry points of their class's import path."""
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    for name, cls in _registered.items():
        found[name] = EntryPoint(name, f"{cls.__module__}:{cls.__qualname__}", GROUP)
    return found


def register(name: str, cls: type[Provider[Any]]) -> None:
    """Make `cls` provider `name` in this process, above an entry point of that name. Only this
    process knows it: control-plane processes started apart (Celery workers) need an entry
    point. Raises TypeError for anything but a Provider subclass, ValueError for an empty name."""
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise TypeError(f"provider {name!r}: {cls!r} is not a fleet Provider subclass")
    if not name or not isinstance(name, str):
        raise ValueError("a provider needs a non-empty name")
    _registered[name] = cls
    provider_class.cache_clear()


def unregister(name: str) -> None:
    """Forget what `register` made provider `name` (an entry point of that name shows again)."""
    _registered.pop(name, None)
    provider_class.cache_clear()


@cache
def provider_class(name: str) -> type[Provider[Any]]:
    """Import and return the provider class registered as `name`."""
    if name in _registered:
        return _registered[name]
    eps = available()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none"
        raise ProviderNotFound(f"no provider named {name!r} (registered: {known})")
    try:
        cls = eps[name].load()
    except ImportError as exc:
        raise ProviderNotFound(f"provider {name!r} ({eps[name].value}) cannot be imported: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise ProviderNotFound(f"entry point {name!r} ({eps[name].value}) is not a fleet Provider")
    return cls
