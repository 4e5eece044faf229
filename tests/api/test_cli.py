from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import inspect

from api.db.engine import make_engine


def run(*args: str) -> subprocess.CompletedProcess[str]:
    deployment = ("DATABASE_URL", "CELERY_BROKER_URL", "ARTIFACT_STORE")
    env = {k: v for k, v in os.environ.items() if k not in deployment}  # the embedded default
    cmd = [sys.executable, "-m", "api.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def test_ddsm_has_the_service_commands() -> None:
    out = run("--help")
    assert out.returncode == 0, out.stderr
    for command in ("up", "serve", "worker", "migrate", "demo"):
        assert command in out.stdout


def test_migrate_creates_the_embedded_database(tmp_path: Path) -> None:
    out = run("migrate", "--home", str(tmp_path))
    assert out.returncode == 0, out.stderr
    engine = make_engine(f"sqlite:///{tmp_path / 'ddsm.sqlite'}")
    assert "candidates" in inspect(engine).get_table_names()
    engine.dispose()
