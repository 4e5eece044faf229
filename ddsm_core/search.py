"""Step-aware strategy search: NSGA-II (pymoo) driven through ask-and-tell. Torch-free.

A genome is a tuple of width indices, one per sampler step. Two objectives are minimised: image
quality (FID) and cost (GFLOPs). Evaluation happens elsewhere (in-process for ``run_search``, on
Celery workers for the service): the driver only proposes genomes and receives their objectives.

    driver = SearchDriver(SearchSpec(widths=(0.25, 0.5, 1.0)).search_config(), seed=0)  # ddsm_core.spec
    while not driver.done:
        genomes = driver.ask()                       # only genomes not evaluated yet in this search
        driver.tell(genomes, [evaluate(g) for g in genomes])
    driver.front(); driver.pick(w=0.1); driver.knee()

``state_dict()`` is plain JSON data, never a pickle: the surviving population in pymoo's order with
its non-domination rank and crowding distance, the generation in progress, every evaluated candidate
and the random generator's state as 32-bit words. ``load_state_dict`` rebuilds NSGA-II from it, so a
search resumed from its state proposes exactly what an uninterrupted one would (same seed). States of
the old format (``ddsm-search-v1``, which carried a pickle) are never unpickled: NSGA-II restarts from
their stored population, as it would for any lost algorithm state.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.evaluator import Evaluator
from pymoo.core.mutation import Mutation
from pymoo.core.population import Population
from pymoo.core.problem import Problem
from pymoo.core.termination import NoTermination
from pymoo.operators.crossover.pntx import SinglePointCrossover, TwoPointCrossover
from pymoo.operators.crossover.ux import UniformCrossover
from pymoo.problems.static import StaticProblem

from ddsm_core.atomic import write_text_atomic
from ddsm_core.errors import ConfigError, choices_message
from ddsm_core.pick import BisectionStep, bisect_front, bisection_members, passed

Genome = tuple[int, ...]
Objectives = tuple[float, float]
CrossoverKind = Literal["two_point", "one_point", "uniform", "none"]
MutationKind = Literal["reset", "creep"]
CROSSOVERS: tuple[str, ...] = ("two_point", "one_point", "uniform", "none")
RUNG_METRICS: tuple[str, ...] = ("paired", "fid")
"""What ranks a low rung's candidates for promotion (with their cost): ``paired``, the mean squared
distance of each image's features to the full-width image of the same seed (``paired_distance`` in the
record), or ``fid`` at the rung's image count. Paired first: it ranks like the top-rung FID far better at
few images (bench/multifidelity.md: Kendall tau 0.84 vs FID's 0.24 at 64 images)."""
MUTATIONS: tuple[str, ...] = ("reset", "creep")
STATE_FORMAT = "ddsm-search-v2"
LEGACY_STATE_FORMATS = ("ddsm-search-v1",)  # held a pickle: rebuilt from the population, never unpickled


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """NSGA-II settings. The search's own settings have no defaults here: they come from
    ``ddsm_core.spec`` (``SearchSpec.search_config()``), the one place a search's defaults are written.

    ``generations`` counts evaluated populations, the initial one included (pymoo's ``n_gen``).
    ``mutation``: "reset" draws a different width index uniformly, "creep" moves one index up or
    down; either way a mutated gene always changes. ``penalty`` is the objective vector given to a
    failed evaluation: worse than any real candidate, so it never reaches the front.
    ``crossover``: one-point (the profiles' choice) crosses two uniform strategies at one step into
    exactly the "small widths early, large widths late" two-level strategies (on a toy landscape it
    reached ~20% lower FID at equal cost than two-point or uniform crossover within the paper's budget).
    ``initial`` adds warm-start genomes to the first generation next to the uniform strategies.
    """

    steps: int
    n_widths: int
    population: int
    generations: int
    mutation_rate: float
    crossover: CrossoverKind
    mutation: MutationKind = "reset"
    crossover_prob: float = 0.9
    penalty: Objectives = (1e6, 1e6)
    initial: tuple[Genome, ...] = ()

    def __post_init__(self) -> None:
        if self.steps < 2:
            raise ConfigError(f"search needs at least 2 sampler steps, got {self.steps}")
        if self.n_widths < 2:
            raise ConfigError(f"search needs at least 2 widths, got {self.n_widths}")
        if self.population < self.n_widths + len(self.initial):
            raise ConfigError(
                f"population {self.population} cannot hold the {self.n_widths} uniform strategies "
                f"plus {len(self.initial)} initial genomes; raise the population"
            )
        if self.generations < 1:
            raise ConfigError(f"generations must be >= 1, got {self.generations}")
        if not 0.0 <= self.mutation_rate <= 1.0:
            raise ConfigError(f"mutation_rate must be in [0, 1], got {self.mutation_rate}")
        if not 0.0 <= self.crossover_prob <= 1.0:
            raise ConfigError(f"crossover_prob must be in [0, 1], got {self.crossover_prob}")
        if self.mutation not in MUTATIONS:
            raise ConfigError(choices_message("mutation", self.mutation, MUTATIONS))
        if self.crossover not in CROSSOVERS:
            raise ConfigError(choices_message("crossover", self.crossover, CROSSOVERS))
        for genome in self.initial:
            self.check_genome(genome)

    def check_genome(self, genome: Sequence[int]) -> Genome:
        g = tuple(int(v) for v in genome)
        if len(g) != self.steps or any(not 0 <= v < self.n_widths for v in g):
            raise ConfigError(
                f"genome {list(g)} does not fit {self.steps} steps with width indices 0..{self.n_widths - 1}"
            )
        return g

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["penalty"] = list(self.penalty)
        d["initial"] = [list(g) for g in self.initial]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchConfig:
        d = dict(d)
        d["penalty"] = tuple(float(v) for v in d.get("penalty", (1e6, 1e6)))
        d["initial"] = tuple(tuple(int(v) for v in g) for g in d.get("initial", ()))
        return cls(**d)


@dataclass(frozen=True)
class Candidate:
    """One evaluated genome. ``objectives`` is None when the evaluation failed (``reason`` says why)."""

    genome: Genome
    objectives: Objectives | None
    reason: str | None
    generation: int
    index: int
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.objectives is not None

    @property
    def fid(self) -> float:
        return math.nan if self.objectives is None else self.objectives[0]

    @property
    def cost(self) -> float:
        return math.nan if self.objectives is None else self.objectives[1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "genome": list(self.genome),
            "objectives": None if self.objectives is None else list(self.objectives),
            "status": "ok" if self.ok else "failed",
            "reason": self.reason,
            "generation": self.generation,
            "index": self.index,
            "record": _encode_nonfinite(self.record),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Candidate:
        obj = d.get("objectives")
        return cls(
            genome=tuple(int(v) for v in d["genome"]),
            objectives=None if obj is None else (float(obj[0]), float(obj[1])),
            reason=d.get("reason"),
            generation=int(d["generation"]),
            index=int(d["index"]),
            record=_decode_nonfinite(dict(d.get("record") or {})),
        )


def _encode_nonfinite(value: Any) -> Any:
    """Records may hold NaN or inf (a diverged sampler's FID): strict JSON (Postgres) has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"nonfinite": str(value)}
    if isinstance(value, Mapping):
        return {k: _encode_nonfinite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode_nonfinite(v) for v in value]
    return value


def _decode_nonfinite(value: Any) -> Any:
    if isinstance(value, Mapping):
        if set(value) == {"nonfinite"} and value["nonfinite"] in ("nan", "inf", "-inf"):
            return float(value["nonfinite"])
        return {k: _decode_nonfinite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_nonfinite(v) for v in value]
    return value


class _StrategyProblem(Problem):
    """Integer genes in [0, n_widths-1]; never evaluated by pymoo itself (ask-and-tell)."""

    def __init__(self, steps: int, n_widths: int) -> None:
        super().__init__(n_var=steps, n_obj=2, xl=0, xu=n_widths - 1, vtype=int)


class GeneMutation(Mutation):
    """Each gene mutates independently with probability ``rate`` and then always changes value.

    (The DDSM authors' code applied pymoo's polynomial mutation to integers and rounded, so most
    "mutations" rounded back to the parent: here a mutated gene is guaranteed to differ.)
    """

    def __init__(self, rate: float, kind: MutationKind = "reset") -> None:
        super().__init__(prob=1.0)  # per-individual gate open; the per-gene rate decides
        self.rate = float(rate)
        self.kind = kind

    def _do(self, problem: Problem, X: np.ndarray, *args: Any, random_state: Any = None, **kwargs: Any):
        X = np.rint(np.asarray(X, dtype=float)).astype(int)
        xl = np.broadcast_to(np.asarray(problem.xl, dtype=int), X.shape)
        n = np.broadcast_to(np.asarray(problem.xu, dtype=int) + 1, X.shape) - xl
        mask = random_state.random(X.shape) < self.rate
        if self.kind == "reset":
            # shift by 1..n-1 modulo n: uniform over the other values
            shift = np.floor(random_state.random(X.shape) * (n - 1)).astype(int) + 1
            Y = (X - xl + shift) % n + xl
        else:
            step = np.where(random_state.random(X.shape) < 0.5, -1, 1)
            Y = X + step
            Y = np.where(Y < xl, X + 1, Y)
            Y = np.where(Y >= xl + n, X - 1, Y)
        return np.where(mask, Y, X)


def _crossover(config: SearchConfig):
    prob = 0.0 if config.crossover == "none" else config.crossover_prob
    if config.crossover == "uniform":
        return UniformCrossover(prob=prob)
    if config.crossover == "one_point":
        return SinglePointCrossover(prob=prob)
    return TwoPointCrossover(prob=prob)


def initial_genomes(config: SearchConfig, seed: int) -> list[Genome]:
    """Every uniform strategy, the warm-start genomes, then distinct seeded random genomes."""
    genomes: dict[Genome, None] = dict.fromkeys((i,) * config.steps for i in range(config.n_widths))
    genomes.update(dict.fromkeys(config.initial))  # insertion-ordered and O(1) membership
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    space = config.n_widths**config.steps
    while len(genomes) < min(config.population, space):
        g = tuple(int(v) for v in rng.integers(0, config.n_widths, config.steps))
        genomes.setdefault(g)
    return list(genomes)


def _nsga2(config: SearchConfig, sampling: Any, seed: int) -> NSGA2:
    algorithm = NSGA2(
        pop_size=config.population,
        sampling=sampling,
        crossover=_crossover(config),
        mutation=GeneMutation(config.mutation_rate, config.mutation),
        eliminate_duplicates=True,
    )
    # Generations are counted by the driver; pymoo never terminates on its own.
    algorithm.setup(_StrategyProblem(config.steps, config.n_widths), termination=NoTermination(), seed=seed)
    return algorithm


def non_dominated(points: Sequence[Objectives]) -> list[int]:
    """Indices of the points no other point dominates (both objectives minimised), in order.

    A sweep in (FID, cost) order, O(n log n): the controller takes the front of every candidate of a
    search (thousands at population 1,000) on each tell. Equal points do not dominate each other.
    """
    if not all(math.isfinite(f) and math.isfinite(c) for f, c in points):
        return _non_dominated_pairwise(points)
    order = sorted(range(len(points)), key=lambda i: points[i])
    keep: list[int] = []
    best_before = math.inf  # the lowest cost among points of a strictly lower FID
    k = 0
    while k < len(order):  # one group of equal FID at a time
        group_f = points[order[k]][0]
        end = k
        while end < len(order) and points[order[end]][0] == group_f:
            end += 1
        lowest = points[order[k]][1]  # sorted: the group's lowest cost comes first
        keep += [i for i in order[k:end] if points[i][1] == lowest and lowest < best_before]
        best_before = min(best_before, lowest)
        k = end
    return sorted(keep)


def _non_dominated_pairwise(points: Sequence[Objectives]) -> list[int]:
    """The definition, pair by pair (for non-finite values, whose comparisons are all false)."""
    idx = []
    for i, (f, c) in enumerate(points):
        dominated = any(
            (f2 <= f and c2 <= c) and (f2 < f or c2 < c) for j, (f2, c2) in enumerate(points) if j != i
        )
        if not dominated:
            idx.append(i)
    return idx


class SearchDriver:
    """NSGA-II over width-index genomes with a per-search evaluation cache.

    ``ask()`` returns the genomes of the current generation that still need an evaluation (a genome
    evaluated earlier in this search is answered from the cache; asking again before telling returns
    the same list). ``tell`` may be called once per generation or piecewise as results arrive; when
    the last pending genome is told, the generation is handed to pymoo. An objective of ``None`` or
    a non-finite value marks a failed evaluation: it gets ``config.penalty`` and the search goes on.
    """

    def __init__(self, config: SearchConfig, seed: int = 0) -> None:
        self.config = config
        self.seed = int(seed)
        self._candidates: dict[Genome, Candidate] = {}
        # genome -> (candidate, its to_dict()): state_dict() encodes each candidate once, not per
        # generation (10,000 at population 1,000); keyed on the object, so a reloaded one is re-encoded
        self._encoded: dict[Genome, tuple[Candidate, dict[str, Any]]] = {}
        self._generation = 0  # completed generations
        self._exhausted = False  # pymoo could not produce a new unique offspring
        self._pending_pop: Population | None = None
        self._pending: list[Genome] = []
        self.history: list[dict[str, Any]] = []
        sampling = np.array(initial_genomes(config, self.seed), dtype=int)
        self._algorithm = _nsga2(config, sampling, self.seed)

    # -- ask / tell -----------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._exhausted or self._generation >= self.config.generations

    @property
    def generation(self) -> int:
        """Number of completed generations."""
        return self._generation

    @property
    def generation_genomes(self) -> list[Genome]:
        """All genomes of the generation in progress (cached ones included)."""
        return list(self._pending)

    def ask(self) -> list[Genome]:
        while not self.done:
            if self._pending_pop is None:
                pop = self._algorithm.ask()
                if pop is None or len(pop) == 0:
                    self._exhausted = True
                    break
                self._pending_pop = pop
                self._pending = [tuple(int(v) for v in np.rint(x)) for x in pop.get("X")]
            todo = list(dict.fromkeys(g for g in self._pending if g not in self._candidates))
            if todo:
                return todo
            self._finish_generation()  # everything answered from the cache
        return []

    def tell(
        self,
        genomes: Sequence[Sequence[int]],
        objectives: Sequence[Sequence[float] | None],
        reasons: Sequence[str | None] | None = None,
        records: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> None:
        if len(genomes) != len(objectives):
            raise ValueError(f"{len(genomes)} genomes but {len(objectives)} objective values")
        for name, extra in (("reasons", reasons), ("records", records)):
            if extra is not None and len(extra) != len(genomes):
                raise ValueError(f"{len(genomes)} genomes but {len(extra)} {name}")
        pending = set(self._pending)
        for i, raw in enumerate(genomes):
            genome = self.config.check_genome(raw)
            if genome in self._candidates:
                continue  # a redelivered result: the first one counts
            if genome not in pending:
                raise ValueError(
                    f"genome {list(genome)} was not asked for in generation {self._generation + 1}"
                )
            obj, reason = objectives[i], reasons[i] if reasons is not None else None
            value: Objectives | None = None
            if obj is not None:
                value = (float(obj[0]), float(obj[1]))
                if not all(math.isfinite(v) for v in value):
                    value, reason = None, reason or f"non-finite objectives {list(obj)}"
            if value is None and not reason:
                reason = "evaluation failed"
            record = dict(records[i] or {}) if records is not None else {}
            self._candidates[genome] = Candidate(
                genome, value, None if value else reason, self._generation + 1, len(self._candidates), record
            )
        if self._pending_pop is not None and all(g in self._candidates for g in self._pending):
            self._finish_generation()

    def _objectives_or_penalty(self, genome: Genome) -> Objectives:
        cand = self._candidates[genome]
        return cand.objectives if cand.objectives is not None else self.config.penalty

    def _finish_generation(self) -> None:
        assert self._pending_pop is not None
        F = np.array([self._objectives_or_penalty(g) for g in self._pending], dtype=float)
        Evaluator().eval(StaticProblem(self._algorithm.problem, F=F), self._pending_pop)
        self._algorithm.tell(infills=self._pending_pop)
        self._generation += 1
        front = self.front()
        self.history.append(
            {
                "generation": self._generation,
                "n_candidates": len(self._pending),
                "n_evaluated": len(self._candidates),
                "front_size": len(front),
                "best_fid": min((c.fid for c in front), default=None),  # None: JSON has no NaN
            }
        )
        self._pending_pop, self._pending = None, []

    # -- results ------------------------------------------------------------------------------
    @property
    def candidates(self) -> list[Candidate]:
        """Every evaluated candidate in evaluation order."""
        return sorted(self._candidates.values(), key=lambda c: c.index)

    def lookup(self, genome: Sequence[int]) -> Candidate | None:
        return self._candidates.get(tuple(int(v) for v in genome))

    @property
    def population(self) -> list[Genome]:
        """The current surviving population (empty before the first generation completes)."""
        if self._algorithm.pop is None or self._generation == 0:
            return []
        return [tuple(int(v) for v in np.rint(x)) for x in self._algorithm.pop.get("X")]

    def front(self) -> list[Candidate]:
        """Pareto front over every successful candidate of the search, sorted by cost."""
        return pareto_front(self.candidates)

    def pick(self, w: float) -> Candidate:
        """The paper's weighted pick: argmin FID + w * cost (one point of the front)."""
        return min(self._require_front(), key=lambda c: (c.fid + w * c.cost, c.cost))

    def cheapest_within(self, max_fid: float) -> Candidate | None:
        """The cheapest front point whose FID is at most ``max_fid`` (None if there is none)."""
        fits = [c for c in self._require_front() if c.fid <= max_fid]
        return min(fits, key=lambda c: c.cost) if fits else None

    def knee(self) -> Candidate:
        """The front point farthest from the line through its two extremes (objectives normalised)."""
        return knee_point(self._require_front())

    def _require_front(self) -> list[Candidate]:
        front = self.front()
        if not front:
            raise ValueError("no successful evaluation yet: the front is empty")
        return front

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain JSON data from which ``load_state_dict`` rebuilds this driver exactly (no pickle)."""
        pop = self._algorithm.pop if self._generation > 0 else None
        rank = [] if pop is None else [int(r) for r in pop.get("rank")]
        crowding = [] if pop is None else [_float_to_json(c) for c in pop.get("crowding")]
        return {
            "format": STATE_FORMAT,
            "config": self.config.to_dict(),
            "seed": self.seed,
            "generation": self._generation,
            "exhausted": self._exhausted,
            "pending": [list(g) for g in self._pending],
            "population": [list(g) for g in self.population],
            "rank": rank,
            "crowding": crowding,
            "rng": _rng_to_json(self._algorithm.random_state),
            "candidates": [self._encode(c) for c in self.candidates],
            "history": self.history,
        }

    def _encode(self, cand: Candidate) -> dict[str, Any]:
        entry = self._encoded.get(cand.genome)
        if entry is None or entry[0] is not cand:
            entry = self._encoded[cand.genome] = (cand, cand.to_dict())
        return entry[1]

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Rebuild the driver from ``state_dict()`` output; a malformed state raises ConfigError and
        leaves this driver as it was."""
        if _state_config(state)[0] != self.config:
            raise ConfigError("search state was written for another search configuration")
        self.__dict__.update(SearchDriver.from_state_dict(state).__dict__)

    def _load(self, state: Mapping[str, Any], legacy: bool) -> None:
        self.seed = _int(state["seed"])
        generation = _int(state["generation"])
        if not 0 <= generation <= self.config.generations:
            raise ConfigError(f"search state generation {generation} outside 0..{self.config.generations}")
        self._generation = generation
        self._exhausted = bool(state["exhausted"])
        self.history = [dict(h) for h in state.get("history", [])]
        self._candidates = {}
        for d in state["candidates"]:
            c = Candidate.from_dict(d)
            self.config.check_genome(c.genome)
            if c.objectives is not None and not all(math.isfinite(v) for v in c.objectives):
                raise ConfigError(f"search state: candidate {list(c.genome)} has non-finite objectives")
            self._candidates[c.genome] = c
        population = [self._known_genome(g) for g in state["population"]]
        if legacy:  # the old format's algorithm was a pickle: it is never read
            self._rebuild(population)
            return
        pending = [self.config.check_genome(g) for g in state["pending"]]
        rng = _rng_from_json(state["rng"])
        if generation == 0:
            self._restore_first_generation(pending)
        else:
            rank = [_int(r) for r in state["rank"]]
            crowding = [_float_from_json(c) for c in state["crowding"]]
            self._restore_population(population, rank, crowding, pending)
        self._algorithm.random_state = rng

    def _known_genome(self, raw: Sequence[int]) -> Genome:
        genome = self.config.check_genome(raw)
        if genome not in self._candidates:
            raise ConfigError(f"search state: population member {list(genome)} was never evaluated")
        return genome

    def _restore_first_generation(self, pending: list[Genome]) -> None:
        """Generation 1 is the seeded initial sampling: asking again reproduces it without a draw."""
        self._algorithm = _nsga2(self.config, np.array(initial_genomes(self.config, self.seed)), self.seed)
        self._pending_pop, self._pending = None, []
        if pending:
            pop = self._algorithm.ask()
            genomes = [tuple(int(v) for v in np.rint(x)) for x in pop.get("X")]
            if genomes != pending:
                raise ConfigError("search state: the first generation does not match its seed")
            self._pending_pop, self._pending = pop, genomes

    def _restore_population(
        self, population: list[Genome], rank: list[int], crowding: list[float], pending: list[Genome]
    ) -> None:
        """NSGA-II after ``generation`` tells: the survivors with the rank and crowding the survival gave."""
        if not population or len(rank) != len(population) or len(crowding) != len(population):
            raise ConfigError(
                f"search state: population of {len(population)} with {len(rank)} ranks and "
                f"{len(crowding)} crowding distances"
            )
        X = np.array(population, dtype=int)
        algorithm = _nsga2(self.config, X, self.seed)  # the sampling is never asked: pymoo is past it
        pop = Population.new(X=X.copy())
        F = np.array([self._objectives_or_penalty(g) for g in population], dtype=float)
        Evaluator().eval(StaticProblem(algorithm.problem, F=F), pop)
        pop.set("rank", np.array(rank, dtype=int), "crowding", np.array(crowding, dtype=float))
        algorithm.start_time = time.time()
        algorithm.pop, algorithm.is_initialized = pop, True
        algorithm.n_iter = self._generation + 1  # pymoo counts the generation being asked
        algorithm._set_optimum()
        self._algorithm = algorithm
        self._pending_pop, self._pending = None, []
        if pending:
            infills = Population.new(X=np.array(pending, dtype=int))
            infills.set("n_gen", algorithm.n_iter, "n_iter", algorithm.n_iter)
            self._pending_pop, self._pending = infills, pending

    def _rebuild(self, population: list[Genome]) -> None:
        """Restart NSGA-II from a stored population (the pending generation is asked anew)."""
        self._pending_pop, self._pending = None, []
        if not population:  # interrupted inside the first generation: start it again
            self._algorithm = _nsga2(
                self.config, np.array(initial_genomes(self.config, self.seed)), self.seed
            )
            return
        pop = Population.new(X=np.array(population, dtype=int))
        F = np.array([self._objectives_or_penalty(g) for g in population], dtype=float)
        Evaluator().eval(StaticProblem(_StrategyProblem(self.config.steps, self.config.n_widths), F=F), pop)
        self._algorithm = _nsga2(self.config, pop, self.seed + 7919 * self._generation)
        self._algorithm.tell(infills=self._algorithm.ask())
        self._algorithm.n_iter = self._generation + 1

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> SearchDriver:
        config, seed, legacy = _state_config(state)
        driver = cls(config, seed=seed)
        try:
            driver._load(state, legacy)
        except ConfigError:
            raise
        except (AttributeError, KeyError, IndexError, TypeError, ValueError, OverflowError) as exc:
            raise ConfigError(f"malformed search state ({type(exc).__name__}: {exc})") from None
        return driver


def _state_config(state: Any) -> tuple[SearchConfig, int, bool]:
    """A stored state's configuration, seed and whether it has the old (pickle) format."""
    if not isinstance(state, Mapping):
        raise ConfigError(f"a search state is a JSON object, got {type(state).__name__}")
    fmt = state.get("format")
    if fmt != STATE_FORMAT and fmt not in LEGACY_STATE_FORMATS:
        raise ConfigError(f"not a search state (format {fmt!r:.40}, expected {STATE_FORMAT!r})")
    try:
        return SearchConfig.from_dict(state["config"]), _int(state["seed"]), fmt in LEGACY_STATE_FORMATS
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"search state has an unreadable configuration: {exc}") from None


def _int(value: Any) -> int:
    """An int from JSON, refusing floats and strings (a state holds exact integers only)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"search state: expected an integer, got {value!r:.40}")
    return value


_WORD = 32
_WORDS = 4  # PCG64's 128-bit state and increment as four 32-bit words: exact in any JSON reader


def _words(value: int) -> list[int]:
    return [(value >> (_WORD * i)) & 0xFFFFFFFF for i in range(_WORDS)]


def _from_words(words: Any) -> int:
    if not isinstance(words, list) or len(words) != _WORDS:
        raise ConfigError(f"search state: a 128-bit value is {_WORDS} 32-bit words, got {words!r:.60}")
    value = 0
    for i, w in enumerate(words):
        if not 0 <= _int(w) <= 0xFFFFFFFF:
            raise ConfigError(f"search state: {w} is not a 32-bit word")
        value |= w << (_WORD * i)
    return value


def _rng_to_json(rng: np.random.Generator) -> dict[str, Any]:
    st = rng.bit_generator.state
    if st["bit_generator"] != "PCG64":
        raise TypeError(f"cannot store a {st['bit_generator']} generator")
    return {
        "bit_generator": "PCG64",
        "state": _words(int(st["state"]["state"])),
        "inc": _words(int(st["state"]["inc"])),
        "has_uint32": int(st["has_uint32"]),
        "uinteger": int(st["uinteger"]),
    }


def _rng_from_json(d: Any) -> np.random.Generator:
    if not isinstance(d, Mapping) or d.get("bit_generator") != "PCG64":
        raise ConfigError("search state: the random generator must be a PCG64 state")
    has_uint32, uinteger = _int(d["has_uint32"]), _int(d["uinteger"])
    if has_uint32 not in (0, 1) or not 0 <= uinteger <= 0xFFFFFFFF:
        raise ConfigError("search state: malformed random generator state")
    bits = np.random.PCG64()
    bits.state = {
        "bit_generator": "PCG64",
        "state": {"state": _from_words(d["state"]), "inc": _from_words(d["inc"])},
        "has_uint32": has_uint32,
        "uinteger": uinteger,
    }
    return np.random.Generator(bits)


def _float_to_json(value: float) -> float | str:
    """Crowding distances are infinite at a front's ends; JSON (and Postgres) have no Infinity."""
    v = float(value)
    return v if math.isfinite(v) else str(v)


def _float_from_json(value: Any) -> float:
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"search state: expected a number, got {value!r:.40}")
    return float(value)


