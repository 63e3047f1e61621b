"""Indexes that keep the hot look-ups off full scans.

``instances.deleted`` loses its index: nearly every row has the same value, and
SQLite (which keeps no statistics) chose it over the uuid index for
``uuid IN (...) AND NOT deleted``, scanning every live instance of the cell on
each look-up of a few. ``ip_allocations`` gains ``(pool, id)``, so the pool's
newest row (where the next allocation appends) is one index probe instead of a
read and sort of the whole pool.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_instances_deleted", table_name="instances")
    op.create_index("ix_ip_allocations_pool_id", "ip_allocations", ["pool", "id"])


def downgrade() -> None:
    op.drop_index("ix_ip_allocations_pool_id", table_name="ip_allocations")
    op.create_index("ix_instances_deleted", "instances", ["deleted"])
