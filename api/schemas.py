"""Request and response schemas (separate from the tables)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ddsm_core.spec import DEFAULTS, LIMITS, PROFILES, SAMPLER_HELP


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
    heartbeat_age_s: float | None = Field(
        default=None, description="Seconds since the worker's last heartbeat (RUNNING runs only)."
    )
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
def _setting(name: str, description: str | None = None) -> Any:
    """A search setting's field: default (the ``cpu`` profile, as ``ddsm search``) and bounds from
    ddsm_core.spec, the one place they are written."""
    low, high = LIMITS.get(name, (None, None))
    others = ", ".join(f"{p}: {getattr(spec, name)}" for p, spec in PROFILES.items())
    text = f"{description + ' ' if description else ''}({others})"
    return Field(default=getattr(DEFAULTS, name), ge=low, le=high, description=text)


class SearchCreate(BaseModel):
    """A search; every setting defaults to the ``cpu`` profile of ddsm_core.spec (as ``ddsm search``)
    and is validated again by ``SearchSpec`` (sampler names, crossover, population vs widths)."""

    name: str = Field(default="search", min_length=1, max_length=200)
    supernet_id: int
    reference_stats_id: int
    sampler: str = Field(default=DEFAULTS.sampler, description=SAMPLER_HELP)
    steps: int = _setting("steps", "Sampler steps.")
    widths: list[float] | None = Field(
        default=None, description="Subset of the supernet's widths; default all."
    )
    population: int = _setting("population")
    generations: int = _setting("generations")
    n_images: int = _setting("n_images", "Images per candidate.")
    final_images: int = _setting("final_images", "Images per finalist.")
    weight: float = _setting("weight", "Pick: argmin FID + weight * GFLOPs.")
    seed: int = Field(default=DEFAULTS.seed, description="Seed of NSGA-II.")
    eval_seed: int = Field(
        default=DEFAULTS.eval_seed, description="Image i of every candidate uses eval_seed + i."
    )
    batch_size: int = _setting("batch_size")
    mutation_rate: float = _setting("mutation_rate", "Per gene.")
    crossover: str = Field(default=DEFAULTS.crossover, description="one_point, two_point, uniform, none.")
    rungs: list[int] = Field(
        default_factory=list,
        description="Multi-fidelity rungs (image counts below n_images): only the local `ddsm search` "
        "runs them for now; the service refuses a non-empty list with 422.",
    )
    promote: float = _setting("promote", "Fraction promoted per rung (multi-fidelity).")


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
