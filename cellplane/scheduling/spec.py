"""What a build asks the schedulers for: a flavor, image properties and hints.

A :class:`RequestSpec` is the same for the cell scheduler and the host
scheduler. It travels over local RPC as a plain dict (:meth:`RequestSpec.to_dict`
/ :meth:`RequestSpec.from_dict`); :meth:`RequestSpec.from_dict` validates what
it is given, since that is the edge where it enters the scheduler role.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cellplane.errors import InvalidArgument

if TYPE_CHECKING:
    from cellplane.db.models import Flavor

GROUP_POLICIES = ("", "affinity", "anti-affinity")


@dataclass(frozen=True)
class FlavorSpec:
    """The size of one instance."""

    flavor_id: str
    vcpus: int
    memory_mb: int
    root_gb: int
    ephemeral_gb: int = 0

    @property
    def disk_gb(self) -> int:
        """Local disk the instance takes: root plus ephemeral."""
        return self.root_gb + self.ephemeral_gb

    @classmethod
    def of(cls, flavor: Flavor) -> FlavorSpec:
        """The size of a flavor row."""
        return cls(
            flavor_id=flavor.flavor_id,
            vcpus=flavor.vcpus,
            memory_mb=flavor.memory_mb,
            root_gb=flavor.root_gb,
            ephemeral_gb=flavor.ephemeral_gb,
        )


@dataclass(frozen=True)
class Hints:
    """Scheduler hints, as a user (or, for ``target_cell``, an admin) gave them."""

    target_cell: str = ""
    different_cell: tuple[str, ...] = ()
    group: str = ""
    group_policy: str = ""  # "affinity" | "anti-affinity" | "" (no group)
    same_host: tuple[str, ...] = ()
    different_host: tuple[str, ...] = ()


@dataclass(frozen=True)
class RequestSpec:
    """Everything the filters and weighers look at for one build request."""

    flavor: FlavorSpec
    image_properties: Mapping[str, str] = field(default_factory=dict)
    hints: Hints = Hints()
    availability_zone: str = ""
    num_instances: int = 1
    tried_cells: tuple[str, ...] = ()
    is_admin: bool = False
    project_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible copy, for local RPC."""
        hints = self.hints
        return {
            "flavor": {
                "flavor_id": self.flavor.flavor_id,
                "vcpus": self.flavor.vcpus,
                "memory_mb": self.flavor.memory_mb,
                "root_gb": self.flavor.root_gb,
                "ephemeral_gb": self.flavor.ephemeral_gb,
            },
            "image_properties": dict(self.image_properties),
            "hints": {
                "target_cell": hints.target_cell,
                "different_cell": list(hints.different_cell),
                "group": hints.group,
                "group_policy": hints.group_policy,
                "same_host": list(hints.same_host),
                "different_host": list(hints.different_host),
            },
            "availability_zone": self.availability_zone,
            "num_instances": self.num_instances,
            "tried_cells": list(self.tried_cells),
            "is_admin": self.is_admin,
            "project_id": self.project_id,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RequestSpec:
        """Rebuild and validate a spec; InvalidArgument names the first bad field."""
        if not isinstance(data, Mapping):
            raise InvalidArgument("request spec: expected an object")
        raw_flavor = _get(data, "flavor", Mapping, None)
        if raw_flavor is None:
            raise InvalidArgument("request spec: flavor is required")
        flavor = FlavorSpec(
            flavor_id=_get(raw_flavor, "flavor_id", str, "", "flavor."),
            vcpus=_count(raw_flavor, "vcpus", 0, "flavor."),
            memory_mb=_count(raw_flavor, "memory_mb", 0, "flavor."),
            root_gb=_count(raw_flavor, "root_gb", 0, "flavor."),
            ephemeral_gb=_count(raw_flavor, "ephemeral_gb", 0, "flavor."),
        )
        props = _get(data, "image_properties", Mapping, {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in props.items()):
            raise InvalidArgument("request spec: image_properties must map strings to strings")
        raw_hints = _get(data, "hints", Mapping, {})
        hints = Hints(
            target_cell=_get(raw_hints, "target_cell", str, "", "hints."),
            different_cell=_strings(raw_hints, "different_cell", "hints."),
            group=_get(raw_hints, "group", str, "", "hints."),
            group_policy=_get(raw_hints, "group_policy", str, "", "hints."),
            same_host=_strings(raw_hints, "same_host", "hints."),
            different_host=_strings(raw_hints, "different_host", "hints."),
        )
        if hints.group_policy not in GROUP_POLICIES:
            raise InvalidArgument(
                f"request spec: hints.group_policy {hints.group_policy!r} is not one of"
                f" {', '.join(p for p in GROUP_POLICIES if p)}"
            )
        if hints.group_policy and not hints.group:
            raise InvalidArgument("request spec: hints.group_policy needs hints.group")
        num = _count(data, "num_instances", 1)
        if num < 1:
            raise InvalidArgument(f"request spec: num_instances must be >= 1, got {num}")
        is_admin = _get(data, "is_admin", bool, False)
        return cls(
            flavor=flavor,
            image_properties=dict(props),
            hints=hints,
            availability_zone=_get(data, "availability_zone", str, ""),
            num_instances=num,
            tried_cells=_strings(data, "tried_cells"),
            is_admin=is_admin,
            project_id=_get(data, "project_id", str, ""),
        )


def _get(data: Mapping[str, Any], key: str, kind: Any, default: Any, prefix: str = "") -> Any:
    value = data.get(key, default)
    if value is default:
        return value
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        name = getattr(kind, "__name__", str(kind))
        raise InvalidArgument(f"request spec: {prefix}{key} must be {name}, got {value!r}")
    return value


def _count(data: Mapping[str, Any], key: str, default: int, prefix: str = "") -> int:
    value = int(_get(data, key, int, default, prefix))
    if value < 0:
        raise InvalidArgument(f"request spec: {prefix}{key} must be >= 0, got {value}")
    return value


def _strings(data: Mapping[str, Any], key: str, prefix: str = "") -> tuple[str, ...]:
    value = _get(data, key, list | tuple, (), prefix)
    if not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"request spec: {prefix}{key} must be a list of strings")
    return tuple(value)
