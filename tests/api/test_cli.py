from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer.main
from sqlalchemy import inspect
from typer.testing import CliRunner

from api.cli import app
from api.db.engine import make_engine

CORE_COMMANDS = {"flops", "train", "sample", "ref-stats", "eval", "search", "strategy", "compare", "latency"}
SERVICE_COMMANDS = {"up", "serve", "migrate", "demo", "worker"}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    deployment = ("DATABASE_URL", "CELERY_BROKER_URL", "ARTIFACT_STORE")
    base = {k: v for k, v in os.environ.items() if k not in deployment}  # the embedded default
    cmd = [sys.executable, "-m", "api.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**base, **(env or {})})


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


def test_demo_with_a_missing_checkpoint_fails_before_starting_the_service(tmp_path: Path) -> None:
    home, out = tmp_path / "home", tmp_path / "report"
    started = time.monotonic()
    res = run("demo", "--checkpoint", "/nope", "--home", str(home), "--out", str(out))
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "checkpoint '/nope' not found" in res.stderr
    assert res.stdout == "" and not home.exists() and not out.exists()  # nothing started, nothing written
    assert time.monotonic() - started < 60


def test_demo_refuses_settings_the_api_would_refuse_before_starting(tmp_path: Path) -> None:
    home = tmp_path / "home"
    res = run("demo", "--steps", "1", "--home", str(home), "--out", str(tmp_path / "r"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--steps must be" in res.stderr, res.stderr
    assert not home.exists()
    res = run("demo", "--images", "1", "--home", str(home), "--out", str(tmp_path / "r"))
    assert res.returncode == 2 and "--images must be in [2, " in res.stderr, res.stderr


def test_demo_help_is_clean() -> None:
    from ddsm_core.spec import SAMPLER_HELP

    res = subprocess.run(
        [sys.executable, "-m", "api.cli", "demo", "--help"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert res.returncode == 0 and "<bool>" not in res.stdout
    assert " ".join(SAMPLER_HELP.split()) in " ".join(res.stdout.split())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["worker", "--queues", "eval,gpu"], "--queues takes eval, train (comma-separated), got 'eval,gpu'"),
        (["worker", "--concurrency", "0"], "--concurrency must be >= 1, got 0"),
        (["worker", "--pool", "threads"], "--pool must be solo or prefork"),
        (["serve", "--port", "99999"], "--port must be in [0, 65535], got 99999"),
        (["up", "--workers", "-1"], "--workers must be >= 0, got -1"),
        (["up", "--port", "-5"], "--port must be in [0, 65535]"),
        (["demo", "--url", "http://127.0.0.1:9"], "cannot reach the service at http://127.0.0.1:9"),
    ],
)
def test_service_commands_refuse_bad_input_in_one_line_before_starting(
    argv: list[str], message: str, tmp_path: Path
) -> None:
    result = run(*argv, "--home", str(tmp_path / "home"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "home").exists()  # nothing made: no database, no broker, no worker


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql+psycopg://someone:hunter2@127.0.0.1:1/none", "Connection refused"),
        ("nosuchdb://x", "Can't load plugin"),
        ("not a url", "DATABASE_URL is not a database URL"),
    ],
)
def test_migrate_with_a_bad_database_is_one_line_without_the_password(url: str, message: str) -> None:
    result = run("migrate", env={"DATABASE_URL": url})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr and "hunter2" not in result.stderr
