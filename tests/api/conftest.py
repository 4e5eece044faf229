from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from api.db.engine import make_engine, upgrade
from api.db.repository import Repository
from tests.support import fresh_postgres_database, postgres_available, require


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same tests run against both backends (Postgres skipped when absent, unless CI=true)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.sqlite'}"
        return
    require(postgres_available(), "PostgreSQL at 127.0.0.1:5432")
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture
def repo(db_url: str) -> Iterator[Repository]:
    upgrade(db_url)
    engine = make_engine(db_url)
    yield Repository(engine)
    engine.dispose()
