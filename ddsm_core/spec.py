"""What a search is: its settings, the one set of defaults, named profiles, genome -> strategy and
the finalists. Torch-free (the API process imports it).

``ddsm search``, ``ddsm demo``, the REST schema (``POST /searches``) and the workers all read a search
from here: the CLI options and the REST fields take their defaults, allowed values and bounds from
:data:`DEFAULTS`, :data:`LIMITS` and :data:`~ddsm_core.strategy.SAMPLERS`; nothing else writes a default.

    spec = profile("paper").replace(weight=0.5).bind(model.config.widths)
    spec.strategy(genome); spec.finalists(front); SearchSpec.from_json(spec.to_json()) == spec
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ddsm_core.costs import CostTable, strategy_gflops
from ddsm_core.errors import ConfigError, choices_message
from ddsm_core.search import CROSSOVERS, Candidate, Genome, SearchConfig, knee_point
from ddsm_core.strategy import Strategy, canonical_sampler, parse_strategy_spec

DEFAULT_SAMPLER = "ddpm"
"""DDPM (not DDIM): its fresh noise at every step forgives the small widths' errors at the noisy start."""
DEFAULT_STEPS = 20
SAMPLER_HELP = "ddpm, ddim, edm (EDM's Heun; also edm-heun) or dpmpp (DPM-Solver++; also dpm-solver++)"
"""The one description of the sampler names in every help text, led by the names outputs print."""
FINALISTS: tuple[str, ...] = ("pick", "knee", "full")
"""The finalists re-evaluated with ``final_images``: weighted pick, knee of the front, full width."""

LIMITS: dict[str, tuple[float | None, float | None]] = {
    "steps": (2, 1000),
    "population": (2, 10_000),
    "generations": (1, 10_000),
    "n_images": (2, None),  # FID needs a covariance: at least two images
    "final_images": (2, None),
    "weight": (0.0, None),
    "batch_size": (1, None),
    "mutation_rate": (0.0, 1.0),
}
"""Inclusive (low, high) bounds of the numeric settings (None: unbounded)."""


@dataclass(frozen=True)
class SearchSpec:
    """Everything that defines one search (plain values; JSON in ``searches.config``).

    The defaults are the ``cpu`` profile: a whole search on the digits supernet takes a few minutes
    on 2 CPU cores (bench/digits_search.md). ``widths`` is the width set the genomes index into; empty
    means "not bound yet" (:meth:`bind` sets the supernet's). ``seed`` seeds NSGA-II; ``eval_seed`` is
    the first of the fixed per-image noise seeds every candidate shares (common random numbers): image
    i uses seed ``eval_seed + i``. ``weight`` chooses the pick: argmin FID + weight x GFLOPs/image.
    """

    sampler: str = DEFAULT_SAMPLER
    steps: int = DEFAULT_STEPS
    widths: tuple[float, ...] = ()
    population: int = 16
    generations: int = 5
    n_images: int = 200
    final_images: int = 500
    weight: float = 1.5
    seed: int = 0
    eval_seed: int = 0
    batch_size: int = 250
    mutation_rate: float = 0.001
    crossover: str = "one_point"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sampler", canonical_sampler(self.sampler))
        object.__setattr__(self, "widths", tuple(float(w) for w in self.widths))
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if (low is not None and value < low) or (high is not None and value > high):
                bound = f">= {low}" if high is None else f"in [{low}, {high}]"
                raise ConfigError(f"{name} must be {bound}, got {value}")
        if self.crossover not in CROSSOVERS:
            raise ConfigError(choices_message("crossover", self.crossover, CROSSOVERS))
        if self.widths:
            self.search_config()  # population vs widths, genome bounds

    # ------------------------------------------------------------------ derived values
    def replace(self, **changes: Any) -> SearchSpec:
        """A copy with ``changes`` (None values are ignored: "not given")."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def bind(self, widths: Sequence[float]) -> SearchSpec:
        """This search on a supernet's width set (kept if the spec already names a subset)."""
        return self if self.widths else dataclasses.replace(self, widths=tuple(widths))

    def _require_widths(self) -> tuple[float, ...]:
        if not self.widths:
            raise ConfigError("the search has no width set yet: bind it to the supernet's widths")
        return self.widths

    def search_config(self) -> SearchConfig:
        return SearchConfig(
            steps=self.steps,
            n_widths=len(self._require_widths()),
            population=self.population,
            generations=self.generations,
            mutation_rate=self.mutation_rate,
            crossover=self.crossover,  # type: ignore[arg-type]
        )

    def strategy(self, genome: Sequence[int]) -> Strategy:
        """The strategy a genome stands for (the one place genome -> Strategy happens)."""
        return Strategy(self.sampler, self.steps, self._require_widths(), tuple(int(g) for g in genome))

    def full_width_genome(self) -> Genome:
        return (len(self._require_widths()) - 1,) * self.steps

    def gflops(self, genome: Sequence[int], table: CostTable) -> float:
        return strategy_gflops(self.strategy(genome), table)

    def pick(self, front: Sequence[Candidate]) -> Candidate:
        """The paper's weighted pick: argmin FID + weight x cost over the front."""
        if not front:
            raise ValueError("no successful evaluation: the front is empty")
        return min(front, key=lambda c: (c.fid + self.weight * c.cost, c.cost))

    def finalists(self, front: Sequence[Candidate]) -> dict[str, Genome]:
        """Genomes of :data:`FINALISTS` (pick, knee, full width) for a non-empty front."""
        if not front:
            raise ValueError("no successful evaluation: the front is empty")
        return {"pick": self.pick(front).genome, "knee": knee_point(front).genome,
                "full": self.full_width_genome()}  # fmt: skip

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown search settings {unknown}; allowed: {', '.join(sorted(names))}")
        d = dict(d)
        d["widths"] = tuple(d.get("widths") or ())
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> SearchSpec:
        return cls.from_dict(json.loads(text))


DEFAULT_PROFILE = "cpu"
"""The profile of ``ddsm search``, ``ddsm demo`` and ``POST /searches`` alike (they must agree)."""
PROFILES: dict[str, SearchSpec] = {
    "cpu": SearchSpec(),
    # the paper's NSGA-II budget; its final FID uses 50k images, 10k keeps a re-measurement affordable
    "paper": SearchSpec(
        population=50, generations=10, mutation_rate=0.001, n_images=4096, final_images=10_000, weight=0.1
    ),  # fmt: skip
}
DEFAULTS = PROFILES[DEFAULT_PROFILE]


def profile(name: str) -> SearchSpec:
    """A named profile; ConfigError listing the profiles for an unknown name."""
    if name not in PROFILES:
        raise ConfigError(choices_message("profile", name, PROFILES))
    return PROFILES[name]


def strategy_from_arg(
    text: str | os.PathLike[str], sampler: str | None, steps: int | None, widths: Sequence[float] | None
) -> Strategy:
    """``--strategy`` of ``ddsm sample`` / ``ddsm eval``: a strategy file (``pick.json``) or a report's
    ``results.json`` brings its sampler and steps (an explicit ``sampler`` / ``steps`` must match);
    the inline forms (``uniform:8/8``) use ``sampler`` / ``steps``, default :data:`DEFAULT_SAMPLER` /
    :data:`DEFAULT_STEPS`, the same as ``ddsm search``."""
    if Path(os.fspath(text)).is_file():
        return parse_strategy_spec(text, sampler, steps, widths)
    return parse_strategy_spec(text, sampler or DEFAULT_SAMPLER, steps or DEFAULT_STEPS, widths)
