"""reference statistics record their real-data floors

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable: statistics registered before floors existed (or without a held-out split) have none
    with op.batch_alter_table("reference_stats") as batch:
        batch.add_column(sa.Column("floors", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reference_stats") as batch:
        batch.drop_column("floors")
