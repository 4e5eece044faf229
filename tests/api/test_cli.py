from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from sqlalchemy import inspect
from typer.testing import CliRunner

from api.cli import app
from api.db.engine import make_engine

CORE_COMMANDS = {"flops", "train", "sample", "ref-stats", "eval", "search", "strategy", "compare", "latency"}
SERVICE_COMMANDS = {"up", "serve", "migrate", "demo", "worker"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    deployment = ("DATABASE_URL", "CELERY_BROKER_URL", "ARTIFACT_STORE")
    env = {k: v for k, v in os.environ.items() if k not in deployment}  # the embedded default
    cmd = [sys.executable, "-m", "api.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def listed_commands(help_text: str) -> set[str]:
    """The names in the help's command list (rich's boxed table or click's plain one); a wrapped
    description line is indented further, so it never reads as a name."""
    return set(re.findall(r"^(?:│ |  )([a-z][a-z-]*)(?= {2,}\S)", help_text, flags=re.MULTILINE))


def test_ddsm_composes_exactly_the_core_and_the_service_commands() -> None:
    assert set(typer.main.get_command(app).commands) == CORE_COMMANDS | SERVICE_COMMANDS  # type: ignore[attr-defined]
    out = run("--help")
    assert out.returncode == 0, out.stderr
    assert listed_commands(out.stdout) == CORE_COMMANDS | SERVICE_COMMANDS


@pytest.mark.parametrize("command", sorted(SERVICE_COMMANDS))
def test_each_service_command_runs_under_its_own_name(command: str) -> None:
    reply = CliRunner().invoke(app, [command, "--help"])
    assert reply.exit_code == 0, reply.output
    assert re.search(rf"Usage: ddsm {command} \[OPTIONS\]", reply.output), reply.output


def test_migrate_creates_the_embedded_database(tmp_path: Path) -> None:
    out = run("migrate", "--home", str(tmp_path))
    assert out.returncode == 0, out.stderr
    engine = make_engine(f"sqlite:///{tmp_path / 'ddsm.sqlite'}")
    assert "candidates" in inspect(engine).get_table_names()
    engine.dispose()
