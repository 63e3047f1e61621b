"""The host scheduler's candidates, filters and weighers.

Candidates are the compute nodes of this cell, read with their compute
service (for enabled/up) and the instances the request's hints and server
group care about.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from cellplane.db.models import ComputeNode, Instance, Service, utcnow
from cellplane.scheduling.framework import Filter, Weigher
from cellplane.scheduling.spec import RequestSpec

COMPUTE_ROLE = "compute"
# Image properties naming the hypervisor an image needs (Nova's and Glance's spelling).
HYPERVISOR_PROPERTIES = ("hypervisor_type", "img_hv_type")


@dataclass(frozen=True)
class HostCandidate:
    """A compute host as the filters see it.

    ``instances`` holds the hinted instances (same_host / different_host) that
    live on the host; ``group_members`` the instances of the request's server
    group on it, and ``group_hosts`` every host of the cell holding a member.
    """

    host: str
    availability_zone: str = ""
    hypervisor_type: str = ""
    vcpus_total: int = 0
    vcpus_used: int = 0
    memory_mb_total: int = 0
    memory_mb_used: int = 0
    disk_gb_total: int = 0
    disk_gb_used: int = 0
    cpu_allocation_ratio: float = 1.0
    ram_allocation_ratio: float = 1.0
    disk_allocation_ratio: float = 1.0
    enabled: bool = True
    up: bool = True
    instances: frozenset[str] = frozenset()
    group_members: frozenset[str] = frozenset()
    group_hosts: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        """The host name (what the framework calls every candidate by)."""
        return self.host

    @property
    def free_ram_mb(self) -> float:
        """RAM left to claim, overcommit included (the same sum a claim checks)."""
        return self.memory_mb_total * self.ram_allocation_ratio - self.memory_mb_used

    @property
    def free_disk_gb(self) -> float:
        """Disk left to claim, overcommit included."""
        return self.disk_gb_total * self.disk_allocation_ratio - self.disk_gb_used

    @property
    def free_vcpus(self) -> float:
        """vCPUs left to claim, overcommit included."""
        return self.vcpus_total * self.cpu_allocation_ratio - self.vcpus_used


def load_hosts(
    session: Session, spec: RequestSpec, service_down_time: float, now: datetime | None = None
) -> list[HostCandidate]:
    """Every compute node of the cell as a candidate for ``spec``.

    A node is up when its compute service sent a heartbeat within
    ``service_down_time`` seconds and is not forced down; a node without a
    compute service row is down.
    """
    now = now or utcnow()
    oldest = now - timedelta(seconds=service_down_time)
    rows = session.execute(
        sa.select(ComputeNode, Service)
        .outerjoin(Service, sa.and_(Service.host == ComputeNode.host, Service.role == COMPUTE_ROLE))
        .order_by(ComputeNode.host)
        # Read again within one transaction (after its own claims): the values now.
        .execution_options(populate_existing=True)
    ).all()
    hinted = set(spec.hints.same_host) | set(spec.hints.different_host)
    instances: dict[str, set[str]] = {}
    members: dict[str, set[str]] = {}
    wanted: list[sa.ColumnElement[bool]] = []
    if hinted:
        wanted.append(Instance.uuid.in_(sorted(hinted)))
    if spec.hints.group:
        wanted.append(Instance.server_group == spec.hints.group)
    if wanted:
        found = session.execute(
            sa.select(Instance.uuid, Instance.host, Instance.server_group).where(
                Instance.deleted.is_(False), Instance.host.is_not(None), sa.or_(*wanted)
            )
        ).all()
        for uuid, host, group in found:
            assert host is not None  # filtered in the query
            if uuid in hinted:
                instances.setdefault(host, set()).add(uuid)
            if spec.hints.group and group == spec.hints.group:
                members.setdefault(host, set()).add(uuid)
    group_hosts = frozenset(members)
    candidates = []
    for node, service in rows:
        up = (
            service is not None
            and not service.forced_down
            and service.last_heartbeat is not None
            and service.last_heartbeat >= oldest
        )
        candidates.append(
            HostCandidate(
                host=node.host,
                availability_zone=node.availability_zone or "",
                hypervisor_type=node.hypervisor_type,
                vcpus_total=node.vcpus,
                vcpus_used=node.vcpus_used,
                memory_mb_total=node.memory_mb,
                memory_mb_used=node.memory_mb_used,
                disk_gb_total=node.local_gb,
                disk_gb_used=node.local_gb_used,
                cpu_allocation_ratio=node.cpu_allocation_ratio,
                ram_allocation_ratio=node.ram_allocation_ratio,
                disk_allocation_ratio=node.disk_allocation_ratio,
                enabled=service is None or not service.disabled,
                up=up,
                instances=frozenset(instances.get(node.host, ())),
                group_members=frozenset(members.get(node.host, ())),
                group_hosts=group_hosts,
            )
        )
    return candidates


def with_pending(
    candidates: Sequence[HostCandidate], spec: RequestSpec, placed: Iterable[str]
) -> list[HostCandidate]:
    """Count instances placed earlier in the same request as members of its group.

    They have no host in the database yet, but (anti-)affinity must see them.
    """
    placed_hosts = list(placed)
    if not spec.hints.group or not placed_hosts:
        return list(candidates)
    group_hosts = frozenset(placed_hosts).union(*(c.group_hosts for c in candidates))
    out = []
    for c in candidates:
        pending = frozenset(f"pending-{i}" for i, host in enumerate(placed_hosts) if host == c.host)
        out.append(replace(c, group_members=c.group_members | pending, group_hosts=group_hosts))
    return out


class ComputeFilter(Filter[HostCandidate]):
    """Only enabled hosts whose compute service is up."""

    def passes(self, candidate: HostCandidate, spec: RequestSpec) -> bool:
        return candidate.enabled and candidate.up


class RamFilter(Filter[HostCandidate]):
    """Enough RAM left, overcommit included."""

    def passes(self, candidate: HostCandidate, spec: RequestSpec) -> bool:
        return candidate.free_ram_mb >= spec.flavor.memory_mb


class DiskFilter(Filter[HostCandidate]):
    """Enough local disk left, overcommit included."""

    def passes(self, candidate: HostCandidate, spec: RequestSpec) -> bool:
        return candidate.free_disk_gb >= spec.flavor.disk_gb


class CoreFilter(Filter[HostCandidate]):
    """Enough vCPUs left, overcommit included."""

    def passes(self, candidate: HostCandidate, spec: RequestSpec) -> bool:
        return candidate.free_vcpus >= spec.flavor.vcpus


class AvailabilityZoneFilter(Filter[HostCandidate]):
    """Only hosts of the requested availability zone (any, when none is asked for)."""

    def passes(self, candidate: HostCandidate, spec: RequestSpec) -> bool:
        return not spec.availability_zone or candidate.availability_zone == spec.availability_zone


class ImagePropertiesFilter(Filter[HostCandidate]):
    """An image that names a hypervisor type runs only on hosts of that type."""

    def passes(self, candidate: HostCandidate, spec: RequestSpec) -> bool:
        for prop in HYPERVISOR_PROPERTIES:
            wanted = spec.image_properties.get(prop)
            if wanted and wanted.lower() != candidate.hypervisor_type.lower():
                return False
        return True


class SameHostFilter(Filter[HostCandidate]):
    """The ``same_host`` hint: a host holding one of the named instances."""

    def passes(self, candidate: HostCandidate, spec: RequestSpec) -> bool:
        wanted = spec.hints.same_host
        return not wanted or not candidate.instances.isdisjoint(wanted)


class DifferentHostFilter(Filter[HostCandidate]):
    """The ``different_host`` hint: a host holding none of the named instances."""

    def passes(self, candidate: HostCandidate, spec: RequestSpec) -> bool:
        return candidate.instances.isdisjoint(spec.hints.different_host)


class ServerGroupAffinityFilter(Filter[HostCandidate]):
    """An affinity group's instances share a host: once it has one, only that host."""

    def passes(self, candidate: HostCandidate, spec: RequestSpec) -> bool:
        if spec.hints.group_policy != "affinity" or not candidate.group_hosts:
            return True
        return candidate.host in candidate.group_hosts


