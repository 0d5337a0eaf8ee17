"""Instance-type choice: cheapest fit, capacity exclusions, and the two ways nothing fits."""

from __future__ import annotations

import pytest

from fleet.catalogue import InstanceType, cheapest_fit
from fleet.errors import CapacityError, PermanentProviderError
from fleet.provider import Hardware

CATALOGUE = [InstanceType(name="small", cpu=2, memory_mb=4096, price=1.0),
             InstanceType(name="big", cpu=8, memory_mb=32768, price=4.0),
             InstanceType(name="gpu", cpu=8, memory_mb=32768, gpus=1, price=9.0)]


def test_cheapest_that_fits() -> None:
    assert cheapest_fit(CATALOGUE, Hardware(cpu=1, memory_mb=1024)).name == "small"
    assert cheapest_fit(CATALOGUE, Hardware(cpu=4, memory_mb=1024)).name == "big"
    assert cheapest_fit(CATALOGUE, Hardware(cpu=1, memory_mb=1024, gpus=1)).name == "gpu"


def test_excluded_types_fall_back_to_the_next_and_then_to_a_capacity_error() -> None:
    assert cheapest_fit(CATALOGUE, Hardware(cpu=1, memory_mb=1024), {"small"}).name == "big"
    with pytest.raises(CapacityError, match="out of capacity"):
        cheapest_fit(CATALOGUE, Hardware(cpu=4, memory_mb=1024), {"big", "gpu"})


def test_nothing_fits_is_permanent_and_says_what_to_fix() -> None:
    with pytest.raises(PermanentProviderError, match=r"cpu=64.*add one to provider_options\.catalogue"):
        cheapest_fit(CATALOGUE, Hardware(cpu=64, memory_mb=1024))
