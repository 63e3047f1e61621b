"""The cell database: what one cell knows about its neighbours, instances, hosts and links.

Every cell has its own database with this schema. Timestamps are stored as
``DateTime(timezone=True)`` and always come back UTC-aware, also on SQLite,
which keeps no offset of its own.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates

# Explicit names make alembic's output identical on SQLite and PostgreSQL.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

CELL_RELATIONS = ("parent", "child")
FAULT_MESSAGE_LENGTH = 255


def utcnow() -> datetime:
    """The current time, UTC-aware."""
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp that refuses naive values and always reads back in UTC."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; cellplane stores UTC-aware timestamps only")
        value = value.astimezone(UTC)
        # SQLite would keep only the wall-clock digits anyway; drop the offset explicitly.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        slow = super().result_processor(dialect, coltype)
        if dialect.name != "sqlite":
            return slow

        def process(value: Any) -> datetime | None:
            if isinstance(value, str):
                return _sqlite_time(value)
            return cast(datetime | None, slow(value) if slow is not None else value)

        return process


@lru_cache(maxsize=4096)
def _sqlite_time(text: str) -> datetime:
    """A timestamp as SQLite keeps it (text), read in UTC. Kept: rows read together
    mostly share it (a transaction's updated_at)."""
    parsed = datetime.fromisoformat(text)
    return (parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed).astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base for every table of a cell database."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        str: sa.String(255),
        datetime: UTCDateTime(),
    }


class Cell(Base):
    """A neighbour of this cell in the tree: its parent or one of its children."""

    __tablename__ = "cells"
    __table_args__ = (sa.CheckConstraint("relation IN ('parent', 'child')", name="relation"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(63), unique=True)
    relation: Mapped[str] = mapped_column(sa.String(8))
    address: Mapped[str] = mapped_column(doc="host:port of the neighbour's CellLink endpoint")
    tls_identity: Mapped[str | None]
    weight_offset: Mapped[float] = mapped_column(default=0.0)
    weight_scale: Mapped[float] = mapped_column(default=1.0)
    disabled: Mapped[bool] = mapped_column(default=False)
    capabilities: Mapped[dict[str, list[str]]] = mapped_column(sa.JSON, default=dict)
    capacities: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    last_seen: Mapped[datetime | None]
    link_state: Mapped[str] = mapped_column(sa.String(16), default="down")
    mute: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Instance(Base):
    """A virtual machine living in this cell or somewhere below it.

    ``cell_path`` says where (``root!region!cell``); ``version`` grows with every
    change so that a parent keeps only the newest copy it is told about. Deleted
    instances stay as rows with ``deleted`` set.
    """

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    uuid: Mapped[str] = mapped_column(sa.String(36), unique=True)
    name: Mapped[str]
    project_id: Mapped[str] = mapped_column(index=True)
    user_id: Mapped[str]
    flavor_id: Mapped[str]
    flavor: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    image_id: Mapped[str]
    vm_state: Mapped[str]
    task_state: Mapped[str | None]
    power_state: Mapped[int] = mapped_column(default=0)
    host: Mapped[str | None]
    node: Mapped[str | None]
    availability_zone: Mapped[str | None]
    cell_path: Mapped[str] = mapped_column(sa.String(1024), index=True)
    version: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", sa.JSON, default=dict)
    idempotency_key: Mapped[str | None]
    server_group: Mapped[str | None] = mapped_column(index=True)
    addresses: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON, default=list)
    launched_at: Mapped[datetime | None]
    terminated_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # Not indexed: nearly every row has the same value, and on SQLite (no statistics)
    # an index here wins over the uuid index in ``uuid IN (...) AND NOT deleted``,
    # turning every look-up of a few instances into a scan of all live ones.
    deleted: Mapped[bool] = mapped_column(default=False)
    deleted_at: Mapped[datetime | None]


