"""Request and response schemas (separate from the tables).

Every request field is typed and bounded here, so that FastAPI refuses bad input with a 422 before a
route runs and the OpenAPI document states the bounds: ids within the integer columns, finite floats,
strings length-limited and free of NUL (Postgres refuses NUL in text), names from closed lists. The
search's bounds come from ddsm_core.spec (the CLI checks the same), the names from ddsm_core.catalog.
Datetimes are stored as naive UTC; replies carry the zone (RFC 3339).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from api.db.repository import MAX_ID
from ddsm_core.catalog import DATASETS, DOMAIN_DATASETS, Extractor, NoiseSchedule
from ddsm_core.errors import ConfigError
from ddsm_core.latency import DTYPES
from ddsm_core.recipes import TRAIN_PRESETS
from ddsm_core.search import CROSSOVERS, RUNG_METRICS
from ddsm_core.spec import (
    DEFAULTS,
    LIMITS,
    MAX_WIDTHS,
    OBJECTIVES,
    PICK_RULES,
    PROFILES,
    SAMPLER_HELP,
    SEED_MAX,
    SearchSpec,
)
from ddsm_core.strategy import SAMPLER_ALIASES, SAMPLERS

NO_NUL = r"^[^\x00]*$"
MAX_RUNGS = 16
"""At most this many rungs below n_images (each is a round of tasks per generation)."""
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]
ServerPath = Annotated[str, StringConstraints(min_length=1, max_length=4096, pattern=NO_NUL)]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
Sampler = Literal[SAMPLERS + tuple(SAMPLER_ALIASES)]  # type: ignore[valid-type]
Crossover = Literal[CROSSOVERS]  # type: ignore[valid-type]
PickRule = Literal[PICK_RULES]  # type: ignore[valid-type]
Preset = Literal[tuple(TRAIN_PRESETS)]  # type: ignore[valid-type]


def utc(value: datetime) -> datetime:
    """A stored naive datetime (UTC) with its zone."""
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


UTCDatetime = Annotated[datetime, AfterValidator(utc)]
"""A stored (naive UTC) datetime, replied with its zone."""


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class In(BaseModel):
    """A request body, read strictly as its JSON schema says: unknown fields are refused (a typo is not
    silently a default), and no type is coerced (``true`` is not the integer 1, ``"5"`` not 5)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


# ---------------------------------------------------------------- supernets and training
class SupernetRegister(In):
    name: Name
    checkpoint_path: ServerPath = Field(
        description="A checkpoint (or training run) folder under the server's DDSM_CHECKPOINT_ROOTS."
    )


class SupernetOut(Out):
    id: int
    name: str
    status: str
    artifact_sha256: str
    gflops: dict[str, Any] | None
    training_run_id: int | None
    error: str | None
    created_at: UTCDatetime


MAX_LATENCY_BATCHES = 8
"""At most this many batch sizes per latency table (each is a round of timed calls per width)."""
Dtype = Literal[DTYPES]  # type: ignore[valid-type]
Objective = Literal[OBJECTIVES]  # type: ignore[valid-type]
RungMetric = Literal[RUNG_METRICS]  # type: ignore[valid-type]


class LatencyTableRequest(In):
    """A latency table to measure on a worker (the eval queue: the devices that evaluate candidates)."""

    dtype: Dtype = Field(default="float32", description=f"{', '.join(DTYPES)}: weights and inputs.")
    batch_sizes: list[Annotated[int, Field(ge=1, le=int(LIMITS["batch_size"][1]))]] = Field(
        default_factory=lambda: [1, 64],
        min_length=1,
        max_length=MAX_LATENCY_BATCHES,
        json_schema_extra={"uniqueItems": True},
        description="Batch sizes to time (unique); a search's batch size between or beyond them is "
        "interpolated linearly.",
    )
    repeats: int = Field(
        default=7, ge=1, le=100, description="Timed calls per width and batch size (median)."
    )
    warmup: int = Field(default=2, ge=0, le=20, description="Untimed calls first.")

    @field_validator("batch_sizes")
    @classmethod
    def _unique_batches(cls, sizes: list[int]) -> list[int]:
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"duplicate batch sizes in {sizes}")
        return sorted(sizes)


