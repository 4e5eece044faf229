"""Celery tasks: thin adapters (claim -> load -> call ddsm_core -> record).

Every task takes ids and plain values. The database decides whether a delivery runs: a redelivered or
stale message loses the compare-and-set claim and is dropped, so results are recorded exactly once.
Everything torch-related lives in :mod:`workers.compute` and is imported inside the task bodies.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from billiard.process import current_process
from celery import Celery, signals
from celery.exceptions import Reject

from api.artifacts import FEATURES_METRIC, SAMPLES_METRIC, ArtifactStore
from api.db.engine import make_engine
from api.db.models import CandidateState
from api.db.repository import Repository
from api.queue import (
    COMPUTE_REFERENCE_STATS,
    EVALUATE_CANDIDATE,
    INSPECT_SUPERNET,
    MEASURE_LATENCY,
    TRAIN_SUPERNET,
    is_infrastructure_error,
)
from api.settings import Settings
from ddsm_core.costs import CostTable
from ddsm_core.errors import DDSMError
from ddsm_core.latency import LatencyTable
from ddsm_core.spec import SearchSpec
from workers.history import RunHistory

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    repo: Repository
    store: ArtifactStore
    name: str


@cache
def context() -> WorkerContext:
    """Per-process state, created lazily in the process that runs tasks (after any fork). Cheap and
    torch-free, so a task claims its work before it loads anything heavy (see :func:`torch_ready`)."""
    settings = Settings()
    return WorkerContext(
        settings=settings,
        repo=Repository(make_engine(settings.resolved_database_url())),
        store=ArtifactStore(settings.resolved_artifact_store()),
        name=f"{socket.gethostname()}:{os.getpid()}",
    )


@cache
def torch_ready(threads: int) -> None:
    """Import torch and set its thread count, once per process (seconds: done after the claim)."""
    from workers import compute

    if threads:
        compute.configure(threads)


class InfraHealth:
    """This process's run of consecutive infrastructure failures (database, broker, artifact store).

    Each failure waits a doubling backoff before the task is requeued. A worker stops consuming when
    the run reaches ``max_failures`` and it either never reached its infrastructure (a wrong
    DATABASE_URL: it would only bounce messages a healthy worker could run) or has failed for longer
    than the outage grace period; a shorter outage of a worker that used to work is waited out.
    """

    def __init__(self) -> None:
        self.failures = 0
        self.first_failure = 0.0
        self.ever_ok = False

    def ok(self) -> None:
        self.failures, self.ever_ok = 0, True

    def failed(self, settings: Settings) -> tuple[float, bool]:
        """Record a failure: (seconds to wait before requeueing, whether to stop consuming)."""
        now = time.monotonic()
        if self.failures == 0:
            self.first_failure = now
        self.failures += 1
        wait = min(settings.infra_backoff_s * 2 ** (self.failures - 1), settings.infra_backoff_max_s)
        stop = self.failures >= settings.worker_max_infra_failures and (
            not self.ever_ok or now - self.first_failure > settings.db_outage_grace_s
        )
        return wait, stop


HEALTH = InfraHealth()


def _stop_consuming(reason: str) -> None:
    """Warm shutdown of this worker (SIGTERM to the Celery worker process: itself with the solo pool,
    the parent of a prefork child): it finishes the message at hand, which is requeued, and exits."""
    pid = os.getpid() if current_process().name == "MainProcess" else os.getppid()
    log.error("worker stops consuming: %s; fix its configuration and start it again", reason)
    os.kill(pid, signal.SIGTERM)


def _requeue(exc: BaseException, settings: Settings | None) -> Reject:
    """Wait the backoff, maybe stop consuming, and give the message back to the queue (never acked)."""
    settings = settings or Settings.model_construct()
    wait, stop = HEALTH.failed(settings)
    log.warning(
        "infrastructure error (%s failure(s) in a row), requeueing after %.1f s: %s: %s",
        HEALTH.failures, wait, type(exc).__name__, exc,
    )  # fmt: skip
    time.sleep(wait)
    if stop:
        _stop_consuming(f"{HEALTH.failures} infrastructure failures in a row ({type(exc).__name__}: {exc})")
    return Reject(f"{type(exc).__name__}: {exc}", requeue=True)


def _persist(settings: Settings, write: Callable[[], T]) -> T:
    """A compare-and-set write retried through a database outage shorter than the grace period (the
    result at hand must not be lost to a blip); after that the error propagates."""
    deadline = time.monotonic() + settings.db_outage_grace_s
    wait = settings.infra_backoff_s
    while True:
        try:
            return write()
        except Exception as exc:
            if not is_infrastructure_error(exc) or time.monotonic() + wait > deadline:
                raise
            log.warning("database write failed (%s), retrying in %.1f s", type(exc).__name__, wait)
            time.sleep(wait)
            wait = min(2 * wait, settings.infra_backoff_max_s)


class Heartbeat:
    """Calls ``beat()`` every ``interval`` seconds on a thread; ``lost`` is set once it returns False."""

    def __init__(self, beat: Callable[[], bool], interval: float) -> None:
        self._beat, self._interval = beat, interval
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ddsm-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if not self._beat():
                    self.lost.set()
                    return
            except Exception:  # a database blip: try again next interval
                log.warning("heartbeat failed", exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _error(exc: BaseException) -> str:
    if isinstance(exc, DDSMError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"


def local_checkpoint(ctx: WorkerContext, sha: str) -> Path:
    """The supernet checkpoint folder ``sha`` in this machine's cache (downloaded once)."""
    return ctx.store.get_dir(sha, ctx.settings.resolved_worker_cache() / "checkpoints" / sha)