class InstanceFault(Base):
    """Why an instance went to ERROR: the last failures recorded against it."""

    __tablename__ = "instance_faults"

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_uuid: Mapped[str] = mapped_column(sa.String(36), index=True)
    code: Mapped[int]
    message: Mapped[str]
    details: Mapped[str | None] = mapped_column(sa.Text)
    host: Mapped[str | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    @validates("message")
    def _fit_message(self, key: str, value: str) -> str:
        # As Nova does, keep the start of a long message: PostgreSQL refuses what
        # does not fit the column (SQLite would have stored it whole).
        return value[:FAULT_MESSAGE_LENGTH] if value else value


class InstanceAction(Base):
    """One user request against an instance (create, reboot, delete...), for auditing."""

    __tablename__ = "instance_actions"

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[str]
    instance_uuid: Mapped[str] = mapped_column(sa.String(36), index=True)
    action: Mapped[str]
    project_id: Mapped[str]
    user_id: Mapped[str]
    start_time: Mapped[datetime] = mapped_column(default=utcnow)
    finish_time: Mapped[datetime | None]
    message: Mapped[str | None]

    events: Mapped[list[InstanceActionEvent]] = relationship(
        back_populates="action",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="InstanceActionEvent.id",
    )


class InstanceActionEvent(Base):
    """A step of an action as some service in some cell carried it out."""

    __tablename__ = "instance_action_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    action_id: Mapped[int] = mapped_column(
        sa.ForeignKey("instance_actions.id", ondelete="CASCADE"), index=True
    )
    event: Mapped[str]
    start_time: Mapped[datetime] = mapped_column(default=utcnow)
    finish_time: Mapped[datetime | None]
    result: Mapped[str | None]
    details: Mapped[str | None] = mapped_column(sa.Text)
    host: Mapped[str | None]

    action: Mapped[InstanceAction] = relationship(back_populates="events")


class Flavor(Base):
    """A size of virtual machine that users may ask for."""

    __tablename__ = "flavors"

    id: Mapped[int] = mapped_column(primary_key=True)
    flavor_id: Mapped[str] = mapped_column(unique=True)
    name: Mapped[str] = mapped_column(unique=True)
    vcpus: Mapped[int]
    memory_mb: Mapped[int]
    root_gb: Mapped[int]
    ephemeral_gb: Mapped[int] = mapped_column(default=0)
    disabled: Mapped[bool] = mapped_column(default=False)
    is_public: Mapped[bool] = mapped_column(default=True)
    extra_specs: Mapped[dict[str, str]] = mapped_column(sa.JSON, default=dict)


