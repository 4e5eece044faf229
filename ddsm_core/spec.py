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
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ddsm_core.config import UNetConfig
from ddsm_core.costs import CostTable, strategy_gflops
from ddsm_core.errors import ConfigError, StrategyError, choices_message
from ddsm_core.latency import LatencyTable
from ddsm_core.paired import DEFAULT_REL_TOLERANCE
from ddsm_core.search import CROSSOVERS, RUNG_METRICS, Candidate, Genome, SearchConfig, knee_point
from ddsm_core.strategy import Strategy, canonical_sampler, parse_strategy_spec, width_index
from ddsm_core.transfer import transfer_strategy
from ddsm_core.widths import validate_widths

DEFAULT_SAMPLER = "ddpm"
"""DDPM (not DDIM): its fresh noise at every step forgives the small widths' errors at the noisy start."""
DEFAULT_STEPS = 20
SAMPLER_HELP = "ddpm, ddim, edm (EDM's Heun; also edm-heun) or dpmpp (DPM-Solver++; also dpm-solver++)"
"""The one description of the sampler names in every help text, led by the names outputs print."""
FINALISTS: tuple[str, ...] = ("pick", "knee", "full")
"""The finalists of every search, re-evaluated with ``final_images`` (and given a sample grid): the
pick (by :attr:`SearchSpec.pick_rule`), knee of the front, full width. With the tolerance rule there
is a fourth, ``weighted`` (the weighted pick, shown beside the pick): :meth:`SearchSpec.finalist_names`.
Every finalist is a strategy file (``<name>.json`` in a report folder, and over REST)."""

PICK_RULES: tuple[str, ...] = ("tolerance", "weighted")
"""How the pick is chosen (``pick_rule``). ``tolerance``: the cheapest front member whose paired
interval vs full width (``final_images`` images from ``final_seed``, the same for both) ends within
``tolerance`` x full width's FID, found by bisection over the front (:mod:`ddsm_core.pick`);
``weighted``: argmin FID + weight x cost on the search's own FIDs (the paper's rule, which follows
``n_images``-image noise)."""

OBJECTIVES: tuple[str, ...] = ("gflops", "latency")
"""The search's cost objective: GFLOPs per image (counted), or predicted milliseconds per image from
the supernet's :class:`~ddsm_core.latency.LatencyTable` on the device that will sample."""
COST_UNITS: dict[str, str] = {"gflops": "GFLOPs/image", "latency": "predicted ms/image"}

SEED_MAX = 2**32 - 1
"""Seeds are unsigned 32-bit (numpy's and torch's generators both take them); image seeds too."""
MAX_WIDTHS = 64
MAX_CANDIDATES = 100_000
"""Upper bound of population x generations: every candidate is a database row."""
MAX_GENES = 10_000_000
"""Upper bound of population x generations x steps: the genes the search stores in all."""

LIMITS: dict[str, tuple[float, float]] = {
    "steps": (2, 1000),
    "population": (2, 10_000),
    "generations": (1, 10_000),
    "n_images": (2, 100_000),  # FID needs a covariance: at least two images
    "final_images": (2, 100_000),
    "weight": (0.0, 1e6),
    "seed": (0, SEED_MAX),
    "eval_seed": (0, SEED_MAX),
    "batch_size": (1, 4096),
    "mutation_rate": (0.0, 1.0),
    "promote": (0.0, 1.0),
    "tolerance": (0.0, 10.0),
}
"""Inclusive (low, high) bounds of the numeric settings; the REST schema and the CLI use the same."""