class LatencyTableOut(Out):
    id: int
    supernet_id: int
    status: str
    dtype: str
    batch_sizes: list[int]
    repeats: int
    warmup: int
    device: str | None = Field(description="The measuring worker's device (None until measured).")
    threads: int | None
    table: dict[str, Any] | None = Field(description="The ddsm-latency-table JSON (`ddsm latency`'s).")
    worker: str | None
    error: str | None
    created_at: UTCDatetime
    ended_at: UTCDatetime | None


def _f(low: float, high: float, *, below: bool = False, above: bool = False) -> Any:
    """An optional bounded override: ``low <= x <= high`` (``below``: x < high; ``above``: x > low)."""
    return Field(
        default=None,
        **({"gt": low} if above else {"ge": low}),
        **({"lt": high} if below else {"le": high}),
    )


Count = int | None
Fraction = float | None
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]
Mult = Annotated[int, Field(ge=1, le=64)]
Resolution = Annotated[int, Field(ge=1, le=1024)]


class TrainOverrides(In):
    """Fields of ``ddsm_core.recipes.TrainConfig`` a REST client may change (None / absent: the preset's
    recipe). Where the data lives and whether to download it are the worker's, not a client's."""

    dataset: str | None = Field(
        default=None,
        max_length=4096,
        pattern=NO_NUL,
        description=f"{', '.join(DATASETS)}, or a folder of images under DDSM_CHECKPOINT_ROOTS.",
    )
    steps: Count = _f(1, 10_000_000)
    batch_size: Count = _f(1, 4096)
    lr: Fraction = _f(0.0, 1.0, above=True)
    warmup_steps: Count = _f(0, 10_000_000)
    lr_schedule: Literal["constant", "cosine"] | None = None
    min_lr_ratio: Fraction = _f(0.0, 1.0)
    adam_betas: list[Beta] | None = Field(default=None, min_length=2, max_length=2)
    weight_decay: Fraction = _f(0.0, 1.0)
    grad_clip: Fraction = _f(0.0, 1e6)
    ema_decay: Fraction = _f(0.0, 1.0, below=True)
    ema_warmup: bool | None = None
    n_middle: Count = _f(0, MAX_WIDTHS)
    distill: bool | None = None
    dropout: Fraction = _f(0.0, 1.0, below=True)
    label_dropout: Fraction = _f(0.0, 1.0, below=True)
    hflip: bool | None = None
    noise_schedule: NoiseSchedule | None = None
    timesteps: Count = _f(2, 100_000)
    seed: Annotated[int, Field(ge=0, le=SEED_MAX)] | None = None
    amp: bool | None = None
    log_every: Count = _f(1, 10_000_000)
    eval_every: Count = _f(0, 10_000_000)
    eval_images: Count = _f(0, 100_000)
    sample_every: Count = _f(0, 10_000_000)
    sample_sampler: Sampler | None = None
    sample_steps: Count = _f(1, 1000)
    sample_n: Count = _f(0, 1024)
    checkpoint_every: Count = _f(0, 10_000_000)
    keep_last: Count = _f(1, 1000)
    num_workers: Count = _f(0, 64)


class ModelOverrides(In):
    """Fields of ``ddsm_core.config.UNetConfig`` (None / absent: the preset's); the combination is
    checked by UNetConfig itself at POST (divisibility, attention resolutions)."""

    image_size: Count = _f(1, 1024)
    in_channels: Count = _f(1, 4)
    model_channels: Count = _f(1, 1024)
    channel_mult: list[Mult] | None = Field(default=None, min_length=1, max_length=8)
    num_res_blocks: Count = _f(1, 16)
    attention_resolutions: list[Resolution] | None = Field(default=None, max_length=8)
    dropout: Fraction = _f(0.0, 1.0, below=True)
    num_heads: Count = _f(1, 64)
    num_head_channels: Annotated[int, Field(ge=-1, le=1024)] | None = None
    num_groups: Count = _f(1, 1024)
    widths: list[Annotated[float, Field(gt=0.0, le=1.0)]] | None = Field(
        default=None, min_length=1, max_length=MAX_WIDTHS
    )
    num_classes: Count = _f(1, 100_000)
    null_label: bool | None = None
    learn_sigma: bool | None = None


