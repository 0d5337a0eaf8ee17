"""Instance-type catalogues: choose the cheapest type that fits a cluster's hardware, as Arvados
does. Cloud-neutral: providers bring their own catalogue (built-in defaults or provider_options)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from fleet.errors import CapacityError, PermanentProviderError
from fleet.provider import Hardware


class InstanceType(BaseModel):
    """One entry of a catalogue. `price` is relative (per hour, any currency): only order matters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    cpu: float = Field(gt=0)
    memory_mb: int = Field(gt=0)
    gpus: int = Field(default=0, ge=0)
    price: float = Field(ge=0)

    def fits(self, hw: Hardware) -> bool:
        return self.cpu >= hw.cpu and self.memory_mb >= hw.memory_mb and self.gpus >= hw.gpus


def eligible(catalogue: Iterable[InstanceType], hw: Hardware, exclude: Iterable[str] = ()) -> list[InstanceType]:
    """Every type that fits `hw`, cheapest first (ties: fewer CPUs, then name), minus `exclude`."""
    skip = set(exclude)
    return sorted((t for t in catalogue if t.fits(hw) and t.name not in skip),
                  key=lambda t: (t.price, t.cpu, t.memory_mb, t.name))


def cheapest_fit(catalogue: Sequence[InstanceType], hw: Hardware, exclude: Iterable[str] = ()) -> InstanceType:
    """The cheapest type that fits, skipping `exclude` (types the cloud just had no capacity
    for). PermanentProviderError naming the need when none fits at all; CapacityError when the
    only ones that fit are excluded (Fleet then holds the cluster's launches for a while)."""
    exclude = frozenset(exclude)
    fits = eligible(catalogue, hw, exclude)
    if fits:
        return fits[0]
    if eligible(catalogue, hw):
        raise CapacityError(f"every instance type that fits is out of capacity: {', '.join(sorted(exclude))}")
    raise PermanentProviderError(
        f"no instance type in the catalogue fits cpu={hw.cpu:g} memory_mb={hw.memory_mb} gpus={hw.gpus}: "
        "add one to provider_options.catalogue or lower the cluster's hardware"
    )
