"""The Celery app the workers run: ``celery -A workers.app worker -Q eval`` (or ``ddsm worker``).

Configuration comes from :func:`api.queue.celery_config` (shared with the API, which sends tasks by name).
This module imports no torch: the task bodies import it when they run, in the process that runs them,
so a prefork parent never initialises CUDA. GPU workers should use ``--pool solo`` (one process per GPU).
"""

from __future__ import annotations

from api.queue import make_celery

app = make_celery()
app.conf.include = ["workers.tasks"]
