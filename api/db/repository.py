"""The one module through which every database write goes.

State changes are compare-and-set UPDATEs inside one transaction that return ``bool`` (did this caller
win?), after Optuna's RDB storage. A finished row (COMPLETE / FAILED candidate) never changes again:
every UPDATE on a candidate names the state and attempt it expects. Callers get frozen dataclasses,
never ORM objects. Times are naive UTC taken from the database server (Postgres) so that heartbeats
written by workers on other machines compare against the same clock.

Non-finite metrics (a diverged sampler's FID of NaN or inf) are stored with an explicit marker
``{"nonfinite": "nan" | "inf" | "-inf"}`` inside the JSON metrics, and as NULL in the sortable column.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from sqlalchemy import Engine, and_, exists, func, insert, or_, select, text, update
from sqlalchemy.orm import Session, defer, sessionmaker

from api.db.models import (
    Candidate,
    CandidateState,
    JobStatus,
    LatencyTable,
    ReferenceStats,
    Search,
    SearchGeneration,
    Supernet,
    TrainingRun,
)

ACTIVE_SEARCH = (JobStatus.RUNNING, JobStatus.FINISHING)

# A value placeholder for ``Repository._update`` / ``_insert``: the database's 'now', read once inside
# that write's transaction.
_NOW: Any = object()

# The key under which a waiting candidate's metrics count its infrastructure releases (see
# ``Repository.release_candidate``); the real metrics replace it when the candidate completes.
INFRA_RELEASES = "infrastructure"


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Unsent:
    """A WAITING candidate to send: its id, current attempt and the attempt last sent (0: never)."""

    id: int
    attempt: int
    sent_attempt: int


@dataclass(frozen=True)
class SupernetRecord:
    id: int
    name: str
    status: JobStatus
    artifact_sha256: str
    config: dict[str, Any]
    gflops: dict[str, Any] | None
    training_run_id: int | None
    error: str | None
    created_at: datetime


@dataclass(frozen=True)
class ReferenceStatsRecord:
    id: int
    name: str
    dataset: str
    extractor: str
    status: JobStatus
    artifact_sha256: str | None
    n_images: int | None
    floors: list[dict[str, Any]] | None
    error: str | None
    created_at: datetime


@dataclass(frozen=True)
class LatencyTableRecord:
    id: int
    supernet_id: int
    status: JobStatus
    dtype: str
    batch_sizes: list[int]
    repeats: int
    warmup: int
    device: str | None
    threads: int | None
    table: dict[str, Any] | None
    worker: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None


@dataclass(frozen=True)
class TrainingRunRecord:
    id: int
    name: str
    status: JobStatus
    config: dict[str, Any]
    step: int
    total_steps: int
    last_checkpoint_sha256: str | None
    supernet_id: int | None
    attempt: int
    worker: str | None
    heartbeat_at: datetime | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    artifacts: dict[str, Any] | None = None


@dataclass(frozen=True)
class SearchRecord:
    id: int
    name: str
    supernet_id: int
    reference_stats_id: int
    config: dict[str, Any]
    status: JobStatus
    generation: int
    latency_table_id: int | None
    algorithm_state: dict[str, Any] | None
    result: dict[str, Any] | None
    error: str | None
    controller_id: str | None
    lease_until: datetime | None
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None


@dataclass(frozen=True)
class CandidateRecord:
    id: int
    search_id: int
    phase: str
    generation: int
    genome: tuple[int, ...]
    genome_hash: str
    n_images: int
    state: CandidateState
    attempt: int
    sent_attempt: int
    sent_at: datetime | None
    worker: str | None
    heartbeat_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    fid: float | None
    gflops: float | None
    metrics: dict[str, Any] | None
    error: str | None
    created_at: datetime

    @property
    def finished(self) -> bool:
        return self.state in (CandidateState.COMPLETE, CandidateState.FAILED)


@dataclass(frozen=True)
class GenerationRecord:
    search_id: int
    generation: int
    genome_hashes: tuple[str, ...]
    told: bool


R = TypeVar("R")


def _record(cls: type[R], row: Any) -> R:
    values = {f.name: getattr(row, f.name) for f in fields(cls)}  # type: ignore[arg-type]
    if cls is CandidateRecord:
        values["genome"] = tuple(values["genome"])
        values["metrics"] = decode_metrics(values["metrics"])
    if cls is GenerationRecord:
        values["genome_hashes"] = tuple(values["genome_hashes"])
    return cls(**values)


# ----------------------------------------------------------------------------- helpers
MAX_ID = 2**31 - 1  # ids and offsets are Postgres integer columns


def valid_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID


def genome_hash(genome: Sequence[int]) -> str:
    """A stable hash of a genome (tuple of width indices)."""
    return hashlib.sha256(json.dumps([int(g) for g in genome]).encode()).hexdigest()


def encode_float(value: float) -> Any:
    value = float(value)
    if math.isfinite(value):
        return value
    return {"nonfinite": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}


def decode_float(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"nonfinite"}:
        return float(value["nonfinite"])
    return value


def encode_metrics(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    if metrics is None:
        return None
    return {k: encode_float(v) if isinstance(v, float) else v for k, v in metrics.items()}


def decode_metrics(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    if metrics is None:
        return None
    return {k: decode_float(v) for k, v in metrics.items()}


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------------------- repository
def _mark_told(search_id: int, generation: int) -> Any:
    """The compare-and-set that marks a generation told: it matches only while the generation is untold."""
    return (
        update(SearchGeneration)
        .where(
            SearchGeneration.search_id == search_id,
            SearchGeneration.generation == generation,
            SearchGeneration.told.is_(False),
        )
        .values(told=True)
    )


class Repository:
    """Every read and write of the service's state. Safe to share between threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._postgres = engine.dialect.name == "postgresql"

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def now(self, session: Session | None = None) -> datetime:
        """Naive UTC 'now' from the database server's clock (Postgres) or this machine (SQLite)."""
        if not self._postgres:
            return datetime.now(timezone.utc).replace(tzinfo=None)
        if session is not None:
            return session.execute(text("SELECT timezone('utc', now())")).scalar_one()
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT timezone('utc', clock_timestamp())")).scalar_one()

    def ping(self) -> None:
        """Reach the database (raises if it cannot)."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def _cas(self, session: Session, stmt: Any) -> bool:
        return session.execute(stmt.execution_options(synchronize_session=False)).rowcount == 1

    def _with_now(self, session: Session, values: dict[str, Any]) -> dict[str, Any]:
        if not any(v is _NOW for v in values.values()):
            return values
        now = self.now(session)
        return {k: now if v is _NOW else v for k, v in values.items()}

    def _insert(self, model: Any, /, **values: Any) -> int:
        """Add one row (``_NOW`` values become the database's 'now') and return its id."""
        with self._tx() as s:
            row = model(**self._with_now(s, values))
            s.add(row)
            s.flush()
            return row.id

    def _update(self, model: Any, /, *where: Any, **values: Any) -> bool:
        """One compare-and-set UPDATE in its own transaction (``_NOW`` values become the database's
        'now'); True if exactly one row matched ``where``, i.e. this caller won."""
        with self._tx() as s:
            return self._cas(s, update(model).where(*where).values(**self._with_now(s, values)))

    def _transition(
        self, model: Any, key: int, from_status: JobStatus | Sequence[JobStatus], /, **values: Any
    ) -> bool:
        """``_update`` of the row ``key`` if its status is ``from_status`` (or one of them)."""
        if isinstance(from_status, JobStatus):
            expected = model.status == from_status
        else:
            expected = model.status.in_(from_status)
        return self._update(model, model.id == key, expected, **values)

    def _records(self, record_cls: type[R], query: Any) -> list[R]:
        with self._tx() as s:
            return [_record(record_cls, r) for r in s.scalars(query).all()]

    def _get(self, model: Any, record_cls: type[R], key: Any) -> R | None:
        if isinstance(key, int) and not valid_id(key):  # beyond the integer column: no such row
            return None  # (Postgres and SQLite would raise instead)
        with self._tx() as s:
            row = s.get(model, key)
            return _record(record_cls, row) if row else None

    def _list(self, model: Any, record_cls: type[R], *where: Any) -> list[R]:
        """All rows of ``model`` (matching ``where``) in id order."""
        query = select(model).order_by(model.id)
        if where:
            query = query.where(*where)
        return self._records(record_cls, query)

    # ------------------------------------------------------------------ supernets
    def create_supernet(
        self,
        name: str,
        artifact_sha256: str,
        config: dict[str, Any],
        *,
        training_run_id: int | None = None,
    ) -> int:
        return self._insert(
            Supernet,
            name=name,
            status=JobStatus.PENDING,
            artifact_sha256=artifact_sha256,
            config=config,
            training_run_id=training_run_id,
            created_at=_NOW,
        )

    def supernet_ready(self, supernet_id: int, gflops: dict[str, Any], config: dict[str, Any]) -> bool:
        return self._transition(
            Supernet, supernet_id, JobStatus.PENDING, status=JobStatus.COMPLETE, gflops=gflops, config=config
        )

    def supernet_failed(self, supernet_id: int, error: str) -> bool:
        return self._transition(
            Supernet, supernet_id, JobStatus.PENDING, status=JobStatus.FAILED, error=error[:4000]
        )

    def get_supernet(self, supernet_id: int) -> SupernetRecord | None:
        return self._get(Supernet, SupernetRecord, supernet_id)

    def list_supernets(self) -> list[SupernetRecord]:
        return self._list(Supernet, SupernetRecord)

    # ------------------------------------------------------------------ latency tables
    def create_latency_table(
        self, supernet_id: int, dtype: str, batch_sizes: Sequence[int], repeats: int, warmup: int
    ) -> int:
        """A requested measurement (PENDING); the worker that claims it fills in device and table."""
        return self._insert(
            LatencyTable, supernet_id=supernet_id, status=JobStatus.PENDING, dtype=dtype,
            batch_sizes=[int(b) for b in batch_sizes], repeats=repeats, warmup=warmup, created_at=_NOW,
        )  # fmt: skip

    def claim_latency_table(self, table_id: int, worker: str) -> bool:
        """PENDING -> RUNNING for ``worker``: a redelivered message loses and is dropped."""
        return self._transition(
            LatencyTable, table_id, JobStatus.PENDING,
            status=JobStatus.RUNNING, worker=worker, started_at=_NOW,
        )  # fmt: skip

    def complete_latency_table(self, table_id: int, worker: str, table: dict[str, Any]) -> bool:
        """RUNNING (this worker's) -> COMPLETE with the table (a ``LatencyTable.to_dict()``)."""
        return self._update(
            LatencyTable, LatencyTable.id == table_id, LatencyTable.status == JobStatus.RUNNING,
            LatencyTable.worker == worker, status=JobStatus.COMPLETE, table=table,
            device=str(table["device"])[:200], threads=int(table["threads"]), ended_at=_NOW,
        )  # fmt: skip

    def fail_latency_table(self, table_id: int, worker: str, error: str) -> bool:
        return self._update(
            LatencyTable, LatencyTable.id == table_id, LatencyTable.status == JobStatus.RUNNING,
            LatencyTable.worker == worker, status=JobStatus.FAILED, error=error[:4000], ended_at=_NOW,
        )  # fmt: skip

    def get_latency_table(self, table_id: int) -> LatencyTableRecord | None:
        return self._get(LatencyTable, LatencyTableRecord, table_id)

    def list_latency_tables(
        self, supernet_id: int, *, status: JobStatus | None = None, dtype: str | None = None
    ) -> list[LatencyTableRecord]:
        """The tables of a supernet in id order (oldest first), optionally by status and dtype."""
        where = [LatencyTable.supernet_id == supernet_id]
        if status is not None:
            where.append(LatencyTable.status == status)
        if dtype is not None:
            where.append(LatencyTable.dtype == dtype)
        return self._list(LatencyTable, LatencyTableRecord, *where)

    # ------------------------------------------------------------------ reference statistics
    def create_reference_stats(
        self,
        name: str,
        dataset: str,
        extractor: str,
        *,
        artifact_sha256: str | None = None,
        floors: list[dict[str, Any]] | None = None,
    ) -> int:
        return self._insert(
            ReferenceStats,
            name=name,
            dataset=dataset,
            extractor=extractor,
            status=JobStatus.COMPLETE if artifact_sha256 else JobStatus.PENDING,
            artifact_sha256=artifact_sha256,
            floors=floors or None,
            created_at=_NOW,
        )

    def reference_stats_ready(
        self,
        stats_id: int,
        artifact_sha256: str,
        n_images: int | None,
        extractor: str | None = None,
        floors: list[dict[str, Any]] | None = None,
    ) -> bool:
        """PENDING -> COMPLETE with the artifact and the real-data floors recorded in it (if any)."""
        values: dict[str, Any] = {"status": JobStatus.COMPLETE, "artifact_sha256": artifact_sha256}
        values["n_images"] = n_images
        values["floors"] = floors or None
        if extractor:
            values["extractor"] = extractor
        return self._transition(ReferenceStats, stats_id, JobStatus.PENDING, **values)

    def reference_stats_failed(self, stats_id: int, error: str) -> bool:
        return self._transition(
            ReferenceStats, stats_id, JobStatus.PENDING, status=JobStatus.FAILED, error=error[:4000]
        )

    def get_reference_stats(self, stats_id: int) -> ReferenceStatsRecord | None:
        return self._get(ReferenceStats, ReferenceStatsRecord, stats_id)

    def list_reference_stats(self) -> list[ReferenceStatsRecord]:
        return self._list(ReferenceStats, ReferenceStatsRecord)

    # ------------------------------------------------------------------ training runs
    def create_training_run(self, name: str, config: dict[str, Any], total_steps: int) -> int:
        return self._insert(
            TrainingRun,
            name=name,
            status=JobStatus.PENDING,
            config=config,
            total_steps=total_steps,
            attempt=1,
            created_at=_NOW,
        )

    def claim_training_run(self, run_id: int, attempt: int, worker: str) -> bool:
        """PENDING (this attempt) -> RUNNING for ``worker``."""
        with self._tx() as s:
            now = self.now(s)
            stmt = (
                update(TrainingRun)
                .where(
                    TrainingRun.id == run_id,
                    TrainingRun.status == JobStatus.PENDING,
                    TrainingRun.attempt == attempt,
                )
                .values(
                    status=JobStatus.RUNNING,
                    worker=worker,
                    heartbeat_at=now,
                    started_at=func.coalesce(TrainingRun.started_at, now),
                )
            )
            return self._cas(s, stmt)

    def _run_running(self, run_id: int, attempt: int, worker: str) -> Any:
        return and_(
            TrainingRun.id == run_id,
            TrainingRun.status == JobStatus.RUNNING,
            TrainingRun.attempt == attempt,
            TrainingRun.worker == worker,
        )

    def training_progress(
        self,
        run_id: int,
        attempt: int,
        worker: str,
        step: int,
        checkpoint_sha256: str | None = None,
        total_steps: int | None = None,
        artifacts: dict[str, Any] | None = None,
    ) -> bool:
        """Heartbeat + progress; False means this worker lost the run (cancelled or reaped): stop.

        :param artifacts: the run's loss log and sample grids as the worker has uploaded them so far
            (replaces the stored value: only the run's owner writes it)."""
        values: dict[str, Any] = {"step": step}
        if total_steps:
            values["total_steps"] = total_steps
        if checkpoint_sha256:
            values["last_checkpoint_sha256"] = checkpoint_sha256
        if artifacts is not None:
            values["artifacts"] = artifacts
        values["heartbeat_at"] = _NOW
        return self._update(TrainingRun, self._run_running(run_id, attempt, worker), **values)

    def heartbeat_training_run(self, run_id: int, attempt: int, worker: str) -> bool:
        return self._update(TrainingRun, self._run_running(run_id, attempt, worker), heartbeat_at=_NOW)

    def complete_training_run(
        self, run_id: int, attempt: int, worker: str, checkpoint_sha256: str, config: dict[str, Any]
    ) -> int | None:
        """RUNNING -> COMPLETE and register the final checkpoint as a PENDING supernet (one transaction)."""
        with self._tx() as s:
            now = self.now(s)
            run = s.get(TrainingRun, run_id)
            if run is None:
                return None
            supernet = Supernet(
                name=run.name,
                status=JobStatus.PENDING,
                artifact_sha256=checkpoint_sha256,
                config=config,
                training_run_id=run_id,
                created_at=now,
            )
            s.add(supernet)
            s.flush()
            stmt = (
                update(TrainingRun)
                .where(self._run_running(run_id, attempt, worker))
                .values(
                    status=JobStatus.COMPLETE,
                    ended_at=now,
                    last_checkpoint_sha256=checkpoint_sha256,
                    supernet_id=supernet.id,
                    step=TrainingRun.total_steps,
                )
            )
            if not self._cas(s, stmt):
                s.rollback()
                return None
            return supernet.id

    def interrupt_training_run(
        self,
        run_id: int,
        attempt: int,
        worker: str,
        step: int,
        checkpoint_sha256: str | None,
        artifacts: dict[str, Any] | None = None,
    ) -> bool:
        """RUNNING -> INTERRUPTED: a stop request ended this worker's training before the run finished.

        The run keeps its last checkpoint (``checkpoint_sha256`` when the worker wrote one on stopping)
        and registers no supernet; :meth:`resume_interrupted_training_runs` sends it again."""
        values: dict[str, Any] = {"status": JobStatus.INTERRUPTED, "heartbeat_at": _NOW}
        if checkpoint_sha256:
            values |= {"last_checkpoint_sha256": checkpoint_sha256, "step": step}
        if artifacts is not None:
            values["artifacts"] = artifacts
        return self._update(TrainingRun, self._run_running(run_id, attempt, worker), **values)

    def resume_interrupted_training_runs(self) -> list[tuple[int, int]]:
        """INTERRUPTED -> PENDING (same attempt: an interruption is not a lost worker); returns
        ``(run_id, attempt)`` for each run to send again."""
        out: list[tuple[int, int]] = []
        with self._tx() as s:
            rows = s.execute(
                select(TrainingRun.id, TrainingRun.attempt).where(TrainingRun.status == JobStatus.INTERRUPTED)
            ).all()
            for run_id, attempt in rows:
                stmt = (
                    update(TrainingRun)
                    .where(
                        TrainingRun.id == run_id,
                        TrainingRun.status == JobStatus.INTERRUPTED,
                        TrainingRun.attempt == attempt,
                    )
                    .values(status=JobStatus.PENDING, worker=None)
                )
                if self._cas(s, stmt):
                    out.append((run_id, attempt))
        return out

    def fail_training_run(self, run_id: int, attempt: int, worker: str | None, error: str) -> bool:
        conditions = [
            TrainingRun.id == run_id,
            TrainingRun.attempt == attempt,
            TrainingRun.status.in_((JobStatus.PENDING, JobStatus.RUNNING)),
        ]
        if worker is not None:
            conditions.append(TrainingRun.worker == worker)
        return self._update(
            TrainingRun, *conditions, status=JobStatus.FAILED, error=error[:4000], ended_at=_NOW
        )

    def cancel_training_run(self, run_id: int) -> bool:
        return self._transition(
            TrainingRun,
            run_id,
            (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.INTERRUPTED),
            status=JobStatus.CANCELLED,
            ended_at=_NOW,
        )

    def reap_training_runs(self, stale_after_s: float, max_attempts: int) -> list[tuple[int, int]]:
        """Stale RUNNING runs -> PENDING with attempt+1 (to be sent again), or FAILED after the limit.

        Returns ``(run_id, attempt)`` for each run to send again."""
        out: list[tuple[int, int]] = []
        with self._tx() as s:
            cutoff = self.now(s) - timedelta(seconds=stale_after_s)
            rows = s.execute(
                select(TrainingRun.id, TrainingRun.attempt).where(
                    TrainingRun.status == JobStatus.RUNNING, TrainingRun.heartbeat_at < cutoff
                )
            ).all()
            for run_id, attempt in rows:
                base = update(TrainingRun).where(
                    TrainingRun.id == run_id,
                    TrainingRun.status == JobStatus.RUNNING,
                    TrainingRun.attempt == attempt,
                    TrainingRun.heartbeat_at < cutoff,
                )
                if attempt < max_attempts:
                    if self._cas(s, base.values(status=JobStatus.PENDING, attempt=attempt + 1, worker=None)):
                        out.append((run_id, attempt + 1))
                else:
                    msg = f"worker lost {attempt} times (no heartbeat for {stale_after_s:.0f} s)"
                    self._cas(s, base.values(status=JobStatus.FAILED, error=msg, ended_at=self.now(s)))
        return out

    def get_training_run(self, run_id: int) -> TrainingRunRecord | None:
        return self._get(TrainingRun, TrainingRunRecord, run_id)

    def list_training_runs(self) -> list[TrainingRunRecord]:
        return self._list(TrainingRun, TrainingRunRecord)

    # ------------------------------------------------------------------ searches
    def create_search(
        self,
        name: str,
        supernet_id: int,
        reference_stats_id: int,
        config: dict[str, Any],
        latency_table_id: int | None = None,
    ) -> int:
        return self._insert(
            Search,
            name=name,
            supernet_id=supernet_id,
            reference_stats_id=reference_stats_id,
            latency_table_id=latency_table_id,
            config=config,
            status=JobStatus.RUNNING,
            generation=0,
            created_at=_NOW,
            updated_at=_NOW,
        )

    def get_search(self, search_id: int, *, with_state: bool = True) -> SearchRecord | None:
        """A search; ``with_state=False`` leaves its algorithm state (megabytes late in a large search)
        unread: the record's ``algorithm_state`` is then None (see :meth:`search_state`)."""
        if with_state:
            return self._get(Search, SearchRecord, search_id)
        if not valid_id(search_id):
            return None
        with self._tx() as s:
            row = s.get(Search, search_id, options=[defer(Search.algorithm_state, raiseload=True)])
            if row is None:
                return None
            values = {
                f.name: getattr(row, f.name) for f in fields(SearchRecord) if f.name != "algorithm_state"
            }
            return SearchRecord(**values, algorithm_state=None)

    def search_state(self, search_id: int) -> dict[str, Any] | None:
        """A search's stored algorithm state alone (None before its first generation)."""
        if not valid_id(search_id):
            return None
        with self._tx() as s:
            return s.scalar(select(Search.algorithm_state).where(Search.id == search_id))

    def list_searches(self, status: JobStatus | None = None) -> list[SearchRecord]:
        where = [] if status is None else [Search.status == status]
        return self._list(Search, SearchRecord, *where)

    def active_search_ids(self) -> list[int]:
        with self._tx() as s:
            return list(
                s.scalars(select(Search.id).where(Search.status.in_(ACTIVE_SEARCH)).order_by(Search.id))
            )

    def acquire_lease(self, search_id: int, controller_id: str, ttl_s: float) -> bool:
        """Take or renew the right to drive a search: exactly one controller per search across replicas."""
        with self._tx() as s:
            now = self.now(s)
            stmt = (
                update(Search)
                .where(
                    Search.id == search_id,
                    Search.status.in_(ACTIVE_SEARCH),
                    or_(
                        Search.controller_id.is_(None),
                        Search.controller_id == controller_id,
                        Search.lease_until < now,
                    ),
                )
                .values(controller_id=controller_id, lease_until=now + timedelta(seconds=ttl_s))
            )
            return self._cas(s, stmt)

    def release_lease(self, search_id: int, controller_id: str) -> bool:
        return self._update(
            Search,
            Search.id == search_id,
            Search.controller_id == controller_id,
            controller_id=None,
            lease_until=None,
        )

    def _lease_held(
        self, search_id: int, controller_id: str, status: Sequence[JobStatus] = ACTIVE_SEARCH
    ) -> Any:
        return and_(Search.id == search_id, Search.controller_id == controller_id, Search.status.in_(status))

    def start_generation(
        self,
        search_id: int,
        controller_id: str,
        generation: int,
        genomes: Sequence[Sequence[int]],
        algorithm_state: dict[str, Any],
        n_images: int,
        *,
        phase: str = "search",
        status: JobStatus = JobStatus.RUNNING,
        told_generation: int | None = None,
        result: dict[str, Any] | None = None,
    ) -> bool:
        """Persist a generation's genomes (new candidates for unseen ones) and the algorithm state after
        ``ask`` in one transaction, if this controller still holds the lease and the generation is new.
        With ``told_generation``, that generation is marked told in the same transaction (the state then
        holds its ``tell`` too: written once per generation), and ``result`` (the front so far) stored."""
        extra = {} if result is None else {"result": result}
        with self._tx() as s:
            now = self.now(s)
            if told_generation is not None and not self._cas(s, _mark_told(search_id, told_generation)):
                return False
            stmt = (
                update(Search)
                .where(self._lease_held(search_id, controller_id), Search.generation == generation - 1)
                .values(generation=generation, algorithm_state=algorithm_state, updated_at=now, status=status)
                .values(**extra)
            )
            if generation == 0:
                stmt = (
                    update(Search)
                    .where(self._lease_held(search_id, controller_id), Search.algorithm_state.is_(None))
                    .values(algorithm_state=algorithm_state, updated_at=now, status=status)
                )
            if not self._cas(s, stmt):
                s.rollback()
                return False
            hashes = self._add_candidates(s, search_id, phase, generation, genomes, n_images, now)
            s.add(
                SearchGeneration(search_id=search_id, generation=generation, genome_hashes=hashes, told=False)
            )
            return True

    def add_candidates(
        self,
        search_id: int,
        controller_id: str,
        generation: int,
        genomes: Sequence[Sequence[int]],
        n_images: int,
        *,
        phase: str,
    ) -> bool:
        """New WAITING candidates of ``phase`` with ``n_images`` images for the genomes that have none
        yet (a multi-fidelity rung's promoted genomes), if this controller holds the search's lease
        (the search row is locked for the transaction: a controller taking the lease over waits)."""
        with self._tx() as s:
            held = s.execute(
                select(Search.id).where(self._lease_held(search_id, controller_id)).with_for_update()
            ).first()
            if held is None:
                return False
            self._add_candidates(s, search_id, phase, generation, genomes, n_images, self.now(s))
            return True

    @staticmethod
    def _add_candidates(
        s: Session,
        search_id: int,
        phase: str,
        generation: int,
        genomes: Sequence[Sequence[int]],
        n_images: int,
        now: datetime,
    ) -> list[str]:
        """Add a WAITING candidate per genome with no row of ``phase`` yet; the genomes' hashes."""
        hashes = [genome_hash(g) for g in genomes]
        existing = set(
            s.scalars(
                select(Candidate.genome_hash).where(
                    Candidate.search_id == search_id,
                    Candidate.phase == phase,
                    Candidate.genome_hash.in_(hashes),
                )
            )
        )
        rows = []
        for genome, h in zip(genomes, hashes, strict=True):
            if h in existing:
                continue
            existing.add(h)
            rows.append({"search_id": search_id, "phase": phase, "generation": generation,
                         "genome": [int(g) for g in genome], "genome_hash": h, "n_images": n_images,
                         "state": CandidateState.WAITING, "attempt": 1, "sent_attempt": 0,
                         "created_at": now})  # fmt: skip
        if rows:  # one bulk INSERT, no ORM objects (a generation of 1,000 in one round trip)
            s.execute(insert(Candidate), rows)
        return hashes

    def get_generation(self, search_id: int, generation: int) -> GenerationRecord | None:
        return self._get(SearchGeneration, GenerationRecord, (search_id, generation))

    def tell_generation(
        self,
        search_id: int,
        controller_id: str,
        generation: int,
        algorithm_state: dict[str, Any],
        result: dict[str, Any] | None = None,
    ) -> bool:
        """Mark a generation told and store the algorithm state after ``tell`` and, when given, the
        search's result so far (its front: read paths never rebuild the algorithm) in one transaction."""
        extra = {} if result is None else {"result": result}
        with self._tx() as s:
            ok = self._cas(s, _mark_told(search_id, generation))
            ok = ok and self._cas(
                s,
                update(Search)
                .where(self._lease_held(search_id, controller_id))
                .values(algorithm_state=algorithm_state, updated_at=self.now(s), **extra),
            )
            if not ok:
                s.rollback()
            return ok

    def finish_search(
        self,
        search_id: int,
        controller_id: str,
        result: dict[str, Any],
        status: JobStatus = JobStatus.COMPLETE,
    ) -> bool:
        return self._update(
            Search,
            self._lease_held(search_id, controller_id),
            status=status,
            result=result,
            ended_at=_NOW,
            updated_at=_NOW,
            controller_id=None,
        )

    def set_search_result(self, search_id: int, controller_id: str, result: dict[str, Any]) -> bool:
        return self._update(
            Search, self._lease_held(search_id, controller_id), result=result, updated_at=_NOW
        )

    def fail_search(self, search_id: int, error: str) -> bool:
        return self._transition(
            Search,
            search_id,
            ACTIVE_SEARCH,
            status=JobStatus.FAILED,
            error=error[:4000],
            ended_at=_NOW,
            updated_at=_NOW,
        )

    def cancel_search(self, search_id: int) -> bool:
        """RUNNING/FINISHING -> CANCELLED. Candidates are left as they are: a WAITING one can no longer be
        claimed (claims check the search), a RUNNING one may still record its result."""
        return self._transition(
            Search,
            search_id,
            ACTIVE_SEARCH,
            status=JobStatus.CANCELLED,
            ended_at=_NOW,
            updated_at=_NOW,
            controller_id=None,
        )

    def resume_search(self, search_id: int) -> bool:
        """CANCELLED/FAILED -> RUNNING (or FINISHING); its WAITING candidates will be sent again."""
        with self._tx() as s:
            row = s.get(Search, search_id)
            if row is None or row.status not in (JobStatus.CANCELLED, JobStatus.FAILED):
                return False
            finishing = (
                s.scalar(
                    select(func.count()).where(Candidate.search_id == search_id, Candidate.phase == "final")
                )
                or 0
            ) > 0
            stmt = (
                update(Search)
                .where(Search.id == search_id, Search.status == row.status)
                .values(
                    status=JobStatus.FINISHING if finishing else JobStatus.RUNNING,
                    ended_at=None,
                    error=None,
                    updated_at=self.now(s),
                )
            )
            if not self._cas(s, stmt):
                return False
            s.execute(
                update(Candidate)
                .where(Candidate.search_id == search_id, Candidate.state == CandidateState.WAITING)
                .values(sent_attempt=0)
                .execution_options(synchronize_session=False)
            )
            return True

    # ------------------------------------------------------------------ candidates: controller side
    def candidates(
        self,
        search_id: int,
        *,
        phase: str | None = None,
        hashes: Sequence[str] | None = None,
        state: CandidateState | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[CandidateRecord]:
        # plain rows of the record's columns, no ORM objects (a generation of 1,000 is read per tell)
        columns = [getattr(Candidate, f.name) for f in fields(CandidateRecord)]
        query = select(*columns).where(Candidate.search_id == search_id).order_by(Candidate.id)
        if phase is not None:
            query = query.where(Candidate.phase == phase)
        if hashes is not None:
            query = query.where(Candidate.genome_hash.in_(list(hashes)))
        if state is not None:
            query = query.where(Candidate.state == state)
        query = query.offset(offset)
        if limit is not None:
            query = query.limit(limit)
        with self._tx() as s:
            return [_record(CandidateRecord, row) for row in s.execute(query).all()]

    def attempt_summary(self, search_id: int, phases: Sequence[str]) -> tuple[int, int]:
        """(retried attempts, distinct workers) over the search's candidates of ``phases``, counted in
        the database (the final tick of a search of 10,000 candidates reads no rows for them)."""
        query = select(
            func.coalesce(func.sum(Candidate.attempt - 1), 0),
            func.count(func.nullif(Candidate.worker, "").distinct()),
        )
        query = query.where(Candidate.search_id == search_id, Candidate.phase.in_(list(phases)))
        with self._tx() as s:
            retried, workers = s.execute(query).one()
            return int(retried), int(workers)

    def any_unfinished(self, search_id: int, phase: str, hashes: Sequence[str]) -> bool:
        """Whether a candidate of ``phase`` among ``hashes`` is neither COMPLETE nor FAILED (one id read
        at most: the controller asks this on every tick while a generation of 1,000 is evaluated)."""
        finished = (CandidateState.COMPLETE, CandidateState.FAILED)
        query = select(Candidate.id).where(
            Candidate.search_id == search_id,
            Candidate.phase == phase,
            Candidate.genome_hash.in_(list(hashes)),
            Candidate.state.not_in(finished),
        )
        with self._tx() as s:
            return s.execute(query.limit(1)).first() is not None

    def count_candidates(self, search_id: int, phase: str | None = None) -> dict[str, int]:
        with self._tx() as s:
            query = (
                select(Candidate.state, func.count())
                .where(Candidate.search_id == search_id)
                .group_by(Candidate.state)
            )
            if phase is not None:
                query = query.where(Candidate.phase == phase)
            counts = {state.value: 0 for state in CandidateState}
            for state, n in s.execute(query).all():
                counts[CandidateState(state).value] = n
            return counts

    def get_candidate(self, candidate_id: int) -> CandidateRecord | None:
        return self._get(Candidate, CandidateRecord, candidate_id)

    def candidates_to_send(self, search_id: int, resend_after_s: float) -> list[Unsent]:
        """WAITING candidates whose current attempt was never sent, or sent long ago and never claimed
        (three columns only: a generation of 1,000 is read on every tick)."""
        with self._tx() as s:
            cutoff = self.now(s) - timedelta(seconds=resend_after_s)
            query = select(Candidate.id, Candidate.attempt, Candidate.sent_attempt).where(
                Candidate.search_id == search_id,
                Candidate.state == CandidateState.WAITING,
                or_(Candidate.sent_attempt != Candidate.attempt, Candidate.sent_at < cutoff),
            )
            return [Unsent(*row) for row in s.execute(query.order_by(Candidate.id)).all()]

    def mark_sent(self, candidate_id: int, attempt: int) -> bool:
        return self._update(
            Candidate,
            Candidate.id == candidate_id,
            Candidate.state == CandidateState.WAITING,
            Candidate.attempt == attempt,
            sent_attempt=attempt,
            sent_at=_NOW,
        )

    def mark_sent_many(self, sent: Sequence[tuple[int, int]]) -> int:
        """:meth:`mark_sent` for many ``(candidate_id, attempt)`` in one transaction (a generation of
        1,000 is one round trip per attempt number, not 1,000); how many were still WAITING there."""
        by_attempt: dict[int, list[int]] = {}
        for candidate_id, attempt in sent:
            by_attempt.setdefault(attempt, []).append(candidate_id)
        marked = 0
        with self._tx() as s:
            now = self.now(s)
            for attempt, ids in by_attempt.items():
                stmt = (
                    update(Candidate)
                    .where(Candidate.id.in_(ids), Candidate.state == CandidateState.WAITING,
                           Candidate.attempt == attempt)
                    .values(sent_attempt=attempt, sent_at=now)
                )  # fmt: skip
                marked += s.execute(stmt.execution_options(synchronize_session=False)).rowcount
        return marked

    def reap_candidates(self, search_id: int, stale_after_s: float, max_attempts: int) -> tuple[int, int]:
        """RUNNING candidates with a stale heartbeat (dead worker) -> WAITING with attempt+1, or FAILED
        after ``max_attempts``. Returns (retried, failed)."""
        retried = failed = 0
        with self._tx() as s:
            now = self.now(s)
            cutoff = now - timedelta(seconds=stale_after_s)
            rows = s.execute(
                select(Candidate.id, Candidate.attempt).where(
                    Candidate.search_id == search_id,
                    Candidate.state == CandidateState.RUNNING,
                    Candidate.heartbeat_at < cutoff,
                )
            ).all()
            for cid, attempt in rows:
                base = update(Candidate).where(
                    Candidate.id == cid,
                    Candidate.state == CandidateState.RUNNING,
                    Candidate.attempt == attempt,
                    Candidate.heartbeat_at < cutoff,
                )
                if attempt < max_attempts:
                    values = {"state": CandidateState.WAITING, "attempt": attempt + 1, "worker": None}
                    retried += self._cas(s, base.values(**values))
                else:
                    msg = f"worker lost {attempt} times (no heartbeat for {stale_after_s:.0f} s)"
                    values = {"state": CandidateState.FAILED, "error": msg, "ended_at": now}
                    failed += self._cas(s, base.values(**values))
        return retried, failed

    # ------------------------------------------------------------------ candidates: worker side (CAS)
    def claim_candidate(self, candidate_id: int, attempt: int, worker: str) -> bool:
        """WAITING (this attempt, search active) -> RUNNING for ``worker``. A redelivered or stale message
        loses and must be dropped."""
        active = exists().where(Search.id == Candidate.search_id, Search.status.in_(ACTIVE_SEARCH))
        return self._update(
            Candidate,
            Candidate.id == candidate_id,
            Candidate.state == CandidateState.WAITING,
            Candidate.attempt == attempt,
            active,
            state=CandidateState.RUNNING,
            worker=worker,
            heartbeat_at=_NOW,
            started_at=_NOW,
        )

    def _running(self, candidate_id: int, attempt: int, worker: str) -> Any:
        return and_(
            Candidate.id == candidate_id,
            Candidate.state == CandidateState.RUNNING,
            Candidate.attempt == attempt,
            Candidate.worker == worker,
        )

    def heartbeat(self, candidate_id: int, attempt: int, worker: str) -> bool:
        return self._update(Candidate, self._running(candidate_id, attempt, worker), heartbeat_at=_NOW)

    def complete_candidate(
        self, candidate_id: int, attempt: int, worker: str, metrics: dict[str, Any]
    ) -> bool:
        """RUNNING -> COMPLETE with metrics (``fid``, ``gflops``, ...). Recorded once: a second call loses."""
        return self._update(
            Candidate,
            self._running(candidate_id, attempt, worker),
            state=CandidateState.COMPLETE,
            metrics=encode_metrics(metrics),
            fid=_finite_or_none(metrics.get("fid")),
            gflops=_finite_or_none(metrics.get("gflops")),
            error=None,  # a reason it waited (an infrastructure release) no longer applies
            ended_at=_NOW,
        )

    def release_candidate(
        self,
        candidate_id: int,
        attempt: int,
        worker: str,
        reason: str = "infrastructure error",
        *,
        max_releases: int | None = None,
        min_age_s: float = 0.0,
    ) -> CandidateState | None:
        """RUNNING -> WAITING (same attempt, marked unsent so the controller sends it again at once): the
        worker could not run it for an infrastructure reason (database, broker, artifact store I/O),
        which is no fault of the candidate and costs it no attempt. ``reason`` stays in ``error`` while
        it waits, and its releases are counted under ``metrics["infrastructure"]`` (replaced by the real
        metrics when it completes).

        Bounded: a candidate already released ``max_releases`` times, the first of them at least
        ``min_age_s`` ago (an outage shorter than that never fails it), is FAILED with ``reason`` instead
        (e.g. an artifact lost for good). Returns the new state, None if this worker no longer owns it."""
        with self._tx() as s:
            now = self.now(s)
            metrics = s.scalar(select(Candidate.metrics).where(self._running(candidate_id, attempt, worker)))
            book = dict((metrics or {}).get(INFRA_RELEASES) or {})
            released = int(book.get("releases", 0))
            first = datetime.fromisoformat(book["first_at"]) if "first_at" in book else now
            age_s = (now - first).total_seconds()
            book = {"releases": released + 1, "first_at": first.isoformat(), "last_error": reason[:500]}
            stmt = update(Candidate).where(self._running(candidate_id, attempt, worker))
            if max_releases is not None and released >= max_releases and age_s >= min_age_s:
                error = f"infrastructure error {released + 1} times in {age_s:.0f} s; the last: {reason}"
                values = {"state": CandidateState.FAILED, "error": error[:4000], "ended_at": now}
                book["releases"] = released  # this one is a failure, not a release
            else:
                values = {"state": CandidateState.WAITING, "worker": None, "sent_attempt": 0,
                          "heartbeat_at": None, "started_at": None,
                          "error": f"waiting after an infrastructure error: {reason}"[:4000]}  # fmt: skip
            if not self._cas(s, stmt.values(metrics={INFRA_RELEASES: book}, **values)):
                return None
            return values["state"]  # type: ignore[no-any-return]

    def fail_candidate(self, candidate_id: int, attempt: int, worker: str, error: str) -> bool:
        return self._update(
            Candidate,
            self._running(candidate_id, attempt, worker),
            state=CandidateState.FAILED,
            error=error[:4000],
            ended_at=_NOW,
        )
