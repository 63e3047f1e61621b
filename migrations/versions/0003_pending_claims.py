"""Claims the host scheduler made for instances not created yet.

A build claims hosts in one transaction and creates its instances in another.
If the instances never come (the caller stopped waiting for the scheduler, or
its process died in between), the claim used to stay counted for good. Each
claim now leaves a ``pending_claims`` row that the creating transaction
deletes; rows left after their expiry are given back.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pending_claims",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("claim_id", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("disk_gb", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_claims")),
        sa.UniqueConstraint("claim_id", "host", name=op.f("uq_pending_claims_claim_id_host")),
    )
    op.create_index("ix_pending_claims_expires_at", "pending_claims", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_pending_claims_expires_at", table_name="pending_claims")
    op.drop_table("pending_claims")
