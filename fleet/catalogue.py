"""Instance-type catalogues: choose the cheapest type that fits a cluster's hardware, as Arvados
does. Cloud-neutral: providers bring their own catalogue (built-in defaults or provider_options)."""

from __future__ import annotations

from typing import Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from fleet.errors import PermanentProviderError
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
    """The cheapest type that fits; PermanentProviderError naming the need when none does."""
    fits = eligible(catalogue, hw, exclude)
    if not fits:
        raise PermanentProviderError(
            f"no instance type in the catalogue fits cpu={hw.cpu:g} memory_mb={hw.memory_mb} gpus={hw.gpus}"
            f"{' (excluding ' + ', '.join(sorted(set(exclude))) + ')' if exclude else ''}: "
            "add one to provider_options.catalogue or lower the cluster's hardware"
        )
    return fits[0]
