"""SQLAlchemy 2 tables. The schema changes only through Alembic migrations (``migrations/``)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Enum, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime()}


class CandidateState(str, enum.Enum):
    WAITING = "WAITING"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"


class JobStatus(str, enum.Enum):
    """Status of supernets, reference statistics, training runs and searches."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    FINISHING = "FINISHING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    # a training run stopped by a signal: resumable from its last checkpoint, never a supernet
    INTERRUPTED = "INTERRUPTED"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    return Enum(cls, name=name, native_enum=False, length=16, validate_strings=True)


class Supernet(Base):
    __tablename__ = "supernets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "supernet_status"))
    artifact_sha256: Mapped[str] = mapped_column(String(64), index=True)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    gflops: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    training_run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id"), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime]


class ReferenceStats(Base):
    __tablename__ = "reference_stats"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    dataset: Mapped[str] = mapped_column(String(500))
    extractor: Mapped[str] = mapped_column(String(100))
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "stats_status"))
    artifact_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    n_images: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # the real-data floors recorded with the statistics (ddsm_core.floor.RealDataFloor dicts), so the
    # API shows them without reading the artifact; None: none recorded (no held-out split)
    floors: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime]


class LatencyTable(Base):
    """A supernet's latency table measured by a worker (``ddsm_core.latency.LatencyTable`` as JSON in
    ``table``), keyed by supernet, device name, dtype and batch sizes. PENDING (requested) -> RUNNING
    (claimed by ``worker``) -> COMPLETE | FAILED; ``device`` and ``threads`` are the measuring worker's."""

    __tablename__ = "latency_tables"
    id: Mapped[int] = mapped_column(primary_key=True)
    supernet_id: Mapped[int] = mapped_column(ForeignKey("supernets.id", ondelete="CASCADE"), index=True)
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "latency_status"))
    dtype: Mapped[str] = mapped_column(String(16))
    batch_sizes: Mapped[list[Any]] = mapped_column(default=list)
    repeats: Mapped[int]
    warmup: Mapped[int]
    device: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    threads: Mapped[int | None] = mapped_column(Integer, nullable=True)
    table: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)


class TrainingRun(Base):
    __tablename__ = "training_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "training_status"))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    step: Mapped[int] = mapped_column(default=0)
    total_steps: Mapped[int] = mapped_column(default=0)
    last_checkpoint_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # what the trainer wrote besides checkpoints, in the artifact store: {"log_sha256": the run's
    # log.jsonl (per-width losses), "log_step": its last step, "samples": {step: PNG grid sha256}}
    artifacts: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    supernet_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempt: Mapped[int] = mapped_column(default=0)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Search(Base):
    __tablename__ = "searches"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    supernet_id: Mapped[int] = mapped_column(ForeignKey("supernets.id"))
    reference_stats_id: Mapped[int] = mapped_column(ForeignKey("reference_stats.id"))
    # the latency table whose predictions are the search's latencies (objective latency, and the
    # predicted latency every report shows); None: GFLOPs only
    latency_table_id: Mapped[int | None] = mapped_column(ForeignKey("latency_tables.id"), nullable=True)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "search_status"), index=True)
    generation: Mapped[int] = mapped_column(default=0)
    algorithm_state: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    controller_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)


class SearchGeneration(Base):
    """Which genomes (in ask order) make up one generation; a genome evaluated before is reused."""

    __tablename__ = "search_generations"
    search_id: Mapped[int] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"), primary_key=True)
    generation: Mapped[int] = mapped_column(primary_key=True)
    genome_hashes: Mapped[list[Any]] = mapped_column(default=list)
    told: Mapped[bool] = mapped_column(default=False)


class Candidate(Base):
    __tablename__ = "candidates"
    __table_args__ = (UniqueConstraint("search_id", "phase", "genome_hash", name="uq_candidate_genome"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    search_id: Mapped[int] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"), index=True)
    phase: Mapped[str] = mapped_column(String(16), default="search")
    generation: Mapped[int]
    genome: Mapped[list[Any]]
    genome_hash: Mapped[str] = mapped_column(String(64))
    n_images: Mapped[int]
    state: Mapped[CandidateState] = mapped_column(_enum(CandidateState, "candidate_state"), index=True)
    attempt: Mapped[int] = mapped_column(default=1)
    sent_attempt: Mapped[int] = mapped_column(default=0)
    sent_at: Mapped[datetime | None] = mapped_column(nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)
    fid: Mapped[float | None] = mapped_column(Float, nullable=True)
    gflops: Mapped[float | None] = mapped_column(Float, nullable=True)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime]