def pareto_front(candidates: Iterable[Candidate]) -> list[Candidate]:
    """The non-dominated successful candidates that reached the top rung, sorted by cost."""
    ok = [c for c in candidates if c.ok and reached_top(c.record)]
    front = [ok[i] for i in non_dominated([c.objectives for c in ok])]  # type: ignore[misc]
    return sorted(front, key=lambda c: (c.cost, c.fid))


def reached_top(record: Mapping[str, Any]) -> bool:
    """False for a multi-fidelity candidate that was not promoted to the top rung: its objectives are
    a conservative stand-in (see :func:`successive_halving`), so it never enters a front or a pick."""
    fidelity = record.get("fidelity")
    return not isinstance(fidelity, Mapping) or bool(fidelity.get("top", True))


def state_front(state: Mapping[str, Any]) -> list[Candidate]:
    """The Pareto front of a stored state, read without rebuilding NSGA-II (a cheap, safe read)."""
    try:
        candidates = [Candidate.from_dict(d) for d in state["candidates"]]
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise ConfigError(f"malformed search state ({type(exc).__name__}: {exc})") from None
    return pareto_front(
        c for c in candidates if c.objectives is None or all(map(math.isfinite, c.objectives))
    )


def knee_point(front: Sequence[Candidate]) -> Candidate:
    if len(front) <= 2:
        return min(front, key=lambda c: (c.fid, c.cost))
    F = np.array([c.objectives for c in front], dtype=float)
    span = F.max(axis=0) - F.min(axis=0)
    N = (F - F.min(axis=0)) / np.where(span > 0, span, 1.0)
    a, b = N[np.argmin(N[:, 1])], N[np.argmin(N[:, 0])]  # cheapest end, best-FID end
    d = b - a
    dist = np.abs(d[0] * (N[:, 1] - a[1]) - d[1] * (N[:, 0] - a[0])) / max(float(np.hypot(*d)), 1e-12)
    return front[int(np.argmax(dist))]


