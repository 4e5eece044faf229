"""The Celery app the workers run, made on demand by :func:`make_worker_app` (``ddsm worker`` calls it).

Nothing is read at import: the settings (broker URL, visibility timeout) are the caller's. For Celery's
own command line, ``celery -A workers.app worker -Q eval`` still works: the module attribute ``app`` is
made from the environment's settings the first time it is looked up.

Configuration comes from :func:`api.queue.celery_config` (shared with the API, which sends tasks by name).
This module imports no torch: the task bodies import it when they run, in the process that runs them,
so a prefork parent never initialises CUDA. GPU workers should use ``--pool solo`` (one process per GPU).
"""

from __future__ import annotations

from functools import cache

from celery import Celery

from api.queue import make_celery
from api.settings import Settings


def make_worker_app(settings: Settings) -> Celery:
    """A Celery app configured from ``settings`` with the ddsm tasks registered."""
    from workers import tasks

    app = make_celery(settings)
    tasks.register(app)
    return app


@cache
def _app_from_environment() -> Celery:
    return make_worker_app(Settings())


def __getattr__(name: str) -> Celery:
    if name == "app":  # `celery -A workers.app`
        return _app_from_environment()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
