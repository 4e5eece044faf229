"""The service commands of ``ddsm``: ``up``, ``serve`` and ``migrate`` (``demo`` is in :mod:`api.demo`,
``worker`` in :mod:`workers.cli`; :mod:`api.cli` composes them all).

Torch is imported by none of them in this process: the workers ``up`` starts are subprocesses.
"""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from api.processes import start_worker_process, stop
from api.settings import settings_for
from ddsm_core.checks import check_min
from ddsm_core.errors import ConfigError, DDSMError


def check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in [0, 65535], got {port}")


def upgrade_database(url: str) -> None:
    """``alembic upgrade head``; an unreachable or malformed database is one line naming it (password
    hidden), not a traceback."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from api.db.engine import upgrade

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        raise ConfigError(
            "DATABASE_URL is not a database URL (e.g. postgresql+psycopg://user@host/db)"
        ) from None
    try:
        upgrade(url)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise DDSMError(f"database {shown}: {reason}") from None


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    home: Annotated[Path | None, typer.Option(help="Embedded-mode folder (DDSM_HOME).")] = None,
) -> None:
    """Run the REST API and the search controller (no worker)."""
    check_port(port)
    import uvicorn

    from api.app import create_app

    uvicorn.run(create_app(settings_for(home)), host=host, port=port, log_level="info")


def migrate(
    home: Annotated[Path | None, typer.Option(help="Embedded-mode folder (DDSM_HOME).")] = None,
) -> None:
    """Upgrade the database schema to the newest migration (alembic upgrade head)."""
    upgrade_database(settings_for(home).resolved_database_url())
    typer.echo("database schema is up to date")


def up(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes to start on this machine.")] = 1,
    home: Annotated[Path | None, typer.Option(help="Embedded-mode folder (DDSM_HOME).")] = None,
) -> None:
    """API + controller + workers on this machine. With no configuration: SQLite, a serverless broker,
    a local artifact folder and the CPU (set DATABASE_URL / CELERY_BROKER_URL / ARTIFACT_STORE to scale)."""
    check_port(port)
    check_min("--workers", workers, 0)
    settings = settings_for(home)
    upgrade_database(settings.resolved_database_url())
    # SIGTERM's default action ends this process at once, without the ``finally`` below (uvicorn hands a
    # signal it caught back to the previous handler after its shutdown): exit through Python instead
    signal.signal(signal.SIGTERM, _exit_on_signal)
    procs = [start_worker_process(own_group=True) for _ in range(workers)]
    typer.echo(
        f"ddsm: API on http://{host}:{port} (docs at /docs), {workers} worker(s); data in {settings.home}"
    )
    try:
        serve(host=host, port=port, home=None)
    except KeyboardInterrupt:
        pass
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):  # a second signal must not cut the stop short
            signal.signal(signum, signal.SIG_IGN)
        typer.echo("ddsm: stopping the workers")
        stop(procs)


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("serve")(serve)
    app.command("migrate")(migrate)