def local_stats(ctx: WorkerContext, sha: str) -> Path:
    path = ctx.settings.resolved_worker_cache() / "stats" / f"{sha}.npz"
    return path if path.exists() else ctx.store.get_file(sha, path)


# ---------------------------------------------------------------------------- evaluate_candidate
def evaluate_candidate(candidate_id: int, attempt: int) -> str:
    """Claim first (milliseconds), then load (torch, checkpoint, statistics) and evaluate under a
    heartbeat. Before the claim nothing is known about the candidate, so any error there is the
    worker's (settings, database, broker): the message is requeued after a backoff, never acked."""
    ctx: WorkerContext | None = None
    try:
        ctx = context()
        claimed = ctx.repo.claim_candidate(candidate_id, attempt, ctx.name)
    except Exception as exc:
        raise _requeue(exc, ctx.settings if ctx else None) from exc
    HEALTH.ok()
    if not claimed:
        return "dropped"  # redelivered, stale or cancelled: someone else owns it
    beat = Heartbeat(
        lambda: ctx.repo.heartbeat(candidate_id, attempt, ctx.name), ctx.settings.heartbeat_interval_s
    )
    with beat:
        try:
            metrics = _evaluate(ctx, candidate_id)
        except Exception as exc:
            if is_infrastructure_error(exc):  # not the candidate's fault: give it back, sent again at once
                return _release(ctx, candidate_id, attempt, exc)
            log.exception("candidate %s failed", candidate_id)
            error = _error(exc)
            _persist(ctx.settings, lambda: ctx.repo.fail_candidate(candidate_id, attempt, ctx.name, error))
            return "failed"
    if metrics.get("status") != "failed" and metrics.get("cost") is None:
        reason = "the evaluation has no cost (objective latency without a predicted latency)"
        metrics = {**metrics, "status": "failed", "reason": metrics.get("reason") or reason}
    if metrics.get("status") == "failed":  # a diverged sampler: FAILED with its reason (penalty)
        reason = str(metrics.get("reason"))
        _persist(ctx.settings, lambda: ctx.repo.fail_candidate(candidate_id, attempt, ctx.name, reason))
        return "failed"
    ok = _persist(ctx.settings, lambda: ctx.repo.complete_candidate(candidate_id, attempt, ctx.name, metrics))
    return "complete" if ok else "lost"