class TrainingRunCreate(In):
    name: Name = "supernet"
    preset: Preset = Field(default="digits", description="UNet preset and its training recipe.")
    train: TrainOverrides = Field(default_factory=TrainOverrides, description="TrainConfig overrides.")
    model: ModelOverrides = Field(default_factory=ModelOverrides, description="UNetConfig overrides.")


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
    sample_steps: list[int] = Field(
        default_factory=list, description="Steps with a sample grid (GET .../samples.png?step=)."
    )
    loss_log_step: int | None = Field(
        default=None, description="Last step of the uploaded loss log (GET .../losses), None before one."
    )
    error: str | None
    created_at: UTCDatetime
    started_at: UTCDatetime | None
    ended_at: UTCDatetime | None


class TrainingLosses(Out):
    steps: list[int] = Field(description="Logged steps (the last of each averaged bucket).")
    losses: dict[str, list[float | None]] = Field(
        description="Per width (e.g. '0.25', '1'): its loss at each step."
    )
    logged: int = Field(description="Steps in the log; more than 400 are averaged in consecutive buckets.")
    log_step: int | None = Field(description="The last logged step when the log was uploaded.")


# ---------------------------------------------------------------- reference statistics
class ReferenceStatsCreate(In):
    name: Name
    dataset: str = Field(
        default="digits",
        min_length=1,
        max_length=200,
        pattern=NO_NUL,
        description=f"Dataset to compute statistics of on a worker: {', '.join(DATASETS)} "
        "(with ``path``: a label for the registered file).",
    )
    extractor: Extractor = Field(
        default="auto", description="auto (the dataset's domain extractor if any), domain, inception."
    )
    path: ServerPath | None = Field(
        default=None, description="Register an existing .npz (under DDSM_CHECKPOINT_ROOTS) instead."
    )

    @model_validator(mode="after")
    def _computable(self) -> ReferenceStatsCreate:
        """What a worker would compute must exist: a bundled dataset, with an extractor made for it."""
        if self.path is not None:
            return self
        if self.dataset not in DATASETS:
            raise ValueError(
                f"unknown dataset {self.dataset!r}: a worker computes statistics of {', '.join(DATASETS)}; "
                "for a folder of images, compute the .npz with `ddsm ref-stats` and register it with `path`"
            )
        domain = self.extractor == "domain" or self.extractor.startswith("domain:")
        if domain and self.dataset not in DOMAIN_DATASETS:
            raise ValueError(
                f"no domain feature extractor for dataset {self.dataset!r} "
                f"(they exist for {', '.join(DOMAIN_DATASETS)}): use inception or auto"
            )
        if self.extractor.startswith("domain:") and self.extractor != f"domain:{self.dataset}-cnn-v1":
            raise ValueError(f"extractor {self.extractor} is made for another dataset than {self.dataset}")
        return self


class ReferenceStatsOut(Out):
    id: int
    name: str
    dataset: str
    extractor: str
    status: str
    artifact_sha256: str | None
    n_images: int | None
    floors: list[dict[str, Any]] | None = Field(
        default=None,
        description="Real-data floors: FID of held-out real images vs these statistics, per image count.",
    )
    error: str | None
    created_at: UTCDatetime


# ---------------------------------------------------------------- searches
MAX_WARM_START = 1000
"""At most this many warm-start strategies or searches in one request (seeds beyond the population's
room are dropped anyway)."""


def _setting(name: str, description: str | None = None) -> Any:
    """A search setting's field: default (the ``cpu`` profile, as ``ddsm search``) and bounds from
    ddsm_core.spec, the one place they are written."""
    low, high = LIMITS[name]
    others = ", ".join(f"{p}: {getattr(spec, name)}" for p, spec in PROFILES.items())
    text = f"{description + ' ' if description else ''}({others})"
    return Field(default=getattr(DEFAULTS, name), ge=low, le=high, description=text)


Width = Annotated[float, Field(gt=0.0, le=1.0)]


