from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.db.engine import make_engine, upgrade
from api.db.repository import Repository
from tests.factories import Outbox
from tests.support import fresh_postgres_database, local_settings, postgres_available, require


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


@pytest.fixture
def outbox() -> Outbox:
    """What the controller and the routes send to the workers, kept (nothing runs them)."""
    return Outbox()


@pytest.fixture
def client(tmp_path: Path, outbox: Outbox) -> Iterator[TestClient]:
    """The in-process app on its own SQLite database, key ``secret``, no controller loop."""
    settings = local_settings(tmp_path / "home", api_key="secret", run_controller=False)
    with TestClient(create_app(settings, dispatcher=outbox)) as c:  # type: ignore[arg-type]
        yield c


@pytest.fixture
def db_client(db_url: str, tmp_path: Path, outbox: Outbox) -> Iterator[TestClient]:
    """``client`` on each backend of ``db_url`` (SQLite, and Postgres where it runs)."""
    upgrade(db_url)
    settings = local_settings(tmp_path / "home", database_url=db_url, api_key="secret", run_controller=False)
    with TestClient(create_app(settings, dispatcher=outbox)) as c:  # type: ignore[arg-type]
        yield c
