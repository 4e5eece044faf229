"""latency tables measured by workers, and the table a search predicts its latency with

Revision ID: 0005
Revises: 0004

(Planned as 0003 on 0002; 0004 landed on 0002 first, so this one follows it: a database already at
0004 upgrades to it without a branch.)
Create Date: 2026-11-26 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "latency_tables",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "supernet_id", sa.Integer(), sa.ForeignKey("supernets.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "status",
            sa.Enum(
                "PENDING",
                "RUNNING",
                "FINISHING",
                "COMPLETE",
                "FAILED",
                "CANCELLED",
                "INTERRUPTED",
                name="latency_status",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),  # fmt: skip
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("batch_sizes", sa.JSON(), nullable=False),
        sa.Column("repeats", sa.Integer(), nullable=False),
        sa.Column("warmup", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(200), nullable=True),
        sa.Column("threads", sa.Integer(), nullable=True),
        sa.Column("table", sa.JSON(), nullable=True),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_latency_tables_supernet_id", "latency_tables", ["supernet_id"])
    op.create_index("ix_latency_tables_device", "latency_tables", ["device"])
    # nullable: searches made before (and GFLOPs-only searches) have no table
    with op.batch_alter_table("searches") as batch:
        batch.add_column(sa.Column("latency_table_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_searches_latency_table_id", "latency_tables", ["latency_table_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("searches") as batch:
        batch.drop_constraint("fk_searches_latency_table_id", type_="foreignkey")
        batch.drop_column("latency_table_id")
    op.drop_index("ix_latency_tables_device", "latency_tables")
    op.drop_index("ix_latency_tables_supernet_id", "latency_tables")
    op.drop_table("latency_tables")
