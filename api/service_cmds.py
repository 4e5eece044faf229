"""The service commands of ``ddsm``: ``up``, ``serve``, ``worker``, ``migrate`` and ``demo``.

Torch is imported by none of them in this process: ``demo`` talks to the service over REST, and the
workers it starts import torch in their task bodies.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from api.settings import Settings


def _settings(home: Path | None) -> Settings:
    if home is not None:
        os.environ["DDSM_HOME"] = str(home)
    return Settings()


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    home: Annotated[Path | None, typer.Option(help="Embedded-mode folder (DDSM_HOME).")] = None,
) -> None:
    """Run the REST API and the search controller (no worker)."""
    import uvicorn

    from api.app import create_app

    uvicorn.run(create_app(_settings(home)), host=host, port=port, log_level="info")


def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues: eval, train.")] = "eval,train",
    concurrency: Annotated[int, typer.Option(help="Tasks at once (prefork pool only).")] = 1,
    pool: Annotated[str, typer.Option(help="solo (one process; GPUs) or prefork.")] = "solo",
    gpu: Annotated[int | None, typer.Option(help="Pin to this GPU (sets CUDA_VISIBLE_DEVICES).")] = None,
    name: Annotated[str | None, typer.Option(help="Worker node name (default ddsm-<pid>@<host>).")] = None,
    home: Annotated[Path | None, typer.Option(help="Embedded-mode folder (DDSM_HOME).")] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Run a Celery worker for the eval and/or train queues (torch is imported by the tasks only)."""
    _settings(home)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    from workers.app import app

    argv = [
        "worker",
        "-Q",
        queues,
        "--pool",
        pool,
        "--loglevel",
        loglevel,
        "-n",
        name or f"ddsm-{os.getpid()}@%h",
    ]
    if pool != "solo":
        argv += ["--concurrency", str(concurrency)]
    app.worker_main(argv)


def migrate(
    home: Annotated[Path | None, typer.Option(help="Embedded-mode folder (DDSM_HOME).")] = None,
) -> None:
    """Upgrade the database schema to the newest migration (alembic upgrade head)."""
    from api.db.engine import upgrade

    upgrade(_settings(home).resolved_database_url())
    typer.echo("database schema is up to date")


def _output(log: Path | None) -> Any:
    return subprocess.DEVNULL if log is None else open(log, "ab")  # noqa: SIM115


def start_worker_process(
    env: dict[str, str] | None = None, queues: str = "eval,train", log: Path | None = None
) -> subprocess.Popen[bytes]:
    """A ``ddsm worker`` subprocess (used by ``up``, ``demo`` and the tests)."""
    cmd = [sys.executable, "-m", "api.cli", "worker", "--queues", queues, "--loglevel", "INFO"]
    out = _output(log) if log else None
    return subprocess.Popen(
        cmd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT if log else None
    )


def start_api_process(
    port: int, env: dict[str, str] | None = None, host: str = "127.0.0.1", log: Path | None = None
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--host", host,
           "--port", str(port), "--log-level", "warning"]  # fmt: skip
    out = _output(log) if log else None
    return subprocess.Popen(
        cmd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT if log else None
    )


def wait_healthy(url: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the API process exited with status {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the API at {url} did not become healthy in {timeout:.0f} s")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def up(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes to start on this machine.")] = 1,
    home: Annotated[Path | None, typer.Option(help="Embedded-mode folder (DDSM_HOME).")] = None,
) -> None:
    """API + controller + workers on this machine. With no configuration: SQLite, a serverless broker,
    a local artifact folder and the CPU (set DATABASE_URL / CELERY_BROKER_URL / ARTIFACT_STORE to scale)."""
    settings = _settings(home)
    from api.db.engine import upgrade

    upgrade(settings.resolved_database_url())
    procs = [start_worker_process() for _ in range(workers)]
    typer.echo(
        f"ddsm: API on http://{host}:{port} (docs at /docs), {workers} worker(s); data in {settings.home}"
    )
    try:
        serve(host=host, port=port, home=None)
    finally:
        stop(procs)


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("serve")(serve)
    app.command("worker")(worker)
    app.command("migrate")(migrate)
    from api.demo import demo

    app.command("demo")(demo)
