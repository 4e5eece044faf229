"""``ddsm worker``: a Celery worker for the eval and/or train queues (composed into ``ddsm`` by api.cli)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from api.settings import settings_for


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
    from api.queue import EVAL_QUEUE, TRAIN_QUEUE
    from ddsm_core.checks import check_min
    from ddsm_core.errors import ConfigError

    known = (EVAL_QUEUE, TRAIN_QUEUE)
    unknown = [q for q in queues.split(",") if q.strip() not in known]
    if unknown or not queues.strip():
        raise ConfigError(f"--queues takes {', '.join(known)} (comma-separated), got {queues!r}")
    check_min("--concurrency", concurrency, 1)
    if pool not in ("solo", "prefork"):
        raise ConfigError(f"--pool must be solo or prefork, got {pool!r}")
    settings = settings_for(home)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    from workers.app import make_worker_app

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
    make_worker_app(settings).worker_main(argv)


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
