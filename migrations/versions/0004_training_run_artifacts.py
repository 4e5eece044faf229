"""training runs record their loss log and sample grids (artifact ids)

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-26 14:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
# 0003 (p3-lat) is merged separately: whoever merges both chains this one after it
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable: runs trained before the worker uploaded its log and grids have none
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(sa.Column("artifacts", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("artifacts")