@dataclass(frozen=True)
class SearchSpec:
    """Everything that defines one search (plain values; JSON in ``searches.config``).

    The defaults are the ``cpu`` profile: a whole search on the digits supernet takes a few minutes
    on 2 CPU cores (bench/digits_search.md). ``widths`` is the width set the genomes index into; empty
    means "not bound yet" (:meth:`bind` sets the supernet's). ``seed`` seeds NSGA-II; ``eval_seed`` is
    the first of the fixed per-image noise seeds every candidate shares (common random numbers): image
    i uses seed ``eval_seed + i``. ``final_seed`` is the first seed of the finalists' images (finalist
    image i uses ``final_seed + i``; the finalists share them, paired with full width): None (the
    default) is the first seed after every image the search ranks on, ``eval_seed + n_images``, so the
    verdict (the finalists' FIDs, the tolerance pick's paired intervals) comes from seeds the selection
    never saw (:attr:`final_first_seed`). The front is chosen on ``eval_seed .. eval_seed + n_images -
    1``; re-measured on the same images, a member that looked as good as full width owes part of that
    to the draw (bench/digits_search/notes.md, "winner's curse"). An explicit value that overlaps the
    search's seeds is allowed (``final_seed = eval_seed`` is how searches made before the setting were
    measured, migration 0007) but flagged: :meth:`final_seeds_note`, results.json's ``seeds``.
    ``pick_rule`` chooses the pick (:data:`PICK_RULES`; default
    ``tolerance``: the cheapest front member within ``tolerance`` of full width's FID on a paired
    interval, by bisection); ``weight`` gives the weighted pick, argmin FID + weight x cost (the
    objective's unit), which is the pick with ``pick_rule="weighted"`` and shown beside it otherwise.
    ``warm_start``: strategy dicts seeding the first generation after the uniform strategies; in a
    bound spec they are on its own grid (sampler, steps, widths), as :func:`with_warm_start` makes
    them from strategies of any sampler and step count. They are stored with the search, so a resume
    asks the same first generation.

    Multi-fidelity (off by default: ``rungs=()`` is the flat protocol, every candidate at ``n_images``):
    ``rungs`` are increasing image counts below ``n_images``; each generation's new candidates are
    first evaluated at ``rungs[0]`` images, the best ``promote`` fraction (non-domination rank of
    (``rung_metric``, cost) at that rung, then crowding distance, as NSGA-II ranks; at least one) goes
    on to the next rung, up to ``n_images`` (successive halving, see
    :func:`ddsm_core.search.run_search`). Every rung samples the first images of the same per-image
    seeds. The service's controller promotes with
    the same function (:func:`ddsm_core.search.halving_step`), its rungs running as worker tasks.
    ``rung_metric`` (:data:`~ddsm_core.search.RUNG_METRICS`) is what ranks a low rung in place of its
    FID: ``paired`` (the default of new searches), the mean squared distance of each image's features
    to the full-width image of the same seed, ranks like the top-rung FID far better at few images
    (bench/multifidelity.md: Kendall tau 0.84 / 0.86 / 0.83 at 64 / 128 / 200 images, plain FID 0.24
    / 0.76 / 0.73); ``fid`` is the FID at the rung's image count, as searches stored before the
    setting existed read back (:meth:`from_dict`). Without rungs it changes nothing.
    ``objective`` is the cost the search minimises beside FID (:data:`OBJECTIVES`): ``gflops`` per
    image, or ``latency``: the latency table's predicted milliseconds per image at ``batch_size``
    images per batch (:meth:`latency`; ms, not s, so that ``weight`` stays of the same order as with
    GFLOPs). The table is not part of the spec: the caller brings it (a file, or the service's table
    for the supernet), so a spec says what to minimise, not on which machine.
    ``guidance`` samples with classifier-free guidance of that weight (a model with a null label;
    both passes counted in the GFLOPs); ``class_label`` gives every image that class instead of
    ``seed % classes`` (class-conditional models).
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
    final_seed: int | None = None
    batch_size: int = 250
    mutation_rate: float = 0.001
    crossover: str = "one_point"
    warm_start: tuple[dict[str, Any], ...] = ()
    rungs: tuple[int, ...] = ()
    promote: float = 0.25
    rung_metric: str = "paired"
    guidance: float | None = None
    class_label: int | None = None
    objective: str = "gflops"
    pick_rule: str = "tolerance"
    tolerance: float = DEFAULT_REL_TOLERANCE
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sampler", canonical_sampler(self.sampler))
        if self.widths:
            if len(self.widths) > MAX_WIDTHS:
                raise ConfigError(f"at most {MAX_WIDTHS} widths, got {len(self.widths)}")
            object.__setattr__(self, "widths", validate_widths(self.widths))  # sorted, unique, (0, 1]
        object.__setattr__(self, "rungs", tuple(self.rungs))
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
                raise ConfigError(f"{name} must be in [{_num(low)}, {_num(high)}], got {value!r}")
        if self.final_seed is not None and (
            isinstance(self.final_seed, bool) or not isinstance(self.final_seed, int)
            or not 0 <= self.final_seed <= SEED_MAX
        ):  # fmt: skip
            raise ConfigError(f"final_seed must be in [0, {SEED_MAX}] (or left out), got {self.final_seed!r}")
        if self.guidance is not None:
            object.__setattr__(self, "guidance", float(self.guidance))
            if not (math.isfinite(self.guidance) and self.guidance >= 0):
                raise ConfigError(f"guidance must be a finite number >= 0, got {self.guidance}")
        if self.class_label is not None and (isinstance(self.class_label, bool) or self.class_label < 0):
            raise ConfigError(f"class_label must be an integer >= 0, got {self.class_label}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(choices_message("objective", self.objective, OBJECTIVES))
        if self.crossover not in CROSSOVERS:
            raise ConfigError(choices_message("crossover", self.crossover, CROSSOVERS))
        if self.pick_rule not in PICK_RULES:
            raise ConfigError(choices_message("pick_rule", self.pick_rule, PICK_RULES))
        if isinstance(self.warm_start, (str, bytes, Mapping)) or not isinstance(self.warm_start, Sequence):
            raise ConfigError(f"warm_start must be a list of strategies, got {self.warm_start!r:.80}")
        seeds = []
        for k, d in enumerate(self.warm_start):
            try:
                seeds.append(Strategy.from_dict(d))
            except StrategyError as exc:
                raise ConfigError(f"warm_start strategy {k}: {exc}") from None
        object.__setattr__(self, "warm_start", tuple(s.to_dict() for s in seeds))
        ladder = (*self.rungs, self.n_images)
        if any(isinstance(n, bool) or not isinstance(n, int) for n in self.rungs) or any(
            not 2 <= a < b for a, b in zip(ladder[:-1], ladder[1:], strict=True)
        ):
            raise ConfigError(
                f"rungs must be increasing image counts >= 2 below n_images {self.n_images}, "
                f"got {list(self.rungs)}"
            )
        if self.rung_metric not in RUNG_METRICS:
            raise ConfigError(choices_message("rung_metric", self.rung_metric, RUNG_METRICS))
        if self.rungs and self.promote <= 0:
            raise ConfigError(f"promote must be in (0, 1] with rungs, got {self.promote}")
        self._check_budget()
        if self.widths:
            self.search_config()  # population vs widths, genome bounds

    def _check_budget(self) -> None:
        """Cross-field bounds: the search's size, and image seeds that stay within :data:`SEED_MAX`."""
        if self.population * self.generations > MAX_CANDIDATES:
            raise ConfigError(
                f"population x generations must be <= {MAX_CANDIDATES}, "
                f"got {self.population} x {self.generations}"
            )
        if self.population * self.generations * self.steps > MAX_GENES:
            raise ConfigError(
                f"population x generations x steps must be <= {MAX_GENES}, "
                f"got {self.population} x {self.generations} x {self.steps}"
            )
        last = self.eval_seed + self.n_images - 1
        if last > SEED_MAX:
            raise ConfigError(
                f"eval_seed + n_images - 1 must be <= {SEED_MAX} (image i uses seed eval_seed + i), "
                f"got {last}"
            )
        last = self.final_first_seed + self.final_images - 1
        if last > SEED_MAX:
            first = "final_seed" if self.final_seed is not None else "eval_seed + n_images (its default)"
            raise ConfigError(
                f"{first} + final_images - 1 must be <= {SEED_MAX} (finalist image i uses seed final_seed + "
                f"i), got {last}: give a smaller final_seed"
            )

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
            initial=self.seed_genomes(),
        )

    def seed_genomes(self) -> tuple[Genome, ...]:
        """The genomes of ``warm_start``; they must be on this search's grid (:func:`with_warm_start`)."""
        widths = self._require_widths()
        out = []
        for k, d in enumerate(self.warm_start):
            s = Strategy.from_dict(d)
            if s.sampler != self.sampler or s.steps != self.steps or not _same_widths(s.widths, widths):
                raise ConfigError(
                    f"warm_start strategy {k} ({s.describe()}, widths {list(s.widths)}) is not on this "
                    f"search's grid ({self.sampler}/{self.steps}, widths {list(widths)}): transfer it first"
                )
            out.append(s.genes)
        return tuple(out)

    def strategy(self, genome: Sequence[int]) -> Strategy:
        """The strategy a genome stands for (the one place genome -> Strategy happens)."""
        return Strategy(self.sampler, self.steps, self._require_widths(), tuple(int(g) for g in genome))

    def full_width_genome(self) -> Genome:
        return (len(self._require_widths()) - 1,) * self.steps

    @property
    def passes(self) -> int:
        """Network passes per sampler evaluation: 2 with guidance (conditional + unconditional)."""
        return 1 if self.guidance is None else 2

    def check_model(self, config: UNetConfig) -> None:
        """ConfigError when the supernet cannot run this search's guidance or class label."""
        if self.guidance is not None and config.null_class is None:
            raise ConfigError(
                "guidance needs a class-conditional supernet with a null label (trained with --class-cond "
                "--label-dropout)"
            )
        if self.class_label is not None:
            if not config.num_classes:
                raise ConfigError(f"class_label {self.class_label} given, but the supernet has no classes")
            if self.class_label >= config.num_classes:
                top = config.num_classes - 1
                raise ConfigError(f"class_label {self.class_label} is out of range: 0..{top}")

    def gflops(self, genome: Sequence[int], table: CostTable) -> float:
        return strategy_gflops(self.strategy(genome), table, passes=self.passes)

    def latency(self, genome: Sequence[int], table: LatencyTable) -> float:
        """Predicted seconds per image of ``genome`` at ``batch_size`` images per batch.

        With guidance every network call runs the conditional and unconditional passes as one batch of
        twice the images (:class:`~ddsm_core.sampling.GuidedDenoiser`); the sampler's own work is on
        the images themselves."""
        strategy, b = self.strategy(genome), self.batch_size
        calls = math.fsum(table.call_seconds(w, b * self.passes) for w in strategy.network_calls())
        return (calls + strategy.steps * table.step_overhead(strategy.sampler, b)) / b

    def check_latency_table(self, table: LatencyTable | None) -> None:
        """ConfigError when the search cannot use ``table``: none with objective latency, or a table
        that lacks one of the search's widths."""
        if table is None:
            if self.objective == "latency":
                raise ConfigError(
                    "objective latency needs a latency table of this supernet on the device that will "
                    "sample (measure one with `ddsm latency --checkpoint DIR --out FILE`, or "
                    "POST /supernets/{id}/latency-tables on the service)"
                )
            return
        missing = [w for w in self._require_widths() if not any(abs(w - t) < 1e-9 for t in table.widths)]
        if missing:
            raise ConfigError(
                f"the latency table ({table.device}) has widths {list(table.widths)}, not the search's "
                f"{missing}: measure it for this supernet"
            )

    def cost(self, record: Mapping[str, Any]) -> float:
        """The cost objective of an evaluation record: ``gflops``, or ``predicted_latency_s`` in ms."""
        if self.objective == "gflops":
            return float(record["gflops"])
        seconds = record.get("predicted_latency_s")
        if seconds is None:
            raise ConfigError("objective latency: the evaluation has no predicted latency (no latency table)")
        return 1e3 * float(seconds)

    def costs(
        self, genome: Sequence[int], record: Mapping[str, Any], latency: LatencyTable | None = None
    ) -> dict[str, Any]:
        """``record`` (an evaluation's) with ``predicted_latency_s`` (given a table) and ``cost``, the
        objective's value told to NSGA-II (None when it cannot be had): local and service records alike."""
        out = dict(record)
        if latency is not None:
            out["predicted_latency_s"] = self.latency(genome, latency)
        try:
            out["cost"] = self.cost(out) if out.get("gflops") is not None else None
        except ConfigError:
            out["cost"] = None
        return out

    def paired_rung(self, n_images: int) -> bool:
        """Whether an evaluation with ``n_images`` images needs a ``paired_distance``: a low rung of a
        search whose rungs are ranked by ``paired`` (the top rung and the finalists are ranked by FID)."""
        return self.rung_metric == "paired" and n_images in self.rungs

    @property
    def final_first_seed(self) -> int:
        """The seed of the finalists' first image: ``final_seed``, else the first seed after the
        search's (``eval_seed + n_images``: every rung samples the first images of those)."""
        return self.eval_seed + self.n_images if self.final_seed is None else self.final_seed

    def first_seed(self, final: bool = False) -> int:
        """The seed of image 0 of an evaluation: a finalist's or probe's (``final``) or the search's.
        Both executors sample from it, so they draw the same images."""
        return self.final_first_seed if final else self.eval_seed

    def final_seeds_overlap(self) -> bool:
        """Whether the finalists' seeds share any with the search's (an explicit ``final_seed``)."""
        first = self.final_first_seed
        return first < self.eval_seed + self.n_images and self.eval_seed < first + self.final_images

    def seeds(self) -> dict[str, Any]:
        """Which seeds ranked the candidates and which gave the verdict (results.json's ``seeds``):
        inclusive ``[first, last]`` ranges, and whether the verdict's are held out from the search's."""
        return {
            "search": [self.eval_seed, self.eval_seed + self.n_images - 1],
            "final": [self.final_first_seed, self.final_first_seed + self.final_images - 1],
            "held_out": not self.final_seeds_overlap(),
        }

    def final_seeds_note(self) -> str | None:
        """A warning when the finalists' seeds overlap the search's (None when held out)."""
        if not self.final_seeds_overlap():
            return None
        s = self.seeds()
        return (
            f"final_seed {self.final_first_seed}: the finalists' seeds {s['final'][0]}..{s['final'][1]} "
            f"overlap the search's {s['search'][0]}..{s['search'][1]}, so the verdict re-reads images the "
            "front was chosen on and flatters the pick (leave final_seed out for held-out seeds)"
        )

    @property
    def ladder(self) -> tuple[int, ...]:
        """The image counts a candidate may be evaluated with, the top rung (``n_images``) last."""
        return (*self.rungs, self.n_images)

    def pick(self, front: Sequence[Candidate]) -> Candidate:
        """The paper's weighted pick: argmin FID + weight x cost (:attr:`objective`) over the front."""
        if not front:
            raise ValueError("no successful evaluation: the front is empty")
        return min(front, key=lambda c: (c.fid + self.weight * c.cost, c.cost))

    def finalist_names(self) -> tuple[str, ...]:
        """The names :meth:`finalists` gives once the pick is known, in its order (results.json's
        ``final``, the report folder's strategy files)."""
        return ("pick", "weighted", "knee", "full") if self.pick_rule == "tolerance" else FINALISTS

    def finalists(self, front: Sequence[Candidate], pick: Sequence[int] | None = None) -> dict[str, Genome]:
        """Genomes of the finalists for a non-empty front: ``pick``, ``knee`` and ``full`` (width),
        and with the tolerance rule ``weighted`` (the weighted pick, shown beside the pick).

        :param pick: the tolerance rule's pick (:func:`ddsm_core.pick.bisect_front`'s answer); until
            it is known the tolerance rule's finalists have no ``pick`` (the weighted rule's always do).
        """
        if not front:
            raise ValueError("no successful evaluation: the front is empty")
        weighted = self.pick(front).genome
        out: dict[str, Genome] = {}
        if pick is not None or self.pick_rule == "weighted":
            out["pick"] = weighted if pick is None else tuple(int(g) for g in pick)
        if self.pick_rule == "tolerance":
            out["weighted"] = weighted
        out["knee"] = knee_point(front).genome
        out["full"] = self.full_width_genome()
        return out

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["warm_start"] = [dict(s) for s in self.warm_start]
        d["rungs"] = list(self.rungs)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown search settings {unknown}; allowed: {', '.join(sorted(names))}")
        d = dict(d)
        d["widths"] = tuple(d.get("widths") or ())
        d["warm_start"] = tuple(d.get("warm_start") or ())
        d["rungs"] = tuple(d.get("rungs") or ())
        # stored before the setting existed: those searches promoted by the rung's FID
        d.setdefault("rung_metric", "fid")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> SearchSpec:
        return cls.from_dict(json.loads(text))


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


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


