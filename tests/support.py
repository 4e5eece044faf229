"""Test support: which services are reachable, fresh Postgres databases (used by the tests and bench/),
the settings of an in-process app, the ``ddsm`` commands run in-process, waiting for a condition."""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import pytest

    from api.settings import Settings

T = TypeVar("T")

POSTGRES_ADMIN_URL = os.environ.get(
    "DDSM_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("DDSM_TEST_REDIS", "redis://127.0.0.1:6379")
KEY = {"X-API-Key": "secret"}
"""The header of the API key that the apps of :func:`local_settings` are given (``api_key="secret"``)."""


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def postgres_available() -> bool:
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 2})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


def redis_available() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except Exception:
        return False


def require(available: bool, what: str) -> None:
    """Skip with a reason when a service is missing, but fail when CI=true (CI must run everything)."""
    import pytest

    if available:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is not reachable and CI=true: integration tests must run in CI")
    pytest.skip(f"{what} is not reachable (start it, or set CI=true to make this a failure)")


@contextmanager
def fresh_postgres_database(prefix: str = "ddsm_test") -> Iterator[str]:
    """Create a uniquely named Postgres database, yield its URL, drop it afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


REDIS_OWNER_KEY = "ddsm-test-run"


@contextmanager
def fresh_redis_database(hold_s: int = 4 * 3600) -> Iterator[str]:
    """A Redis database (1-15) that no other test run holds, emptied; yields its URL.

    Several test runs may share one Redis: each claims its database with SET NX (expiring after
    ``hold_s`` in case a run dies) and empties it when done, which also gives the claim back.
    """
    import redis

    token = uuid.uuid4().hex
    clients = {db: redis.Redis.from_url(f"{REDIS_URL}/{db}") for db in random.sample(range(1, 16), 15)}
    # empty ones first: a run that does not claim (an older checkout) still leaves its queues there
    for db, client in sorted(clients.items(), key=lambda item: item[1].dbsize() > 0):
        url = f"{REDIS_URL}/{db}"
        if client.set(REDIS_OWNER_KEY, token, nx=True, ex=hold_s):
            break
    else:
        raise RuntimeError("every Redis database 1-15 is held by another test run")
    try:
        empty_redis_database(url)  # what a run that died left
        yield url
    finally:
        client.flushdb()


def empty_redis_database(url: str) -> None:
    """Delete every key but the claim of :func:`fresh_redis_database`."""
    import redis

    client = redis.Redis.from_url(url)
    for key in client.scan_iter():
        if key != REDIS_OWNER_KEY.encode():
            client.delete(key)


def local_settings(home: Path, **kw: Any) -> Settings:
    """Settings of an in-process app in ``home``: its SQLite database, artifact store and broker there
    unless ``kw`` says otherwise, whatever DATABASE_URL etc. the environment holds."""
    from api.settings import Settings

    values: dict[str, Any] = {
        "database_url": f"sqlite:///{home}/ddsm.sqlite",
        "artifact_store": str(home / "artifacts"),
        "celery_broker_url": f"sqla+sqlite:///{home}/broker.sqlite",
        **kw,
    }
    return Settings(home=home, **values)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``ddsm argv`` in this process: its exit status, stdout and stderr."""
    from ddsm_core.cli import app, run_app

    code = run_app(app, argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def poll(check: Callable[[], T], timeout: float, interval: float = 0.2) -> T | None:
    """Call ``check`` until it returns something true (returned) or ``timeout`` seconds pass (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    return None