class Image(Base):
    """A disk image instances boot from."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(primary_key=True)
    uuid: Mapped[str] = mapped_column(sa.String(36), unique=True)
    name: Mapped[str]
    status: Mapped[str] = mapped_column(sa.String(32))
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    min_ram_mb: Mapped[int] = mapped_column(default=0)
    min_disk_gb: Mapped[int] = mapped_column(default=0)
    properties: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    owner: Mapped[str | None] = mapped_column(doc="the owning project; None for a public image")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ComputeNode(Base):
    """A hypervisor host of this cell: its size, what is used, and how far to overcommit."""

    __tablename__ = "compute_nodes"

    id: Mapped[int] = mapped_column(primary_key=True)
    host: Mapped[str] = mapped_column(unique=True)
    hypervisor_type: Mapped[str] = mapped_column(sa.String(64))
    availability_zone: Mapped[str | None]
    vcpus: Mapped[int]
    memory_mb: Mapped[int]
    local_gb: Mapped[int]
    vcpus_used: Mapped[int] = mapped_column(default=0)
    memory_mb_used: Mapped[int] = mapped_column(default=0)
    local_gb_used: Mapped[int] = mapped_column(default=0)
    running_vms: Mapped[int] = mapped_column(default=0)
    cpu_allocation_ratio: Mapped[float] = mapped_column(default=16.0)
    ram_allocation_ratio: Mapped[float] = mapped_column(default=1.5)
    disk_allocation_ratio: Mapped[float] = mapped_column(default=1.0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class PendingClaim(Base):
    """Resources the host scheduler claimed on ``host`` for instances not created yet.

    Written in the claim's transaction, deleted in the transaction that creates the
    instances (their usage then belongs to them). A row still here after
    ``expires_at`` belongs to a build that never created its instances (its caller
    stopped waiting, or died): its resources are given back (see
    :func:`cellplane.scheduling.claims.sweep_expired`).
    """

    __tablename__ = "pending_claims"
    # One row per host of a claim: a request delivered twice cannot claim twice.
    __table_args__ = (sa.UniqueConstraint("claim_id", "host"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    claim_id: Mapped[str] = mapped_column(sa.String(64))
    host: Mapped[str]
    count: Mapped[int]
    vcpus: Mapped[int]  # each instance's; the claim took ``count`` times these
    memory_mb: Mapped[int]
    disk_gb: Mapped[int]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Service(Base):
    """A running service of this cell (compute, scheduler, network, cells, api), with heartbeat."""

    __tablename__ = "services"
    __table_args__ = (sa.UniqueConstraint("host", "role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    host: Mapped[str]
    role: Mapped[str] = mapped_column(sa.String(32))
    disabled: Mapped[bool] = mapped_column(default=False)
    disabled_reason: Mapped[str | None]
    forced_down: Mapped[bool] = mapped_column(default=False)
    report_count: Mapped[int] = mapped_column(default=0)
    last_heartbeat: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IpAllocation(Base):
    """An address of a pool; held by an instance while ``instance_uuid`` is set."""

    __tablename__ = "ip_allocations"
    __table_args__ = (
        sa.UniqueConstraint("pool", "address"),
        # The pool's newest row, where the next allocation appends, in one look-up.
        sa.Index("ix_ip_allocations_pool_id", "pool", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    pool: Mapped[str]
    address: Mapped[str] = mapped_column(sa.String(45))
    instance_uuid: Mapped[str | None] = mapped_column(sa.String(36), index=True)
    allocated_at: Mapped[datetime | None]


class OutboxEntry(Base):
    """A push to the parent cell, written in the same transaction as the change it reports.

    The link drains the outbox in ``id`` order and deletes rows the parent has
    acknowledged, so nothing is lost when the link or the process goes down.
    """

    __tablename__ = "outbox"
    # Ids are never reused (SQLite AUTOINCREMENT): a parent drops pushes by id as duplicates.
    __table_args__ = {"sqlite_autoincrement": True}

    # SQLite only autoincrements an INTEGER PRIMARY KEY.
    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    peer: Mapped[str] = mapped_column(sa.String(63), index=True)
    kind: Mapped[str] = mapped_column(sa.String(64))
    instance_uuid: Mapped[str | None] = mapped_column(sa.String(36))
    version: Mapped[int | None] = mapped_column(sa.BigInteger)
    payload: Mapped[bytes] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CreateRequest(Base):
    """A create call with an idempotency key: a retry returns these instances."""

    __tablename__ = "create_requests"
    __table_args__ = (sa.UniqueConstraint("project_id", "idempotency_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[str]
    idempotency_key: Mapped[str]
    request_id: Mapped[str] = mapped_column(sa.String(64))
    instance_uuids: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class InstanceChange(Base):
    """The API cell's change log: one row per applied instance change, in order.

    ``revision`` is what WatchInstances resumes from.
    """

    __tablename__ = "instance_changes"
    # Revisions are never reused (SQLite AUTOINCREMENT): watchers resume from them.
    __table_args__ = {"sqlite_autoincrement": True}

    revision: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    instance_uuid: Mapped[str] = mapped_column(sa.String(36))
    project_id: Mapped[str]
    kind: Mapped[str] = mapped_column(sa.String(16))
    version: Mapped[int] = mapped_column(sa.BigInteger)
    # The instance as it was at this revision (a serialized cellplane.v1.Instance).
    snapshot: Mapped[bytes] = mapped_column(sa.LargeBinary, default=b"")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LinkCursor(Base):
    """How far this cell has handled the envelopes of one peer's process.

    A new ``epoch`` means the peer restarted and its sequence numbers begin again.
    """

    __tablename__ = "link_cursors"

    peer: Mapped[str] = mapped_column(sa.String(63), primary_key=True)
    epoch: Mapped[str] = mapped_column(sa.String(64))
    last_seq: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