def _same_widths(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= 1e-9 for x, y in zip(a, b, strict=True))


def with_warm_start(
    spec: SearchSpec,
    strategies: Sequence[Strategy | tuple[str, Strategy]],
    schedule: Mapping[str, Any] | Any | None = None,
) -> tuple[SearchSpec, list[str]]:
    """``spec`` (bound to its widths) seeded with ``strategies``, and notes on what was left out.

    Each strategy is transferred to the search's sampler and steps by log-SNR
    (:func:`ddsm_core.transfer.transfer_strategy` with the supernet's ``schedule``; the identity on
    the same grid) and re-indexed into the search's width set. Seeds equal to a uniform strategy
    (already in the first generation) or to an earlier seed are dropped; the rest is capped at
    ``population - len(widths)``, the room the uniform strategies leave, keeping the first ones (a
    results.json gives its pick first).

    :param strategies: strategies or ``(label, strategy)`` pairs (``read_strategies``' output).
    :raises ConfigError: a strategy using a width the search does not offer, or one that cannot be
        transferred (the label names it).
    """
    widths = spec._require_widths()
    uniform = {(i,) * spec.steps for i in range(len(widths))}
    seeds: dict[Genome, None] = {}
    dropped = 0
    for k, item in enumerate(strategies):
        label, source = item if isinstance(item, tuple) else (f"strategy {k}", item)
        try:
            same = source.sampler == spec.sampler and source.steps == spec.steps
            moved = source if same else transfer_strategy(source, spec.sampler, spec.steps, schedule)
            genome = tuple(width_index(widths, moved.widths[g]) for g in moved.genes)
        except StrategyError as exc:
            raise ConfigError(f"warm start {label} ({source.describe()}): {exc}") from None
        if genome in uniform or genome in seeds:
            dropped += 1
            continue
        seeds[genome] = None
    notes = []
    if dropped:
        notes.append(
            f"warm start: dropped {dropped} duplicate seed(s) (a uniform strategy or an earlier seed)"
        )
    room = spec.population - len(widths)
    kept = list(seeds)[:room]
    if len(seeds) > room:
        notes.append(
            f"warm start: kept the first {room} of {len(seeds)} seeds (population {spec.population} "
            f"holds the {len(widths)} uniform strategies and {room} seeds)"
        )
    dicts = tuple(Strategy(spec.sampler, spec.steps, widths, g).to_dict() for g in kept)
    return dataclasses.replace(spec, warm_start=dicts), notes
