"""The first schema of a cell database.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _string(name: str, length: int = 255, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.String(length=length), nullable=nullable)


def _integer(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.Integer(), nullable=False)


def _flag(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.Boolean(), nullable=False)


def _json(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.JSON(), nullable=False)


def _id() -> sa.Column[Any]:
    return sa.Column("id", sa.Integer(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "cells",
        _id(),
        _string("name", 63),
        _string("relation", 8),
        _string("address"),
        _string("tls_identity", nullable=True),
        sa.Column("weight_offset", sa.Double(), nullable=False),
        sa.Column("weight_scale", sa.Double(), nullable=False),
        _flag("disabled"),
        _json("capabilities"),
        _json("capacities"),
        _timestamp("last_seen", nullable=True),
        _string("link_state", 16),
        _flag("mute"),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.CheckConstraint("relation IN ('parent', 'child')", name=op.f("ck_cells_relation")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cells")),
        sa.UniqueConstraint("name", name=op.f("uq_cells_name")),
    )

    op.create_table(
        "instances",
        _id(),
        _string("uuid", 36),
        _string("name"),
        _string("project_id"),
        _string("user_id"),
        _string("flavor_id"),
        _json("flavor"),
        _string("image_id"),
        _string("vm_state"),
        _string("task_state", nullable=True),
        _integer("power_state"),
        _string("host", nullable=True),
        _string("node", nullable=True),
        _string("availability_zone", nullable=True),
        _string("cell_path", 1024),
        sa.Column("version", sa.BigInteger(), nullable=False),
        _json("metadata"),
        _string("idempotency_key", nullable=True),
        _string("server_group", nullable=True),
        _json("addresses"),
        _timestamp("launched_at", nullable=True),
        _timestamp("terminated_at", nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        _flag("deleted"),
        _timestamp("deleted_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instances")),
        sa.UniqueConstraint("uuid", name=op.f("uq_instances_uuid")),
    )
    op.create_index(op.f("ix_instances_server_group"), "instances", ["server_group"])
    op.create_index(op.f("ix_instances_cell_path"), "instances", ["cell_path"])
    op.create_index(op.f("ix_instances_deleted"), "instances", ["deleted"])
    op.create_index(op.f("ix_instances_project_id"), "instances", ["project_id"])

    op.create_table(
        "instance_faults",
        _id(),
        _string("instance_uuid", 36),
        _integer("code"),
        _string("message"),
        sa.Column("details", sa.Text(), nullable=True),
        _string("host", nullable=True),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instance_faults")),
    )
    op.create_index(op.f("ix_instance_faults_instance_uuid"), "instance_faults", ["instance_uuid"])

    op.create_table(
        "instance_actions",
        _id(),
        _string("request_id"),
        _string("instance_uuid", 36),
        _string("action"),
        _string("project_id"),
        _string("user_id"),
        _timestamp("start_time"),
        _timestamp("finish_time", nullable=True),
        _string("message", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instance_actions")),
    )
    op.create_index(
        op.f("ix_instance_actions_instance_uuid"), "instance_actions", ["instance_uuid"]
    )

    op.create_table(
        "instance_action_events",
        _id(),
        _integer("action_id"),
        _string("event"),
        _timestamp("start_time"),
        _timestamp("finish_time", nullable=True),
        _string("result", nullable=True),
        sa.Column("details", sa.Text(), nullable=True),
        _string("host", nullable=True),
        sa.ForeignKeyConstraint(
            ["action_id"],
            ["instance_actions.id"],
            name=op.f("fk_instance_action_events_action_id_instance_actions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instance_action_events")),
    )
    op.create_index(
        op.f("ix_instance_action_events_action_id"), "instance_action_events", ["action_id"]
    )

    op.create_table(
        "flavors",
        _id(),
        _string("flavor_id"),
        _string("name"),
        _integer("vcpus"),
        _integer("memory_mb"),
        _integer("root_gb"),
        _integer("ephemeral_gb"),
        _flag("disabled"),
        _flag("is_public"),
        _json("extra_specs"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flavors")),
        sa.UniqueConstraint("flavor_id", name=op.f("uq_flavors_flavor_id")),
        sa.UniqueConstraint("name", name=op.f("uq_flavors_name")),
    )

    op.create_table(
        "images",
        _id(),
        _string("uuid", 36),
        _string("name"),
        _string("status", 32),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        _integer("min_ram_mb"),
        _integer("min_disk_gb"),
        _json("properties"),
        _string("owner", nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint("uuid", name=op.f("uq_images_uuid")),
    )

    op.create_table(
        "compute_nodes",
        _id(),
        _string("host"),
        _string("hypervisor_type", 64),
        _string("availability_zone", nullable=True),
        _integer("vcpus"),
        _integer("memory_mb"),
        _integer("local_gb"),
        _integer("vcpus_used"),
        _integer("memory_mb_used"),
        _integer("local_gb_used"),
        _integer("running_vms"),
        sa.Column("cpu_allocation_ratio", sa.Double(), nullable=False),
        sa.Column("ram_allocation_ratio", sa.Double(), nullable=False),
        sa.Column("disk_allocation_ratio", sa.Double(), nullable=False),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_compute_nodes")),
        sa.UniqueConstraint("host", name=op.f("uq_compute_nodes_host")),
    )

    op.create_table(
        "services",
        _id(),
        _string("host"),
        _string("role", 32),
        _flag("disabled"),
        _string("disabled_reason", nullable=True),
        _flag("forced_down"),
        _integer("report_count"),
        _timestamp("last_heartbeat", nullable=True),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_services")),
        sa.UniqueConstraint("host", "role", name=op.f("uq_services_host_role")),
    )

    op.create_table(
        "ip_allocations",
        _id(),
        _string("pool"),
        _string("address", 45),
        _string("instance_uuid", 36, nullable=True),
        _timestamp("allocated_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ip_allocations")),
        sa.UniqueConstraint("pool", "address", name=op.f("uq_ip_allocations_pool_address")),
    )
    op.create_index(op.f("ix_ip_allocations_instance_uuid"), "ip_allocations", ["instance_uuid"])

    op.create_table(
        "outbox",
        # SQLite only autoincrements an INTEGER PRIMARY KEY.
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        _string("peer", 63),
        _string("kind", 64),
        _string("instance_uuid", 36, nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_outbox_peer"), "outbox", ["peer"])

    op.create_table(
        "link_cursors",
        _string("peer", 63),
        _string("epoch", 64),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("peer", name=op.f("pk_link_cursors")),
    )

    op.create_table(
        "create_requests",
        _id(),
        _string("project_id"),
        _string("idempotency_key"),
        _string("request_id", 64),
        _json("instance_uuids"),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_create_requests")),
        sa.UniqueConstraint(
            "project_id",
            "idempotency_key",
            name=op.f("uq_create_requests_project_id_idempotency_key"),
        ),
    )

    op.create_table(
        "instance_changes",
        sa.Column(
            "revision",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        _string("instance_uuid", 36),
        _string("project_id"),
        _string("kind", 16),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("snapshot", sa.LargeBinary(), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("revision", name=op.f("pk_instance_changes")),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    # Children before parents; dropping a table drops its indexes.
    for table in (
        "instance_changes",
        "create_requests",
        "link_cursors",
        "outbox",
        "ip_allocations",
        "services",
        "compute_nodes",
        "images",
        "flavors",
        "instance_action_events",
        "instance_actions",
        "instance_faults",
        "instances",
        "cells",
    ):
        op.drop_table(table)
