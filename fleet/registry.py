"""Providers by name, found lazily through the `fleet.providers` entry-point group."""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points

from fleet.errors import ProviderNotFound
from fleet.provider import Provider

GROUP = "fleet.providers"


def available() -> dict[str, EntryPoint]:
    """Every registered provider name and its entry point (nothing is imported)."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


@cache
def provider_class(name: str) -> type[Provider]:
    """Import and return the provider class registered as `name`."""
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
