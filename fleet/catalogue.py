"""Instance-type catalogues: choose the cheapest type that fits a cluster's hardware, as Arvados
does. Cloud-neutral: providers bring their own catalogue (built-in defaults or provider_options)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date

from pydantic import BaseModel, ConfigDict, Field

from fleet.errors import CapacityError, PermanentProviderError
from fleet.pricing import Market, Price
from fleet.provider import Hardware


class InstanceType(BaseModel):
    """One entry of a catalogue. `price` is USD per hour on demand: the choice takes the cheapest
    type that fits, so only the order of prices steers it; the built-in catalogues' come from the
    providers' dated price tables, and `fleet.pool_prices` takes an operator's catalogue price as
    the type's price (source "config") where no table has one."""

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


def type_price(name: str, market: Market, *, table: float | None, as_of: date, region: str,
               catalogue: Sequence[InstanceType], builtin: Sequence[InstanceType], reference: str,
               note: str = "") -> Price | None:
    """The price of type `name` in `region` for a provider with a dated table: the table's
    (`table`, None when it has none), else the catalogue entry's `price`: a built-in entry's is the
    table's price in its `reference` region (said in the note), an operator's is "config". None
    when neither knows the type. `note` (why a spot pool gets an on-demand price) is kept."""
    def noted(*parts: str) -> str:
        return "; ".join(p for p in (note, *parts) if p)

    if table is not None:
        return Price(table, "table", as_of, market, noted())
    entry = next((t for t in catalogue if t.name == name), None)
    if entry is None:
        return None
    if entry in builtin:
        return Price(entry.price, "table", as_of, market, noted(f"{reference} price: the table has none for {region}"))
    return Price(entry.price, "config", date.today(), market, noted("price of provider_options.catalogue"))
