"""The real stack: Postgres (a fresh database per run), Redis, uvicorn and Celery worker subprocesses.

Skips with a reason when Postgres or Redis is missing, except with CI=true, where it fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.db.engine import make_engine, upgrade
from api.db.repository import Repository
from api.processes import wait_healthy
from tests.support import (
    fresh_postgres_database,
    fresh_redis_database,
    poll,
    postgres_available,
    redis_available,
    require,
)

ROOT = Path(__file__).resolve().parents[2]
KEY = {"X-API-Key": "integration"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    require(postgres_available(), "PostgreSQL at 127.0.0.1:5432")
    with fresh_postgres_database("ddsm_it") as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database of its own for this run (other runs may share the server), empty."""
    require(redis_available(), "Redis at 127.0.0.1:6379")
    with fresh_redis_database() as url:
        yield url


@pytest.fixture(scope="session")
def repo(pg_url: str) -> Iterator[Repository]:
    engine = make_engine(pg_url)
    yield Repository(engine)
    engine.dispose()


@dataclass
class Stack:
    url: str
    env: dict[str, str]
    logs: Path
    api: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=KEY, timeout=30)

    def start_worker(self, n: int, **env: str) -> subprocess.Popen[bytes]:
        """A worker subprocess; ``env`` overrides variables of the stack's environment."""
        cmd = [
            sys.executable,
            "-m",
            "api.cli",
            "worker",
            "--queues",
            "eval,train",
            "--name",
            f"w{n}-{os.getpid()}@%h",
        ]
        out = open(self.logs / f"worker{n}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(cmd, env={**self.env, **env}, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.workers.append(proc)
        return proc

    def restart_api(self) -> None:
        """SIGKILL the API process (controller included) and start a new one on the same port."""
        self.api.kill()
        self.api.wait()
        port = self.url.rsplit(":", 1)[1]
        cmd = [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--port", port,
               "--log-level", "warning"]  # fmt: skip
        out = open(self.logs / "api2.log", "ab")  # noqa: SIM115
        self.api = subprocess.Popen(cmd, env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        wait_healthy(self.url, timeout=60, proc=self.api)

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 120.0) -> Any:
        value = poll(check, timeout)
        if value:
            return value
        tails = {p.name: p.read_text()[-2000:] for p in self.logs.glob("*.log")}
        raise AssertionError(f"timed out waiting for {what}; logs: {tails}")

    def wait_status(self, http: httpx.Client, path: str, timeout: float = 240) -> dict[str, Any]:
        """GET ``path`` until its ``status`` is COMPLETE (returned); FAILED or CANCELLED fails at once."""

        def check() -> dict[str, Any] | None:
            row = http.get(path).json()
            assert row["status"] not in ("FAILED", "CANCELLED"), row.get("error")
            return row if row["status"] == "COMPLETE" else None

        return self.wait_for(f"{path} to complete", check, timeout=timeout)


@pytest.fixture
def stack_factory(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def start(n_workers: int = 2, **settings: str) -> Stack:
        env = {
            **os.environ,
            "DATABASE_URL": pg_url,
            "CELERY_BROKER_URL": redis_url,
            "ARTIFACT_STORE": str(tmp_path / "artifacts"),
            "DDSM_HOME": str(tmp_path / "home"),
            "DDSM_API_KEY": KEY["X-API-Key"],
            "DDSM_CONTROLLER_INTERVAL_S": "0.2",
            "DDSM_HEARTBEAT_INTERVAL_S": "0.5",
            "DDSM_STALE_AFTER_S": "4",
            "DDSM_LEASE_TTL_S": "3",
            "PYTHONPATH": str(ROOT),
            **{f"DDSM_{k.upper()}": str(v) for k, v in settings.items()},
        }
        env.pop("CI", None)
        port = free_port()
        logs = tmp_path / "logs"
        logs.mkdir(exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "api.app:create_app",
            "--factory",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        out = open(logs / "api.log", "ab")  # noqa: SIM115
        api = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        stack = Stack(f"http://127.0.0.1:{port}", env, logs, api)
        stacks.append(stack)
        wait_healthy(stack.url, timeout=60, proc=api)
        for n in range(n_workers):
            stack.start_worker(n)
        return stack

    yield start
    for stack in stacks:
        for proc in [stack.api, *stack.workers]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [stack.api, *stack.workers]:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