class ServerGroupAntiAffinityFilter(Filter[HostCandidate]):
    """An anti-affinity group's instances each get a host of their own."""

    def passes(self, candidate: HostCandidate, spec: RequestSpec) -> bool:
        if spec.hints.group_policy != "anti-affinity":
            return True
        return not candidate.group_members and candidate.host not in candidate.group_hosts


class RAMWeigher(Weigher[HostCandidate]):
    """Free RAM: a positive multiplier spreads instances, a negative one packs them."""

    def __init__(self, multiplier: float = 1.0) -> None:
        self.multiplier = multiplier

    def weigh(self, candidate: HostCandidate, spec: RequestSpec) -> float:
        return candidate.free_ram_mb


def default_host_filters() -> list[Filter[HostCandidate]]:
    """The host filters, in the order they run."""
    return [
        ComputeFilter(),
        AvailabilityZoneFilter(),
        RamFilter(),
        DiskFilter(),
        CoreFilter(),
        ImagePropertiesFilter(),
        SameHostFilter(),
        DifferentHostFilter(),
        ServerGroupAffinityFilter(),
        ServerGroupAntiAffinityFilter(),
    ]


def default_host_weighers(ram_weight_multiplier: float = 1.0) -> list[Weigher[HostCandidate]]:
    """The host weighers; ``ram_weight_multiplier`` > 0 spreads, < 0 packs."""
    return [RAMWeigher(ram_weight_multiplier)]
