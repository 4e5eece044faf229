"""searches made before held-out finalist seeds keep measuring their finalists on the search's seeds

Revision ID: 0007
Revises: 0006

A search's settings are its ``config`` (``ddsm_core.spec.SearchSpec``); a setting left out takes the
spec's default. ``final_seed`` left out now means the first seed after the search's (``eval_seed +
n_images``): the finalists' verdict on held-out images. A search created earlier measured its
finalists from ``eval_seed``, on the images it ranked on; still running or resumed later, it must
finish as it was started, or its finalist rows would mix the two seed sets: ``final_seed: eval_seed``
is written into every stored config that has none (``eval_seed`` itself, or its default 0). Data
only; the schema is unchanged.
Create Date: 2026-11-26 23:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

searches = sa.table("searches", sa.column("id", sa.Integer()), sa.column("config", sa.JSON()))


def upgrade() -> None:
    conn = op.get_bind()
    for row in conn.execute(sa.select(searches.c.id, searches.c.config)).all():
        config = dict(row.config or {})
        if "final_seed" not in config:
            config["final_seed"] = config.get("eval_seed", 0)  # (0: the spec's eval_seed default)
            conn.execute(searches.update().where(searches.c.id == row.id).values(config=config))


def downgrade() -> None:
    # 0006's code knows no final_seed and measures every finalist from eval_seed: the key goes (a search
    # made with held-out seeds would then finish on the search's seeds, the only ones that code has)
    conn = op.get_bind()
    for row in conn.execute(sa.select(searches.c.id, searches.c.config)).all():
        config = dict(row.config or {})
        if "final_seed" in config:
            kept = {k: v for k, v in config.items() if k != "final_seed"}
            conn.execute(searches.update().where(searches.c.id == row.id).values(config=kept))
