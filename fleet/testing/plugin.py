"""Fleet's pytest plugin (entry point `pytest11: fleet`, loaded wherever Fleet is installed with
pytest): the marker `fleet_contract` for the provider contract suite, and a `kit` fixture that
says what to do when a `ProviderContract` subclass forgot to define its own."""

from __future__ import annotations

from typing import Any

import pytest


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "fleet_contract: a test of the Fleet provider contract suite")


@pytest.fixture
def kit() -> Any:
    raise pytest.UsageError("the Fleet provider contract suite needs a `kit` fixture returning a "
                            "fleet.testing.Kit for your provider: define one on your ProviderContract subclass")
