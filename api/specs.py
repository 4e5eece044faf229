"""A search's configuration as stored in the database and read by the controller and the workers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ddsm_core.costs import CostTable, strategy_gflops
from ddsm_core.errors import ConfigError
from ddsm_core.search import SearchConfig
from ddsm_core.strategy import Strategy, canonical_sampler


@dataclass(frozen=True)
class SearchSpec:
    """Everything that defines one search (plain values; JSON in ``searches.config``).

    ``widths`` is the width set the genomes index into (a subset of the supernet's, default all of it).
    ``seed`` seeds NSGA-II; ``eval_seed`` is the first of the fixed per-image noise seeds every
    candidate shares (common random numbers): image i uses seed ``eval_seed + i``.
    """

    sampler: str
    steps: int
    widths: tuple[float, ...]
    population: int = 50
    generations: int = 10
    n_images: int = 1000
    final_images: int = 5000
    weight: float = 0.1
    seed: int = 0
    eval_seed: int = 0
    batch_size: int = 250
    mutation_rate: float = 0.001
    crossover: str = "two_point"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sampler", canonical_sampler(self.sampler))
        object.__setattr__(self, "widths", tuple(float(w) for w in self.widths))
        for name in ("n_images", "final_images", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.search_config()  # validates population, generations, steps, widths

    def search_config(self) -> SearchConfig:
        return SearchConfig(
            steps=self.steps,
            n_widths=len(self.widths),
            population=self.population,
            generations=self.generations,
            mutation_rate=self.mutation_rate,
            crossover=self.crossover,  # type: ignore[arg-type]
        )

    def strategy(self, genome: Sequence[int]) -> Strategy:
        return Strategy(self.sampler, self.steps, self.widths, tuple(int(g) for g in genome))

    def full_width_genome(self) -> tuple[int, ...]:
        return (len(self.widths) - 1,) * self.steps

    def gflops(self, genome: Sequence[int], table: CostTable) -> float:
        return strategy_gflops(self.strategy(genome), table)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSpec:
        d = dict(d)
        d["widths"] = tuple(d["widths"])
        return cls(**d)


def cost_table(gflops: Mapping[str, Any]) -> CostTable:
    """The supernet's stored per-width GFLOPs (``CostTable.to_dict()``) as a CostTable."""
    return CostTable.from_dict(gflops)
