"""Request and response schemas (separate from the tables)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ddsm_core.cli.search_cmd import DEFAULT_SEARCH as DEFAULTS  # the same defaults as `ddsm search`


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# ---------------------------------------------------------------- supernets and training
class SupernetRegister(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    checkpoint_path: str = Field(description="A checkpoint (or training run) folder readable by the API.")


class SupernetOut(Out):
    id: int
    name: str
    status: str
    artifact_sha256: str
    gflops: dict[str, Any] | None
    training_run_id: int | None
    error: str | None
    created_at: datetime


class TrainingRunCreate(BaseModel):
    name: str = Field(default="supernet", min_length=1, max_length=200)
    preset: str = "digits"
    train: dict[str, Any] = Field(
        default_factory=dict, description="TrainConfig overrides, e.g. {'steps': 500}"
    )
    model: dict[str, Any] = Field(default_factory=dict, description="UNetConfig overrides")


class TrainingRunOut(Out):
    id: int
    name: str
    status: str
    config: dict[str, Any]
    step: int
    total_steps: int
    progress: float
    attempt: int
    worker: str | None
    supernet_id: int | None
    last_checkpoint_sha256: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None


# ---------------------------------------------------------------- reference statistics
class ReferenceStatsCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    dataset: str = Field(default="digits", description="Dataset to compute statistics of (on a worker).")
    extractor: str = Field(
        default="auto", description="auto (the dataset's domain extractor if any), domain, inception."
    )
    path: str | None = Field(default=None, description="Register an existing .npz instead of computing one.")


class ReferenceStatsOut(Out):
    id: int
    name: str
    dataset: str
    extractor: str
    status: str
    artifact_sha256: str | None
    n_images: int | None
    error: str | None
    created_at: datetime


# ---------------------------------------------------------------- searches
class SearchCreate(BaseModel):
    name: str = Field(default="search", min_length=1, max_length=200)
    supernet_id: int
    reference_stats_id: int
    sampler: str = DEFAULTS["sampler"]
    steps: int = Field(default=DEFAULTS["steps"], ge=2, le=1000)
    widths: list[float] | None = Field(
        default=None, description="Subset of the supernet's widths; default all."
    )
    population: int = Field(default=DEFAULTS["population"], ge=2, le=10_000, description="Paper: 50.")
    generations: int = Field(default=DEFAULTS["generations"], ge=1, le=10_000, description="Paper: 10.")
    n_images: int = Field(default=DEFAULTS["images"], ge=2, description="Images per candidate.")
    final_images: int = Field(default=DEFAULTS["final_images"], ge=2, description="Images per finalist.")
    weight: float = Field(default=DEFAULTS["weight"], ge=0, description="Pick: argmin FID + weight * GFLOPs.")
    seed: int = Field(default=0, description="Seed of NSGA-II.")
    eval_seed: int = Field(default=0, description="Image i of every candidate uses eval_seed + i.")
    batch_size: int = Field(default=250, ge=1)
    mutation_rate: float = Field(default=0.001, ge=0, le=1, description="Per gene (paper: 0.001).")
    crossover: str = "one_point"


class SearchProgress(BaseModel):
    generations_done: int
    generations: int
    candidates: dict[str, int]
    percent: float


class SearchOut(Out):
    id: int
    name: str
    status: str
    supernet_id: int
    reference_stats_id: int
    config: dict[str, Any]
    progress: SearchProgress
    front: list[dict[str, Any]]
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None


class CandidateOut(Out):
    id: int
    phase: str
    generation: int
    genome: list[int]
    state: str
    attempt: int
    worker: str | None
    n_images: int
    fid: float | None
    gflops: float | None
    metrics: dict[str, Any] | None
    error: str | None
    started_at: datetime | None
    ended_at: datetime | None


class CandidatePage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[CandidateOut]