class SearchCreate(In):
    """A search; every setting defaults to the ``cpu`` profile of ddsm_core.spec (as ``ddsm search``)
    and the whole is checked by ``SearchSpec`` (search size, image seeds, population vs widths)."""

    name: Name = "search"
    supernet_id: Id
    reference_stats_id: Id
    sampler: Sampler = Field(default=DEFAULTS.sampler, description=SAMPLER_HELP)
    steps: int = _setting("steps", "Sampler steps.")
    widths: list[Width] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_WIDTHS,
        json_schema_extra={"uniqueItems": True},
        description="Subset of the supernet's widths (unique; any order); default all.",
    )
    population: int = _setting("population")
    generations: int = _setting("generations")
    n_images: int = _setting("n_images", "Images per candidate.")
    final_images: int = _setting("final_images", "Images per finalist.")
    weight: float = _setting(
        "weight",
        "Weighted pick: argmin FID + weight * cost (the objective's unit); the pick with pick_rule "
        "weighted, else measured and reported beside the pick (finalist weighted).",
    )
    pick_rule: PickRule = Field(
        default=DEFAULTS.pick_rule,
        description="tolerance: the cheapest front member whose paired interval vs full width "
        "(final_images images from final_seed, the same for both) ends within tolerance x full width's "
        "FID, found by bisection over the front (each probe a finalist task); weighted: argmin FID + "
        "weight * cost on the search's FIDs. The weighted pick is reported beside the tolerance pick.",
    )
    tolerance: float = _setting(
        "tolerance", "Equal quality: the paired interval's upper end <= tolerance x full width's FID."
    )
    objective: Objective = Field(
        default=DEFAULTS.objective,
        description="The cost beside FID: gflops (GFLOPs/image) or latency (predicted ms/image at "
        "batch_size, from the supernet's latency table: latency_table_id, or the newest float32 table "
        "of the supernet when all of them come from one device).",
    )
    latency_table_id: Id | None = Field(
        default=None,
        description="A COMPLETE latency table of this supernet (GET /supernets/{id}/latency-tables): "
        "the search's latencies come from it. Default: as for objective; with gflops, the reports "
        "show predicted latency when such a table exists.",
    )
    seed: int = _setting("seed", "Seed of NSGA-II.")
    eval_seed: int = _setting("eval_seed", "Image i of every candidate uses eval_seed + i.")
    final_seed: Seed | None = Field(
        default=DEFAULTS.final_seed,
        description="Finalist image i uses final_seed + i (the finalists' FIDs, the tolerance pick's "
        "paired intervals, their sample grids). Default: eval_seed + n_images, the first seed after the "
        "search's, so the verdict comes from images the front was not chosen on. A value whose seeds "
        "overlap the search's is allowed but flagged (results' seeds.held_out false).",
    )
    batch_size: int = _setting("batch_size")
    mutation_rate: float = _setting("mutation_rate", "Per gene.")
    crossover: Crossover = Field(default=DEFAULTS.crossover, description=", ".join(CROSSOVERS))
    guidance: float | None = Field(
        default=DEFAULTS.guidance, ge=0, le=100, allow_inf_nan=False,
        description="Classifier-free guidance weight (a supernet trained with label dropout); both passes "
        "are counted in the GFLOPs. Default: no guidance.",
    )  # fmt: skip
    class_label: int | None = Field(
        default=DEFAULTS.class_label, ge=0, le=1_000_000,
        description="Class-conditional supernets: every image of this class. Default: seed % classes.",
    )  # fmt: skip

    warm_start: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=MAX_WARM_START,
        description="Strategies (strategy JSON, any sampler and step count, or a search's results.json: "
        "its pick, knee and front) seeding the first generation; transferred to this search's sampler and "
        "steps by noise level.",
    )
    warm_start_searches: list[int] = Field(
        default_factory=list,
        max_length=MAX_WARM_START,
        description="COMPLETE searches whose results seed the first generation (pick, knee, then front).",
    )

    rungs: list[int] = Field(
        default_factory=list,
        max_length=MAX_RUNGS,
        description="Multi-fidelity rungs: increasing image counts below n_images, e.g. [64, 256]. Each "
        "generation's new candidates are evaluated at the first rung, the best `promote` fraction goes on to "
        "the next, up to n_images (successive halving; each rung's evaluations are candidates of phase "
        "rung0, rung1, ... and `search` for the top). The same result as `ddsm search --rungs` for the same "
        "seed. Empty: every candidate at n_images.",
    )
    promote: float = _setting("promote", "Fraction promoted per rung (multi-fidelity).")
    rung_metric: RungMetric = Field(
        default=DEFAULTS.rung_metric,
        description="What ranks a rung's candidates for promotion (multi-fidelity; with no rungs it changes "
        "nothing): paired, the mean squared distance of each image's features to the full width's image of "
        "the same seed (ranks like the top-rung FID far better at few images, bench/multifidelity.md), or "
        "fid, the FID at the rung's image count.",
    )

    @field_validator("widths")
    @classmethod
    def _unique_widths(cls, widths: list[float] | None) -> list[float] | None:
        if widths is not None and len(set(widths)) != len(widths):
            raise ValueError(f"duplicate widths in {widths}")
        return sorted(widths) if widths is not None else None

    @model_validator(mode="after")
    def _spec(self) -> SearchCreate:
        try:
            self.spec()
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def spec(self, widths: tuple[float, ...] | None = None) -> SearchSpec:
        """The search this request defines (ConfigError if its settings do not fit together)."""
        # warm_start is taken by the service: it transfers the seeds to this search's grid first
        skip = {"name", "supernet_id", "reference_stats_id", "widths", "warm_start", "warm_start_searches",
                "latency_table_id"}  # fmt: skip
        fields = self.model_dump(exclude=skip)
        return SearchSpec(widths=widths if widths is not None else tuple(self.widths or ()), **fields)


