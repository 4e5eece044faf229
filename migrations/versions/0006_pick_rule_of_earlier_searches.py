"""searches made before the tolerance pick rule keep the weighted pick they were started with

Revision ID: 0006
Revises: 0005

A search's settings are its ``config`` (``ddsm_core.spec.SearchSpec``); a setting left out takes the
spec's default, and the default pick rule is now ``tolerance``. A search created earlier, still running
or resumed later, must finish as it was asked: ``pick_rule: weighted`` is written into every stored
config that has none. Data only; the schema is unchanged.
Create Date: 2026-11-26 17:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

searches = sa.table("searches", sa.column("id", sa.Integer()), sa.column("config", sa.JSON()))


def upgrade() -> None:
    conn = op.get_bind()
    for row in conn.execute(sa.select(searches.c.id, searches.c.config)).all():
        config = dict(row.config or {})
        if "pick_rule" not in config:
            config["pick_rule"] = "weighted"
            conn.execute(searches.update().where(searches.c.id == row.id).values(config=config))


def downgrade() -> None:
    # 0005's code knows no pick rule: the key goes (a search made with the tolerance rule would then
    # finish with the weighted pick, the only rule that code has)
    conn = op.get_bind()
    for row in conn.execute(sa.select(searches.c.id, searches.c.config)).all():
        config = dict(row.config or {})
        kept = {k: v for k, v in config.items() if k not in ("pick_rule", "tolerance")}
        if kept != config:
            conn.execute(searches.update().where(searches.c.id == row.id).values(config=kept))
