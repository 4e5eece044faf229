"""The SQLAlchemy models and the Alembic migrations describe the same schema, on both backends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData

from api.db.engine import make_engine, upgrade
from api.db.models import Base


def schema_diff(url: str, metadata: MetaData) -> list[Any]:
    """What ``alembic revision --autogenerate`` would write for the database at ``url``."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def test_a_freshly_upgraded_database_matches_the_models(db_url: str) -> None:
    upgrade(db_url)
    assert schema_diff(db_url, Base.metadata) == []


def test_a_model_change_without_a_migration_is_seen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.sqlite'}"
    upgrade(url)
    changed = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["candidates"].append_column(Column("priority", Integer, nullable=True))
    diff = schema_diff(url, changed)
    assert [(op[0], op[2], op[3].name) for op in diff] == [("add_column", "candidates", "priority")]