def _release(ctx: WorkerContext, candidate_id: int, attempt: int, exc: BaseException) -> str:
    """Give a claimed candidate back after an infrastructure error; FAILED with the error instead once
    it has been given back ``max_infra_releases`` times for longer than the outage grace period."""
    HEALTH.failed(ctx.settings)
    reason, settings = f"{type(exc).__name__}: {exc}", ctx.settings
    state = _persist(settings, lambda: ctx.repo.release_candidate(
        candidate_id, attempt, ctx.name, reason,
        max_releases=settings.max_infra_releases, min_age_s=settings.db_outage_grace_s,
    ))  # fmt: skip
    if state == CandidateState.FAILED:
        log.error("candidate %s: infrastructure error once too often, failed: %s", candidate_id, reason)
        return "failed"
    log.warning("candidate %s: infrastructure error, released: %s", candidate_id, reason)
    return "released"


def _evaluate(ctx: WorkerContext, candidate_id: int) -> dict[str, Any]:
    cand = ctx.repo.get_candidate(candidate_id)
    assert cand is not None
    search = ctx.repo.get_search(cand.search_id)
    assert search is not None
    net = ctx.repo.get_supernet(search.supernet_id)
    stats = ctx.repo.get_reference_stats(search.reference_stats_id)
    if net is None or net.gflops is None or stats is None or stats.artifact_sha256 is None:
        raise DDSMError("the search's supernet or reference statistics are not ready")
    spec = SearchSpec.from_dict(search.config)
    latency = _search_latency_table(ctx, search.latency_table_id)
    if ctx.settings.evaluator == "fast":
        from workers.fast_eval import fast_metrics, journal

        table = CostTable.from_dict(net.gflops)
        metrics = fast_metrics(spec, cand.genome, table, ctx.settings.fast_eval_seconds, cand.n_images)
        if ctx.settings.fast_eval_journal is not None:
            journal(ctx.settings.fast_eval_journal, candidate=cand.id, attempt=cand.attempt, worker=ctx.name)
        return with_cost(spec, cand.genome, metrics, latency)
    torch_ready(ctx.settings.torch_threads)
    from workers import compute

    try:  # the artifact store's I/O (a shared mount, object storage) is infrastructure
        checkpoint = local_checkpoint(ctx, net.artifact_sha256)
        stats_path = local_stats(ctx, stats.artifact_sha256)
    except OSError as exc:
        raise ConnectionError(f"artifact store: {exc}") from exc
    # a finalist: sampled from the finalists' (held-out) seeds, its per-image features kept for the paired
    # interval
    final = cand.phase == "final"
    ctx.settings.resolved_worker_cache().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ctx.settings.resolved_worker_cache()) as tmp:
        features, grid = Path(tmp) / "features.npy", Path(tmp) / "samples.png"
        metrics = compute.evaluate_genome(
            checkpoint=checkpoint,
            checkpoint_sha=net.artifact_sha256,
            stats_path=stats_path,
            extractor=stats.extractor,
            spec=spec,
            genome=cand.genome,
            n_images=cand.n_images,
            table=CostTable.from_dict(net.gflops),
            device=ctx.settings.device,
            share_prefixes=not final,
            final=final,
            features_out=features if final else None,
            grid_out=grid if final else None,
        )
        try:
            for key, path in ((FEATURES_METRIC, features), (SAMPLES_METRIC, grid)):
                if final and path.exists():
                    metrics[key] = ctx.store.put_file(path)
        except OSError as exc:
            raise ConnectionError(f"artifact store: {exc}") from exc
    return with_cost(spec, cand.genome, metrics, latency)


def _search_latency_table(ctx: WorkerContext, table_id: int | None) -> LatencyTable | None:
    """The latency table a search predicts with (chosen when it was created), None for none."""
    if table_id is None:
        return None
    row = ctx.repo.get_latency_table(table_id)
    if row is None or row.table is None:
        raise DDSMError(f"the search's latency table {table_id} is gone or was never measured")
    return LatencyTable.from_dict(row.table)


def with_cost(
    spec: SearchSpec, genome: Any, metrics: dict[str, Any], latency: LatencyTable | None
) -> dict[str, Any]:
    """The metrics with the predicted latency (when the search has a table) and ``cost``, the search's
    objective (``SearchSpec.costs``, as ``ddsm search`` records it): the controller tells NSGA-II ``cost``."""
    return spec.costs(genome, metrics, latency)