class StrategyTransfer(In):
    """``ddsm strategy transfer`` over REST: a strategy mapped to another sampler and step count by
    noise level (log-SNR). The noise schedule is the supernet's (``supernet_id``, whose widths the
    strategy must use), else one by name (``schedule``, ``timesteps``; default DDPM's linear, T = 1000)."""

    strategy: dict[str, Any] = Field(
        description="A strategy file as is (pick.json, any sampler and steps) or a search's results.json "
        "(its pick)."
    )
    sampler: Sampler = Field(description=f"Target sampler: {SAMPLER_HELP}.")
    steps: int = Field(ge=LIMITS["steps"][0], le=LIMITS["steps"][1], description="Target sampler steps.")
    supernet_id: Id | None = Field(default=None, description="Take the noise schedule from this supernet.")
    schedule: NoiseSchedule | None = Field(default=None, description="Without supernet_id: linear (default).")
    timesteps: int = Field(default=1000, ge=2, le=100_000, description="The named schedule's T.")

    @model_validator(mode="after")
    def _one_schedule(self) -> StrategyTransfer:
        named = self.schedule is not None or "timesteps" in self.model_fields_set
        if self.supernet_id is not None and named:
            raise ValueError("give supernet_id or schedule/timesteps, not both (the supernet has its own)")
        return self


class RungProgress(BaseModel):
    n_images: int
    phase: str = Field(description="The phase of this rung's candidate rows (GET /searches/{id}/candidates).")
    candidates: dict[str, int]


class SearchProgress(BaseModel):
    generations_done: int
    generations: int
    candidates: dict[str, int] = Field(
        description="Candidates by state (with rungs: their evaluations at the lowest rung, one per genome)."
    )
    percent: float
    rungs: list[RungProgress] | None = Field(
        None, description="Multi-fidelity searches: the evaluations of each rung by state, lowest first."
    )


class SearchOut(Out):
    id: int
    name: str
    status: str
    supernet_id: int
    reference_stats_id: int
    latency_table_id: int | None = Field(description="The latency table the predicted latencies come from.")
    config: dict[str, Any]
    progress: SearchProgress
    front: list[dict[str, Any]]
    result: dict[str, Any] | None
    error: str | None
    created_at: UTCDatetime
    updated_at: UTCDatetime
    ended_at: UTCDatetime | None


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
    started_at: UTCDatetime | None
    ended_at: UTCDatetime | None


class CandidatePage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[CandidateOut]


# ---------------------------------------------------------------- errors
class ValidationItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class ErrorOut(BaseModel):
    """Every 4xx reply: a message, or (422 from validation) pydantic's list of what is wrong where."""

    detail: str | list[ValidationItem]


_ERRORS = {
    400: "The request names something unusable (a bad checkpoint, statistics file or strategy).",
    401: "Missing or wrong X-API-Key.",
    403: "A server path outside DDSM_CHECKPOINT_ROOTS.",
    404: "No such resource.",
    409: "The resource is not in a state that allows this.",
    413: "Request body over DDSM_MAX_BODY_BYTES.",
    422: "Invalid input: what is wrong and where.",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text} for code, text in _ERRORS.items()
}
"""The documented error replies of every route (the app's handlers give each this shape)."""
