"""The resource tracker of a compute host: heartbeats, its compute node row, its claims.

The scheduler's claims (:mod:`cellplane.scheduling.claims`) are the truth for
what a host has handed out: the tracker writes the node's size, type, zone
and allocation ratios, and never the ``*_used`` columns or ``running_vms``
(beyond creating the row with zero usage). The compute manager changes usage
only through the claim functions below.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cellplane.config import ComputeConfig, HostConfig
from cellplane.db.models import ComputeNode, Service, utcnow
from cellplane.scheduling.claims import claim, release, resize_claim
from cellplane.scheduling.spec import FlavorSpec

COMPUTE_ROLE = "compute"

_NOTHING = FlavorSpec(flavor_id="", vcpus=0, memory_mb=0, root_gb=0, ephemeral_gb=0)

__all__ = [
    "COMPUTE_ROLE",
    "ResourceTracker",
    "claim",
    "claim_extra",
    "flavor_spec",
    "release",
    "release_extra",
]


def flavor_spec(flavor_id: str, flavor: dict[str, Any]) -> FlavorSpec:
    """The claimable size of an instance's flavor dict."""
    return FlavorSpec(
        flavor_id=flavor_id,
        vcpus=int(flavor.get("vcpus", 0)),
        memory_mb=int(flavor.get("memory_mb", 0)),
        root_gb=int(flavor.get("root_gb", 0)),
        ephemeral_gb=int(flavor.get("ephemeral_gb", 0)),
    )


def claim_extra(session: Session, host: str, flavor: FlavorSpec) -> bool:
    """Take ``flavor``'s resources on ``host`` for an instance that already counts there.

    A same-host resize holds both sizes until it is confirmed or reverted;
    ``running_vms`` does not change. False if it does not fit.
    """
    return resize_claim(session, host, _NOTHING, flavor)


def release_extra(session: Session, host: str, flavor: FlavorSpec) -> None:
    """Give back what :func:`claim_extra` took (never below zero)."""
    resize_claim(session, host, flavor, _NOTHING)


class ResourceTracker:
    """Keeps one host's ``services`` and ``compute_nodes`` rows up to date."""

    def __init__(
        self, host: HostConfig, sessions: sessionmaker[Session], config: ComputeConfig
    ) -> None:
        self.host = host
        self._sessions = sessions
        self._config = config

    def report(self) -> None:
        """Heartbeat the compute service and refresh the node's static columns, in one commit."""
        with self._sessions.begin() as session:
            self._heartbeat(session)
            self._update_node(session)

    def _heartbeat(self, session: Session) -> None:
        conn = session.connection()
        now = utcnow()
        where = (Service.host == self.host.name, Service.role == COMPUTE_ROLE)
        bump = (
            sa.update(Service)
            .where(*where)
            .values(report_count=Service.report_count + 1, last_heartbeat=now)
        )
        if conn.execute(bump).rowcount:
            return
        row = {"host": self.host.name, "role": COMPUTE_ROLE, "report_count": 1}
        if not _insert(session, Service, {**row, "last_heartbeat": now, "created_at": now}):
            conn.execute(bump)  # another process registered it just now

    def _update_node(self, session: Session) -> None:
        conn = session.connection()
        host, config = self.host, self._config
        values = {
            "hypervisor_type": host.hypervisor_type,
            "availability_zone": host.availability_zone,
            "vcpus": host.vcpus,
            "memory_mb": host.memory_mb,
            "local_gb": host.local_gb,
            "cpu_allocation_ratio": config.cpu_allocation_ratio,
            "ram_allocation_ratio": config.ram_allocation_ratio,
            "disk_allocation_ratio": config.disk_allocation_ratio,
            "updated_at": utcnow(),
        }
        refresh = sa.update(ComputeNode).where(ComputeNode.host == host.name).values(**values)
        if conn.execute(refresh).rowcount:
            return
        usage = {"vcpus_used": 0, "memory_mb_used": 0, "local_gb_used": 0, "running_vms": 0}
        if not _insert(session, ComputeNode, {"host": host.name, **values, **usage}):
            conn.execute(refresh)


def _insert(
    session: Session, model: type[Service] | type[ComputeNode], row: dict[str, Any]
) -> bool:
    try:
        with session.begin_nested():
            session.connection().execute(sa.insert(model).values(**row))
    except IntegrityError:
        return False
    return True