# ---------------------------------------------------------------------------- supernets
def inspect_supernet(supernet_id: int) -> str:
    """Load a registered checkpoint, check it, count its GFLOPs per width: PENDING -> COMPLETE."""
    ctx = context()
    net = ctx.repo.get_supernet(supernet_id)
    if net is None or net.status.value != "PENDING":
        return "dropped"
    torch_ready(ctx.settings.torch_threads)
    from workers import compute

    try:
        table, config = compute.inspect_checkpoint(local_checkpoint(ctx, net.artifact_sha256))
    except Exception as exc:
        ctx.repo.supernet_failed(supernet_id, _error(exc))
        return "failed"
    ctx.repo.supernet_ready(supernet_id, table, config)
    return "complete"


def train_supernet(run_id: int, attempt: int) -> str:
    """Long-lived: trains, uploads each checkpoint to the artifact store with progress, resumes from the
    last uploaded checkpoint when delivered again (a new attempt after the controller reaped it, or the
    same attempt after a SIGINT / SIGTERM left it INTERRUPTED)."""
    ctx = context()
    if not ctx.repo.claim_training_run(run_id, attempt, ctx.name):
        return "dropped"
    beat = Heartbeat(
        lambda: ctx.repo.heartbeat_training_run(run_id, attempt, ctx.name), ctx.settings.heartbeat_interval_s
    )
    with beat:  # from the claim to the end: loading torch, uploads and the GFLOPs count take seconds too
        return _train(ctx, run_id, attempt, beat)


def _train(ctx: WorkerContext, run_id: int, attempt: int, beat: Heartbeat) -> str:
    torch_ready(ctx.settings.torch_threads)
    from workers import compute

    run = ctx.repo.get_training_run(run_id)
    assert run is not None
    history: RunHistory | None = None

    def on_checkpoint(step: int, folder: Path | None, total: int) -> bool:
        sha = ctx.store.put_dir(folder) if folder is not None else None
        artifacts = history.upload(checkpoint=folder is not None) if history is not None else None
        return ctx.repo.training_progress(run_id, attempt, ctx.name, step, sha, total, artifacts)

    try:
        ctx.settings.resolved_worker_cache().mkdir(parents=True, exist_ok=True)
        cache = ctx.settings.resolved_worker_cache()
        workdir = Path(tempfile.mkdtemp(prefix=f"ddsm-train-{run_id}-", dir=cache))
        history = RunHistory(ctx.store, compute.run_dir_of(workdir), run.artifacts)
        resume = local_checkpoint(ctx, run.last_checkpoint_sha256) if run.last_checkpoint_sha256 else None
        if resume is not None:  # the curves go on from the log uploaded with that checkpoint
            history.restore(compute.checkpoint_step(resume))
        final = compute.train_supernet(
            run.config, workdir, resume, on_checkpoint, stop=beat.lost.is_set, device=ctx.settings.device
        )
    except compute.TrainingStopped:
        return "stopped"
    except compute.TrainingInterrupted as stop:  # a signal: resumable, never COMPLETE nor a supernet
        sha = ctx.store.put_dir(stop.checkpoint) if stop.checkpoint is not None else None
        artifacts = history.upload(checkpoint=True) if history is not None else None
        ctx.repo.interrupt_training_run(run_id, attempt, ctx.name, stop.step, sha, artifacts)
        log.warning("training run %s interrupted at step %s; it resumes from there", run_id, stop.step)
        if stop.signum is not None:  # the trainer took the signal meant for this worker: hand it on
            signal.raise_signal(stop.signum)
        return "interrupted"
    except Exception as exc:
        log.exception("training run %s failed", run_id)
        ctx.repo.fail_training_run(run_id, attempt, ctx.name, _error(exc))
        return "failed"
    sha = ctx.store.put_dir(final)
    table, config = compute.inspect_checkpoint(final)
    # the final step's log, eval and grids are written after its last progress report
    assert history is not None
    artifacts = history.upload(checkpoint=True)
    step = int(config.get("step") or run.total_steps)
    if artifacts is not None and not ctx.repo.training_progress(
        run_id, attempt, ctx.name, step, None, None, artifacts
    ):
        return "lost"
    supernet_id = ctx.repo.complete_training_run(run_id, attempt, ctx.name, sha, config)
    if supernet_id is None:
        return "lost"  # cancelled or reaped meanwhile: the run is another attempt's now
    ctx.repo.supernet_ready(supernet_id, table, config)
    return "complete"


