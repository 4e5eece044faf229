"""What the API and the workers share about Celery: task names, queues, settings, and sending.

The API sends tasks by name (``send_task``), so it never imports the task bodies (which import torch).
Messages carry ids and plain values only, and are sent after the transaction that created the rows has
committed; the database, not Celery, decides whether a delivery runs (compare-and-set claims).

Brokers: ``redis://...`` for deployments; the embedded default is kombu's SQLAlchemy transport on a
SQLite file (``sqla+sqlite:///<home>/broker.sqlite``), which needs no server and works across real
worker processes on one machine. It has no redelivery of unacknowledged messages; the controller's
resend of never-claimed candidates and its reaping of stale heartbeats cover a lost message.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from api.settings import Settings

EVAL_QUEUE = "eval"
TRAIN_QUEUE = "train"

EVALUATE_CANDIDATE = "ddsm.evaluate_candidate"
TRAIN_SUPERNET = "ddsm.train_supernet"
COMPUTE_REFERENCE_STATS = "ddsm.compute_reference_stats"
INSPECT_SUPERNET = "ddsm.inspect_supernet"
MEASURE_LATENCY = "ddsm.measure_latency"

ROUTES = {
    EVALUATE_CANDIDATE: {"queue": EVAL_QUEUE},
    INSPECT_SUPERNET: {"queue": EVAL_QUEUE},
    COMPUTE_REFERENCE_STATS: {"queue": EVAL_QUEUE},
    MEASURE_LATENCY: {"queue": EVAL_QUEUE},  # the devices that evaluate candidates: theirs is the latency
    TRAIN_SUPERNET: {"queue": TRAIN_QUEUE},
}


def celery_config(settings: Settings) -> dict[str, Any]:
    broker = settings.resolved_broker_url()
    return {
        "broker_url": broker,
        "task_ignore_result": True,  # results live in the database, never in Celery
        "result_backend": None,
        "task_routes": ROUTES,
        "task_default_queue": EVAL_QUEUE,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_serializer": "json",
        "accept_content": ["json"],
        # Redis redelivers an unacknowledged task after this long: above the longest task (training).
        # (The SQLAlchemy transport passes its options to create_engine, so it gets none.)
        "broker_transport_options": (
            {"visibility_timeout": settings.visibility_timeout_s}
            if broker.startswith(("redis", "rediss"))
            else {}
        ),
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }


def is_infrastructure_error(exc: BaseException) -> bool:
    """True for an error of the service's infrastructure (database, broker, network, storage I/O), which
    says nothing about the work itself: the work is retried later, never marked FAILED for it."""
    from kombu.exceptions import OperationalError as BrokerError
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (OperationalError, InterfaceError, BrokerError, ConnectionError, TimeoutError))


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured from ``settings``: the API's sender, and the base of the workers' app."""
    app = Celery("ddsm")
    app.conf.update(celery_config(settings))
    return app


class Dispatcher:
    """Sends tasks by name; one per process (connections are pooled by Celery)."""

    def __init__(self, settings: Settings) -> None:
        self.celery = make_celery(settings)

    def evaluate_candidate(self, candidate_id: int, attempt: int) -> None:
        self.celery.send_task(EVALUATE_CANDIDATE, args=(candidate_id, attempt), queue=EVAL_QUEUE)

    def eval_queue_depth(self) -> int | None:
        """Messages waiting in the eval queue (not those a worker holds), None when the broker cannot
        tell. The controller resends a never-claimed candidate only when this is 0: its message is lost."""
        try:
            with self.celery.connection_for_write() as conn:
                return int(conn.default_channel.queue_declare(EVAL_QUEUE, passive=True).message_count)
        except Exception:  # no such queue yet, or an unreachable broker
            return None

    def train_supernet(self, run_id: int, attempt: int) -> None:
        self.celery.send_task(TRAIN_SUPERNET, args=(run_id, attempt), queue=TRAIN_QUEUE)

    def compute_reference_stats(self, stats_id: int) -> None:
        self.celery.send_task(COMPUTE_REFERENCE_STATS, args=(stats_id,), queue=EVAL_QUEUE)

    def inspect_supernet(self, supernet_id: int) -> None:
        self.celery.send_task(INSPECT_SUPERNET, args=(supernet_id,), queue=EVAL_QUEUE)

    def measure_latency(self, table_id: int) -> None:
        self.celery.send_task(MEASURE_LATENCY, args=(table_id,), queue=EVAL_QUEUE)
