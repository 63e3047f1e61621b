"""The cell scheduler's candidates, filters and weighers.

Candidates are this cell itself and its children, described by their last
capability and capacity reports. The caller builds them (see
:func:`cell_candidate_from_capacity`); nothing here reads the database or the
links.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cellplane.errors import PermissionDenied
from cellplane.federation import paths
from cellplane.scheduling.framework import Filter, Weigher
from cellplane.scheduling.spec import RequestSpec

if TYPE_CHECKING:
    from cellplane.v1 import types_pb2

# Image property -> the capability it is checked against, where the names differ.
IMAGE_PROPERTY_CAPABILITIES: Mapping[str, str] = {"hypervisor_type": "hypervisor"}

DEFAULT_RAM_WEIGHT_MULTIPLIER = 10.0  # Nova's cells ram_weight_multiplier
DEFAULT_OFFSET_WEIGHT_MULTIPLIER = 1.0
DEFAULT_MUTE_WEIGHT_MULTIPLIER = -10000.0


@dataclass(frozen=True)
class CellCandidate:
    """A cell that could take a build: this cell (``is_self``) or one of its children."""

    name: str
    path: str
    is_self: bool = False
    capabilities: Mapping[str, frozenset[str]] = field(default_factory=dict)
    ram_free_mb: int = 0
    disk_free_gb: int = 0
    ram_units: Mapping[int, int] = field(default_factory=dict)  # memory_mb -> units free
    disk_units: Mapping[int, int] = field(default_factory=dict)  # disk_gb -> units free
    disabled: bool = False
    mute: bool = False
    weight_offset: float = 0.0
    weight_scale: float = 1.0


def cell_candidate_from_capacity(
    name: str,
    path: str,
    capacity: types_pb2.Capacity,
    *,
    is_self: bool = False,
    capabilities: Mapping[str, Iterable[str]] | None = None,
    disabled: bool = False,
    mute: bool = False,
    weight_offset: float = 0.0,
    weight_scale: float = 1.0,
) -> CellCandidate:
    """A candidate from a capacity report (``types_pb2.Capacity``) and capabilities."""
    return CellCandidate(
        name=name,
        path=path,
        is_self=is_self,
        capabilities={k: frozenset(v) for k, v in (capabilities or {}).items()},
        ram_free_mb=int(capacity.ram_free_mb),
        disk_free_gb=int(capacity.disk_free_gb),
        ram_units={int(u.memory_mb): int(u.units) for u in capacity.ram_units},
        disk_units={int(u.disk_gb): int(u.units) for u in capacity.disk_units},
        disabled=disabled,
        mute=mute,
        weight_offset=weight_offset,
        weight_scale=weight_scale,
    )


def _below_or_at(target: str, path: str) -> bool:
    return target == path or target.startswith(path + paths.SEP)


class TargetCellFilter(Filter[CellCandidate]):
    """The admin-only ``target_cell`` hint: keep the way to the target.

    A child passes when the target is the child or lies below it; this cell
    passes only when it is the target itself (its path is a prefix of every
    child's, so "below" would not narrow anything).
    """

    def filter_all(
        self, candidates: Sequence[CellCandidate], spec: RequestSpec
    ) -> list[CellCandidate]:
        if spec.hints.target_cell and not spec.is_admin:
            raise PermissionDenied("the target_cell scheduler hint is for admins only")
        return super().filter_all(candidates, spec)

    def passes(self, candidate: CellCandidate, spec: RequestSpec) -> bool:
        target = spec.hints.target_cell
        if not target:
            return True
        if candidate.is_self:
            return target == candidate.path
        return _below_or_at(target, candidate.path)


class DifferentCellFilter(Filter[CellCandidate]):
    """The ``different_cell`` hint: stay out of the named cells and their subtrees."""

    def passes(self, candidate: CellCandidate, spec: RequestSpec) -> bool:
        return not any(
            candidate.path == p or (not candidate.is_self and _below_or_at(candidate.path, p))
            for p in spec.hints.different_cell
        )


class TriedCellsFilter(Filter[CellCandidate]):
    """Skip cells a reschedule already tried."""

    def passes(self, candidate: CellCandidate, spec: RequestSpec) -> bool:
        return candidate.path not in spec.tried_cells and candidate.name not in spec.tried_cells


class DisabledFilter(Filter[CellCandidate]):
    """Skip cells an operator disabled."""

    def passes(self, candidate: CellCandidate, spec: RequestSpec) -> bool:
        return not candidate.disabled


class ImagePropertiesFilter(Filter[CellCandidate]):
    """Image properties must be among the cell's capabilities.

    Property ``X`` is checked against capability ``X`` (``hypervisor_type``
    against ``hypervisor``); a capability the cell does not report at all
    does not constrain it.
    """

    def passes(self, candidate: CellCandidate, spec: RequestSpec) -> bool:
        for prop, value in spec.image_properties.items():
            capability = IMAGE_PROPERTY_CAPABILITIES.get(prop, prop)
            offered = candidate.capabilities.get(capability)
            if offered is None:
                continue
            if value.lower() not in {v.lower() for v in offered}:
                return False
        return True


class CapacityFilter(Filter[CellCandidate]):
    """Enough room for ``num_instances`` of the flavor.

    As Nova counted it: the units free for the flavor's memory size (and disk
    size) when the cell reported that size, else the free totals.
    """

    def passes(self, candidate: CellCandidate, spec: RequestSpec) -> bool:
        flavor, count = spec.flavor, spec.num_instances
        ram_units = candidate.ram_units.get(flavor.memory_mb)
        if ram_units is not None:
            ram_ok = ram_units >= count
        else:
            ram_ok = candidate.ram_free_mb >= flavor.memory_mb * count
        disk_units = candidate.disk_units.get(flavor.disk_gb)
        if disk_units is not None:
            disk_ok = disk_units >= count
        else:
            disk_ok = candidate.disk_free_gb >= flavor.disk_gb * count
        return ram_ok and disk_ok


class RamByInstanceTypeWeigher(Weigher[CellCandidate]):
    """More room for this flavor weighs more (units free for its memory size)."""

    def __init__(self, multiplier: float = DEFAULT_RAM_WEIGHT_MULTIPLIER) -> None:
        self.multiplier = multiplier

    def weigh(self, candidate: CellCandidate, spec: RequestSpec) -> float:
        memory = spec.flavor.memory_mb
        units = candidate.ram_units.get(memory)
        if units is None:
            units = candidate.ram_free_mb // memory if memory else candidate.ram_free_mb
        return float(units)


class WeightOffsetWeigher(Weigher[CellCandidate]):
    """The operator's preference: ``weight_offset * weight_scale`` of the cell."""

    def __init__(self, multiplier: float = DEFAULT_OFFSET_WEIGHT_MULTIPLIER) -> None:
        self.multiplier = multiplier

    def weigh(self, candidate: CellCandidate, spec: RequestSpec) -> float:
        return candidate.weight_offset * candidate.weight_scale


class MuteChildWeigher(Weigher[CellCandidate]):
    """A mute child is chosen only when nothing else is left."""

    minval = 0.0
    maxval = 1.0

    def __init__(self, multiplier: float = DEFAULT_MUTE_WEIGHT_MULTIPLIER) -> None:
        self.multiplier = multiplier

    def weigh(self, candidate: CellCandidate, spec: RequestSpec) -> float:
        return 1.0 if candidate.mute else 0.0


def default_cell_filters() -> list[Filter[CellCandidate]]:
    """The cell filters, in the order they run."""
    return [
        TargetCellFilter(),
        DifferentCellFilter(),
        TriedCellsFilter(),
        DisabledFilter(),
        ImagePropertiesFilter(),
        CapacityFilter(),
    ]


def default_cell_weighers() -> list[Weigher[CellCandidate]]:
    """The cell weighers with Nova's multipliers."""
    return [RamByInstanceTypeWeigher(), WeightOffsetWeigher(), MuteChildWeigher()]