# ---------------------------------------------------------------------------- latency tables
def measure_latency(table_id: int) -> str:
    """Claim the requested table (PENDING -> RUNNING, compare-and-set: a redelivery is dropped), then
    time the supernet on this worker's device, dtype and threads and store the table (COMPLETE)."""
    ctx: WorkerContext | None = None
    try:
        ctx = context()
        claimed = ctx.repo.claim_latency_table(table_id, ctx.name)
    except Exception as exc:
        raise _requeue(exc, ctx.settings if ctx else None) from exc
    HEALTH.ok()
    if not claimed:
        return "dropped"
    row = ctx.repo.get_latency_table(table_id)
    assert row is not None
    net = ctx.repo.get_supernet(row.supernet_id)
    try:
        if net is None:
            raise DDSMError(f"supernet {row.supernet_id} is gone")
        torch_ready(ctx.settings.torch_threads)
        from workers import compute

        table = compute.measure_latency_table(
            local_checkpoint(ctx, net.artifact_sha256), dtype=row.dtype, batch_sizes=row.batch_sizes,
            repeats=row.repeats, warmup=row.warmup, device=ctx.settings.device,
            info={"supernet_id": net.id, "checkpoint_sha256": net.artifact_sha256, "worker": ctx.name},
        )  # fmt: skip
    except Exception as exc:
        log.exception("latency table %s failed", table_id)
        error = _error(exc)
        _persist(ctx.settings, lambda: ctx.repo.fail_latency_table(table_id, ctx.name, error))
        return "failed"
    ok = _persist(ctx.settings, lambda: ctx.repo.complete_latency_table(table_id, ctx.name, table))
    return "complete" if ok else "lost"


# ---------------------------------------------------------------------------- reference statistics
def compute_reference_stats(stats_id: int) -> str:
    ctx = context()
    stats = ctx.repo.get_reference_stats(stats_id)
    if stats is None or stats.status.value != "PENDING":
        return "dropped"
    torch_ready(ctx.settings.torch_threads)
    from workers import compute

    ctx.settings.resolved_worker_cache().mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=ctx.settings.resolved_worker_cache()) as tmp:
            path, n, extractor, floors = compute.reference_stats(
                stats.dataset, stats.extractor, Path(tmp) / "stats.npz", ctx.settings.device
            )
            sha = ctx.store.put_file(path)
    except Exception as exc:
        ctx.repo.reference_stats_failed(stats_id, _error(exc))
        return "failed"
    ctx.repo.reference_stats_ready(stats_id, sha, n, extractor, floors)
    return "complete"


def probe_infrastructure(**_: Any) -> None:
    """At process start: a worker that reaches its database has a working configuration, so a later
    outage is waited out; one that does not stops after a few failures (see :class:`InfraHealth`)."""
    try:
        context().repo.ping()
    except Exception as exc:
        log.warning("the database is not reachable at start-up: %s: %s", type(exc).__name__, exc)
        return
    HEALTH.ok()


def register(app: Celery) -> None:
    """Register the tasks on ``app`` under the names the API sends (see :mod:`api.queue`)."""
    tasks = {
        EVALUATE_CANDIDATE: evaluate_candidate,
        INSPECT_SUPERNET: inspect_supernet,
        TRAIN_SUPERNET: train_supernet,
        COMPUTE_REFERENCE_STATS: compute_reference_stats,
        MEASURE_LATENCY: measure_latency,
    }
    for name, body in tasks.items():
        app.task(name=name, acks_late=True, reject_on_worker_lost=True)(body)
    signals.worker_process_init.connect(probe_infrastructure, weak=False)