# ---------------------------------------------------------------------------------------------
# Local runner: evaluates in-process, checkpoints after every told result, resumes.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Evaluation:
    """What an evaluation function returns: objectives (FID, cost) or None with a reason."""

    objectives: Objectives | None
    reason: str | None = None
    record: dict[str, Any] = field(default_factory=dict)


EvaluateFn = Callable[[Genome, int], Evaluation]
STATE_FILE = "search_state.json"


@dataclass(frozen=True)
class SearchRun:
    """The outcome of ``run_search``: the finished driver plus the finalists re-evaluated."""

    driver: SearchDriver
    pick: Candidate
    knee: Candidate
    final: dict[str, Evaluation]  # "pick", "knee" and extra finalists re-evaluated with more images
    wall_s: float
    resumed: bool
    bisection: BisectionStep | None = None  # the tolerance rule's probes and pick (None: weighted)
    members: tuple[Genome, ...] = ()  # what it bisected: the front cheapest first, full width left out
    probes: dict[Genome, Evaluation] = field(default_factory=dict)  # each probe's final evaluation
    paired: dict[Genome, dict[str, Any] | None] = field(default_factory=dict)  # each probe's interval


def _write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data))


def run_search(
    config: SearchConfig,
    evaluate: EvaluateFn,
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    n_images: int,
    final_images: int,
    weight: float,
    progress: bool = True,
    resume: bool = True,
    finalists: Mapping[str, Sequence[int]] | None = None,
    rungs: Sequence[int] = (),
    promote: float = 0.25,
    rung_metric: str = "fid",
    pick_rule: str = "weighted",
    judge: Callable[[Genome, Evaluation], dict[str, Any] | None] | None = None,
    evaluate_final: Callable[[Genome], Evaluation] | None = None,
) -> SearchRun:
    """Run a whole search in this process; ``out_dir/search_state.json`` makes it resumable.

    ``evaluate(genome, n_images)`` must be deterministic for a genome (fixed seeds) so that a resumed
    search ends where an uninterrupted one ends. The weighted pick (argmin FID + weight * cost; the pick
    with ``pick_rule="weighted"``, this function's default, while ``ddsm search`` passes its spec's
    rule, ``tolerance`` unless told) and the knee are re-evaluated with ``final_images`` images at the
    end, with any extra ``finalists`` (e.g. the full width baseline, so that the pick is compared at
    equal image counts).

    With ``rungs`` (image counts below ``n_images``) each generation goes through
    :func:`successive_halving` (promoting by ``rung_metric``, :data:`RUNG_METRICS`) and is told at
    once; a search interrupted inside a generation evaluates that generation's rungs again when resumed
    (same seeds: the same values).

    ``pick_rule="tolerance"``: the weighted pick becomes the finalist ``weighted``, and the pick is
    found by bisection over the front (:func:`ddsm_core.pick.bisect_front`), each probe evaluated with
    ``final_images`` images and decided by ``judge(genome, evaluation)`` (its paired interval vs full
    width with ``equal_quality``, None when it has none: not equal). ``evaluate_final(genome)``
    evaluates a finalist or probe (default ``evaluate(genome, final_images)``; ``ddsm search`` caches
    them on disk so that an interrupted finalist stage resumes without redoing them).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    driver, resumed = SearchDriver(config, seed), False
    if resume and state_path.exists():
        try:
            state = json.loads(state_path.read_text())
        except (UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(
                f"{state_path} is not a search state ({exc}); delete it to start over"
            ) from None
        driver.load_state_dict(state)
        resumed = True
    start = time.perf_counter()
    bar = _progress(progress, total=config.generations * config.population, initial=len(driver.candidates))
    try:
        while not driver.done:
            if rungs:
                genomes = driver.ask()
                evs = successive_halving(genomes, evaluate, (*rungs, n_images), promote, rung_metric)
                driver.tell(genomes, [e.objectives for e in evs], [e.reason for e in evs],
                            [e.record for e in evs])  # fmt: skip
                _write_json_atomic(state_path, driver.state_dict())
                if bar is not None:
                    bar.update(len(genomes))
                continue
            for genome in driver.ask():
                ev = evaluate(genome, n_images)
                driver.tell([genome], [ev.objectives], [ev.reason], [ev.record])
                _write_json_atomic(state_path, driver.state_dict())
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(gen=f"{driver.generation + 1}/{config.generations}")
            _write_json_atomic(state_path, driver.state_dict())
    finally:
        if bar is not None:
            bar.close()
    weighted, knee = driver.pick(weight), driver.knee()
    tolerance = pick_rule == "tolerance"
    named = {"weighted" if tolerance else "pick": weighted.genome, "knee": knee.genome}
    named.update({k: config.check_genome(g) for k, g in (finalists or {}).items()})
    final_eval = evaluate_final or (lambda g: evaluate(g, final_images))
    by_genome: dict[Genome, Evaluation] = {}
    final = {}
    # the finalists' re-evaluation (more images each) gets its own bar: the search bar ends before it
    bar = _progress(
        progress, total=len(set(named.values())), initial=0, desc=f"finalists x {final_images} images"
    )

    def measure(genome: Genome) -> Evaluation:
        if genome not in by_genome:
            by_genome[genome] = final_eval(genome)
            if bar is not None:
                bar.update(1)
        return by_genome[genome]

    for name, genome in named.items():
        final[name] = measure(genome)
    step, members, paired = None, (), {}
    if tolerance:
        full = named.setdefault("full", (config.n_widths - 1,) * config.steps)
        final.setdefault("full", measure(full))
        members = tuple(bisection_members(driver.front(), full))
        while not (step := bisect_front(members, full, {g: passed(d) for g, d in paired.items()})).done:
            assert step.probe is not None
            if bar is not None and step.probe not in by_genome:
                bar.total += 1
            ev = measure(step.probe)
            paired[step.probe] = judge(step.probe, ev) if judge is not None else None
        assert step.pick is not None
        pick = driver.lookup(step.pick)  # a front member or full width: candidates of the search
        if pick is None:
            raise ValueError(f"the bisection picked {list(step.pick)}, which the search never evaluated")
        final = {"pick": measure(step.pick), **final}
    else:
        pick = weighted
    if bar is not None:
        bar.close()
    probes = {} if step is None else {g: by_genome[g] for g in step.probes}
    return SearchRun(driver, pick, knee, final, time.perf_counter() - start, resumed, step, members,
                     probes, paired)  # fmt: skip


def _progress(enabled: bool, total: int, initial: int, desc: str = "search") -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="cand")


def uniform_genomes(config: SearchConfig) -> Iterable[Genome]:
    return ((i,) * config.steps for i in range(config.n_widths))


# ---------------------------------------------------------------------------------------------
# Multi-fidelity: the number of images is the fidelity.
# ---------------------------------------------------------------------------------------------
def promotion_order(points: Sequence[Objectives]) -> list[int]:
    """Indices of ``points`` best first, as NSGA-II's survival ranks them: non-domination rank, then
    crowding distance within a rank (a front's two ends first), then the first objective."""
    left, order = list(range(len(points))), []
    while left:
        layer = [left[i] for i in non_dominated([points[j] for j in left])]
        F = np.array([points[i] for i in layer], dtype=float).reshape(len(layer), 2)
        crowd = np.zeros(len(layer))
        for m in range(2):
            idx = np.argsort(F[:, m], kind="stable")
            span = F[idx[-1], m] - F[idx[0], m]
            crowd[idx[0]] = crowd[idx[-1]] = np.inf
            if span > 0 and len(layer) > 2:
                crowd[idx[1:-1]] += (F[idx[2:], m] - F[idx[:-2], m]) / span
        order += sorted(layer, key=lambda i: (-crowd[layer.index(i)], points[i][0], points[i][1], i))
        left = [i for i in left if i not in layer]
    return order


@dataclass(frozen=True)
class HalvingStep:
    """Where one generation's successive halving stands (:func:`halving_step`).

    ``todo`` lists the genomes still to evaluate at ``ladder[level]`` images (the generation's order at
    the first rung, promotion order above); once every rung is done, ``todo`` is empty and ``outcome``
    holds one :class:`Evaluation` per genome of the generation, as :func:`successive_halving` returns
    them.
    """

    level: int
    todo: list[Genome]
    outcome: list[Evaluation] | None = None

    @property
    def done(self) -> bool:
        return self.outcome is not None


def halving_step(
    genomes: Sequence[Genome],
    ladder: Sequence[int],
    promote: float,
    results: Sequence[Mapping[Genome, Evaluation]],
    metric: str = "fid",
) -> HalvingStep:
    """The next rung of one generation's successive halving, replayed from the evaluations so far.

    ``results[level]`` maps a genome to its evaluation at ``ladder[level]`` images (finished ones
    only; extra entries of genomes that were not promoted there are ignored). Stateless and pure, so
    the local executor (:func:`successive_halving`, evaluating in-process) and the service's
    controller (rungs as worker tasks, results read back from the database on every tick) promote
    exactly the same genomes and tell NSGA-II the same objectives for the same evaluations.

    Every genome is evaluated at ``ladder[0]`` images; at each rung the best ``ceil(promote x alive)``
    successful ones (:func:`promotion_order` of (rung metric, cost) at that rung) go to the next. The
    rung ``metric`` (:data:`RUNG_METRICS`) is the FID at that rung, or with ``paired`` the record's
    ``paired_distance`` to the full width on the same seeds (an evaluation without one fails at that
    rung: it cannot be ranked). A genome stopped at rung r gets the conservative objective
    ``(worst top-rung FID of this generation + s_r x (its metric at r - the best metric at r), its
    cost)``, with ``s_r = 1`` for ``fid`` and, for ``paired``, the rung's FID span over its paired
    distance span (so the offsets are in FID units): never better than a promoted candidate of its
    generation, ordered among its rung by the metric that stopped it, and marked
    ``record["fidelity"]["top"] = False`` so that it never enters a front or pick (:func:`reached_top`).
    Each record's ``fidelity.evaluations`` lists what every rung spent.
    """
    if metric not in RUNG_METRICS:
        raise ConfigError(choices_message("rung metric", metric, RUNG_METRICS))
    history: dict[Genome, list[Evaluation]] = {g: [] for g in genomes}
    alive, offset_at = list(dict.fromkeys(genomes)), {}
    for level in range(len(ladder)):
        done = results[level] if level < len(results) else {}
        todo = [g for g in alive if g not in done]
        if todo:
            return HalvingStep(level, todo)
        low = level < len(ladder) - 1
        for g in alive:
            history[g].append(_rankable(done[g], metric, ladder[level]) if low else done[g])
        if not low:
            break
        ok = [g for g in alive if history[g][-1].objectives is not None]
        score = {g: _rung_score(history[g][-1], metric) for g in ok}
        fids = {g: history[g][-1].objectives[0] for g in ok}  # type: ignore[index]
        offset_at[level] = _stand_in_offsets(metric, score, fids)
        order = promotion_order([(score[g], history[g][-1].objectives[1]) for g in ok])  # type: ignore[index]
        alive = [ok[i] for i in order[: max(1, math.ceil(promote * len(alive)))]] if ok else []
    top = [h[-1].objectives[0] for h in history.values() if len(h) == len(ladder) and h[-1].objectives]
    worst_top = max(top, default=0.0)
    out = []
    for g in genomes:
        evs = history[g]
        last, level = evs[-1], len(evs) - 1
        fidelity = {
            "rung": level,
            "top": level == len(ladder) - 1,
            "evaluations": [_spent(e, metric) for e in evs],
        }
        objectives = last.objectives
        if objectives is not None and not fidelity["top"]:
            objectives = (worst_top + offset_at[level][g], objectives[1])
        out.append(Evaluation(objectives, last.reason, {**last.record, "fidelity": fidelity}))
    return HalvingStep(len(ladder) - 1, [], out)


def _rung_score(ev: Evaluation, metric: str) -> float:
    """What ranks a successful evaluation at a low rung (:data:`RUNG_METRICS`)."""
    assert ev.objectives is not None
    return float(ev.record["paired_distance"]) if metric == "paired" else ev.objectives[0]


def _rankable(ev: Evaluation, metric: str, n_images: int) -> Evaluation:
    """``ev``, or a failed evaluation when the paired metric has no finite distance to rank it by."""
    if metric != "paired" or ev.objectives is None:
        return ev
    d = ev.record.get("paired_distance")
    if isinstance(d, (int, float)) and not isinstance(d, bool) and math.isfinite(d):
        return ev
    reason = f"no paired distance to the full width at {n_images} images (got {d!r}): cannot rank it"
    return Evaluation(None, reason, ev.record)


def _stand_in_offsets(
    metric: str, score: Mapping[Genome, float], fid: Mapping[Genome, float]
) -> dict[Genome, float]:
    """Each successful genome's stand-in offset above the generation's worst top-rung FID: its rung
    score above the rung's best, in FID units (``paired``: scaled by the rung's FID span over its
    distance span). >= 0, so a stand-in never beats a promoted candidate; the best score (always
    promoted: an end of the first front) is the only 0 unless scores tie."""
    if not score:
        return {}
    best, score_span = min(score.values()), max(score.values()) - min(score.values())
    fid_span = max(fid.values()) - min(fid.values())
    scale = fid_span / score_span if metric == "paired" and score_span > 0 and fid_span > 0 else 1.0
    return {g: scale * (s - best) for g, s in score.items()}


def successive_halving(
    genomes: Sequence[Genome],
    evaluate: EvaluateFn,
    ladder: Sequence[int],
    promote: float,
    metric: str = "fid",
) -> list[Evaluation]:
    """One generation's evaluations on the image-count ``ladder`` (low rungs first, the top last),
    evaluated in this process: :func:`halving_step` (ranking low rungs by ``metric``) says what to
    evaluate next until it is done. A
    genome is evaluated at most once per rung; the result for a genome that reached the top is its
    top-rung evaluation, the others get :func:`halving_step`'s conservative stand-in."""
    results: list[dict[Genome, Evaluation]] = [{} for _ in ladder]
    while not (step := halving_step(genomes, ladder, promote, results, metric)).done:
        for g in step.todo:
            results[step.level][g] = evaluate(g, ladder[step.level])
    assert step.outcome is not None
    return step.outcome


_SPENT = ("n_images", "network_calls", "reused_fraction", "seconds")


def _spent(ev: Evaluation, metric: str) -> dict[str, Any]:
    """One rung's entry of ``fidelity.evaluations``: what it spent, its FID (and distance if paired)."""
    out = {k: ev.record.get(k) for k in _SPENT} | {"fid": _fid(ev)}
    return out | {"paired_distance": ev.record.get("paired_distance")} if metric == "paired" else out


def _fid(ev: Evaluation) -> float | None:
    return None if ev.objectives is None else ev.objectives[0]
