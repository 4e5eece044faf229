"""Step-aware strategies: one width per sampler step (torch-free).

A :class:`Strategy` is a frozen, validated value. It names the sampler and its step count, the width set
the supernet offers (fractions of full width, ascending) and one *gene* per sampler step: the index of
the width that step runs at. Step 0 is the first sampler step, at the noisiest sigma (t close to T);
step ``steps - 1`` is the last one, which produces the clean image (t close to 0).

Network calls per sampler step:

- ``ddpm``, ``ddim``, ``dpmpp`` (DPM-Solver++(2M)): one call per step.
- ``edm`` (EDM's Heun 2nd-order sampler, Karras et al. 2022, Alg. 1): two calls per step (the Euler
  predictor at ``sigma_i`` and the trapezoidal corrector at ``sigma_{i+1}``), except the last step,
  which goes to sigma = 0 and is a plain Euler step (one call): ``2 * steps - 1`` calls in all.
  **Both evaluations of a Heun step use that step's width**: a step is the unit the strategy (and the
  search) decides on, and the corrector belongs to the step it corrects.
  Note for comparisons with the paper: its EDM totals (0.61 TFLOPs for "50 steps", 1.22 for "100" at
  12.14 GFLOPs per call) are about 50 and 100 network calls, so there "steps" counts evaluations;
  here 50 Heun steps are 99 calls (about 26 Heun steps make 51 calls).

This module imports nothing outside the standard library and :mod:`ddsm_core.widths` /
:mod:`ddsm_core.errors`, so the API process (and the search controller) can use it without torch.
Strategies serialize to JSON (:meth:`Strategy.to_json`); they are never ``eval``-ed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddsm_core.errors import StrategyError, choices_message
from ddsm_core.widths import DEFAULT_WIDTHS, format_width, parse_width

SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "edm", "dpmpp")
"""Canonical sampler names."""

SAMPLER_ALIASES: dict[str, str] = {"edm-heun": "edm", "dpm-solver++": "dpmpp"}
"""Other accepted spellings, mapped to the canonical name."""

JSON_FORMAT = "ddsm-strategy"
JSON_VERSION = 1
_JSON_KEYS = ("format", "version", "sampler", "steps", "widths", "genes", "width_per_step")
_WIDTH_TOL = 1e-9


def canonical_sampler(name: str) -> str:
    """The canonical name of a sampler (``"edm-heun"`` -> ``"edm"``).

    :raises StrategyError: for an unknown name; the message lists every allowed spelling.
    """
    key = str(name).strip().lower()
    if key in SAMPLERS:
        return key
    if key in SAMPLER_ALIASES:
        return SAMPLER_ALIASES[key]
    raise StrategyError(choices_message("sampler", name, SAMPLERS + tuple(SAMPLER_ALIASES)))


def calls_per_step(sampler: str, steps: int) -> tuple[int, ...]:
    """Number of network evaluations of each sampler step (see the module docstring)."""
    if canonical_sampler(sampler) == "edm":
        return (2,) * (steps - 1) + (1,)
    return (1,) * steps


def width_index(widths: Sequence[float], width: float) -> int:
    """Index of ``width`` in ``widths``; :class:`StrategyError` listing the allowed widths otherwise."""
    for i, w in enumerate(widths):
        if abs(w - width) <= _WIDTH_TOL:
            return i
    raise StrategyError(choices_message("width", width, [format_width(w) for w in widths]))


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StrategyError(f"{name} must be an integer, got {value!r}")
    return value


def _check_widths(widths: Any) -> tuple[float, ...]:
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or len(widths) == 0:
        raise StrategyError(f"widths must be a non-empty sequence of fractions, got {widths!r}")
    out = []
    for w in widths:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise StrategyError(f"width {w!r} is not a number")
        if not 0.0 < w <= 1.0:
            raise StrategyError(f"width {w!r} must be a fraction in (0, 1]")
        out.append(float(w))
    if any(b <= a for a, b in zip(out, out[1:], strict=False)):
        raise StrategyError(f"widths must be strictly increasing, got {out}")
    return tuple(out)


@dataclass(frozen=True)
class Strategy:
    """One width per sampler step.

    :param sampler: ``"ddpm"``, ``"ddim"``, ``"edm"`` or ``"dpmpp"`` (aliases ``"edm-heun"``,
        ``"dpm-solver++"`` are accepted and stored canonically).
    :param steps: number of sampler steps (>= 1).
    :param widths: the width set, fractions of full width, strictly increasing.
    :param genes: ``steps`` width indices into ``widths``; ``genes[0]`` is the noisiest step.
    :raises StrategyError: for any inconsistency, with a message that says what does not fit.
    """

    sampler: str
    steps: int
    widths: tuple[float, ...]
    genes: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "sampler", canonical_sampler(self.sampler))
        steps = _check_int("steps", self.steps)
        if steps < 1:
            raise StrategyError(f"steps must be >= 1, got {steps}")
        object.__setattr__(self, "widths", _check_widths(self.widths))
        genes = self.genes
        if isinstance(genes, (str, bytes)) or not isinstance(genes, Sequence):
            raise StrategyError(f"genes must be a sequence of width indices, got {genes!r}")
        genes = tuple(_check_int("gene", g) for g in genes)
        if len(genes) != steps:
            raise StrategyError(
                f"strategy has {len(genes)} genes but the {self.sampler} sampler runs {steps} steps: "
                "give exactly one width index per sampler step"
            )
        n = len(self.widths)
        bad = [(i, g) for i, g in enumerate(genes) if not 0 <= g < n]
        if bad:
            i, g = bad[0]
            raise StrategyError(f"gene {g} at step {i} is out of range: width indices are 0..{n - 1}")
        object.__setattr__(self, "genes", genes)

    # ----------------------------------------------------------------------------------- constructors
    @classmethod
    def uniform(
        cls, sampler: str, steps: int, index: int, widths: Sequence[float] = DEFAULT_WIDTHS
    ) -> Strategy:
        """Every step at ``widths[index]`` (``index=-1`` is the full width)."""
        widths = _check_widths(widths)
        index = _check_int("index", index)
        if not -len(widths) <= index < len(widths):
            raise StrategyError(f"width index {index} is out of range: 0..{len(widths) - 1}")
        return cls(sampler, steps, widths, (index % len(widths),) * _check_int("steps", steps))

    @classmethod
    def piecewise(
        cls,
        sampler: str,
        steps: int,
        indices: Sequence[int],
        boundaries: Sequence[float] | None = None,
        widths: Sequence[float] = DEFAULT_WIDTHS,
    ) -> Strategy:
        """A piecewise-constant strategy, from the noisiest step to the cleanest.

        The trajectory is cut into ``len(indices)`` segments at ``boundaries`` (fractions of the
        steps, strictly increasing in (0, 1); default: equal segments). Segment ``k`` covers steps
        ``round(b[k-1] * steps) <= i < round(b[k] * steps)`` and runs at ``widths[indices[k]]``.

        Example: ``Strategy.piecewise("ddim", 10, [0, 6], [0.5])`` runs 5 steps at 2/8 then 5 at 8/8.
        """
        steps = _check_int("steps", steps)
        indices = list(indices)
        if not indices:
            raise StrategyError("piecewise strategy needs at least one width index")
        if boundaries is None:
            boundaries = [k / len(indices) for k in range(1, len(indices))]
        boundaries = [float(b) for b in boundaries]
        if len(boundaries) != len(indices) - 1:
            raise StrategyError(
                f"{len(indices)} segments need {len(indices) - 1} boundaries, got {len(boundaries)}"
            )
        if any(not 0.0 < b < 1.0 for b in boundaries) or any(
            b2 <= b1 for b1, b2 in zip(boundaries, boundaries[1:], strict=False)
        ):
            raise StrategyError(f"boundaries must be strictly increasing in (0, 1), got {boundaries}")
        cuts = [0] + [round(b * steps) for b in boundaries] + [steps]
        genes: list[int] = []
        for k, index in enumerate(indices):
            genes += [index] * (cuts[k + 1] - cuts[k])
        return cls(sampler, steps, tuple(widths), tuple(genes))

    def with_genes(self, genes: Sequence[int]) -> Strategy:
        """The same sampler, steps and width set with other genes (e.g. a search genome)."""
        return Strategy(self.sampler, self.steps, self.widths, tuple(genes))

    def resampled(self, steps: int, sampler: str | None = None) -> Strategy:
        """This strategy transferred to another step count (and optionally another sampler).

        New step ``j`` takes the gene of the old step at the same relative position along the
        trajectory, ``floor((j + 0.5) * old_steps / steps)``: a proxy search with few steps can warm-start
        a longer one.
        """
        steps = _check_int("steps", steps)
        if steps < 1:
            raise StrategyError(f"steps must be >= 1, got {steps}")
        old = self.steps
        genes = tuple(self.genes[min(old - 1, int((j + 0.5) * old / steps))] for j in range(steps))
        return Strategy(sampler or self.sampler, steps, self.widths, genes)

    # ----------------------------------------------------------------------------------- queries
    def width_at(self, step: int) -> float:
        """Width (fraction) of sampler step ``step`` (0 = noisiest)."""
        step = _check_int("step", step)
        if not 0 <= step < self.steps:
            raise StrategyError(f"step {step} is out of range: 0..{self.steps - 1}")
        return self.widths[self.genes[step]]

    @property
    def width_per_step(self) -> tuple[float, ...]:
        """Width of every sampler step, noisiest first."""
        return tuple(self.widths[g] for g in self.genes)

    def network_calls(self) -> list[float]:
        """Width of every network evaluation, in the order the sampler makes them.

        One per step for DDPM, DDIM and DPM-Solver++; for EDM Heun two per step (both at the step's
        width) except the final Euler step: ``2 * steps - 1`` entries.
        """
        calls: list[float] = []
        for width, n in zip(self.width_per_step, calls_per_step(self.sampler, self.steps), strict=True):
            calls += [width] * n
        return calls

    @property
    def n_calls(self) -> int:
        """Number of network evaluations (NFE)."""
        return sum(calls_per_step(self.sampler, self.steps))

    def describe(self) -> str:
        """Short human label, run-length encoded: ``"ddim/10: 2/8x5 8/8x5"``."""
        runs: list[list[Any]] = []
        for g in self.genes:
            if runs and runs[-1][0] == g:
                runs[-1][1] += 1
            else:
                runs.append([g, 1])
        body = " ".join(f"{format_width(self.widths[g])}x{n}" for g, n in runs)
        return f"{self.sampler}/{self.steps}: {body}"

    # ----------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable dict (``width_per_step`` is informative and checked on load)."""
        return {
            "format": JSON_FORMAT,
            "version": JSON_VERSION,
            "sampler": self.sampler,
            "steps": self.steps,
            "widths": list(self.widths),
            "genes": list(self.genes),
            "width_per_step": list(self.width_per_step),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Strategy:
        """Inverse of :meth:`to_dict`; :class:`StrategyError` on a malformed or inconsistent dict."""
        if not isinstance(data, Mapping):
            raise StrategyError(f"a strategy must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_JSON_KEYS))
        if unknown:
            raise StrategyError(f"unknown strategy keys {unknown}; allowed: {', '.join(_JSON_KEYS)}")
        missing = [k for k in ("sampler", "steps", "widths", "genes") if k not in data]
        if missing:
            raise StrategyError(f"strategy is missing keys {missing}")
        if data.get("format", JSON_FORMAT) != JSON_FORMAT:
            raise StrategyError(f"not a strategy file: format {data['format']!r}, expected {JSON_FORMAT!r}")
        if data.get("version", JSON_VERSION) != JSON_VERSION:
            raise StrategyError(f"unsupported strategy version {data['version']!r}; expected {JSON_VERSION}")
        widths, genes = data["widths"], data["genes"]
        if not isinstance(widths, list) or not isinstance(genes, list):
            raise StrategyError("strategy 'widths' and 'genes' must be lists")
        strategy = cls(data["sampler"], data["steps"], tuple(widths), tuple(genes))
        per_step = data.get("width_per_step")
        if per_step is not None and (
            not isinstance(per_step, list)
            or len(per_step) != strategy.steps
            or any(
                not isinstance(a, (int, float)) or abs(a - b) > _WIDTH_TOL
                for a, b in zip(per_step, strategy.width_per_step, strict=True)
            )
        ):
            raise StrategyError("strategy 'width_per_step' does not match its widths and genes")
        return strategy

    def to_json(self, indent: int | None = None) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=indent)

    def file_text(self) -> str:
        """The text of a strategy file, as every writer of one writes it (``ddsm search``'s report
        folder, ``ddsm strategy transfer --out``, ``GET /searches/{id}/strategies/{name}``): the same
        strategy gives the same bytes wherever it was downloaded or written."""
        return self.to_json(indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Strategy:
        """Parse JSON text (never ``eval``); :class:`StrategyError` on invalid JSON."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StrategyError(f"strategy is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def parse_strategy_spec(
    spec: str | os.PathLike[str],
    sampler: str | None,
    steps: int | None,
    widths: Sequence[float] | None = None,
) -> Strategy:
    """A strategy from a command-line spec.

    Accepted forms:

    - ``"uniform:8/8"`` (or ``"uniform:0.75"``): every step at that width;
    - ``"piecewise:2/8,4/8,8/8"``: equal segments, noisiest first;
    - a path to a strategy JSON file (:meth:`Strategy.to_json`, e.g. a report's ``pick.json``), or to
      a search report's ``results.json`` (its pick). A file carries its sampler and steps: ``sampler``
      and ``steps`` are then checks (``None``: take the file's).

    :param sampler: the sampler of the inline forms (required for them).
    :param widths: the model's width set; ``None`` means :data:`DEFAULT_WIDTHS` for the inline forms
        and "do not check" for files.
    :raises StrategyError: for an unknown form, a width not in the set, or a file that does not fit.
    """
    text = os.fspath(spec)
    kind, sep, arg = text.partition(":")
    width_set = DEFAULT_WIDTHS if widths is None else tuple(widths)
    if sep and kind in ("uniform", "piecewise"):
        if sampler is None or steps is None:
            raise StrategyError(f"{text!r} needs a sampler and a step count")
        try:
            parsed = [parse_width(s.strip()) for s in arg.split(",") if s.strip()]
        except ValueError as exc:
            raise StrategyError(str(exc)) from exc
        indices = [width_index(width_set, w) for w in parsed]
        if kind == "uniform":
            if len(indices) != 1:
                raise StrategyError(f"'uniform:' takes one width, e.g. 'uniform:8/8', got {text!r}")
            return Strategy.uniform(sampler, steps, indices[0], width_set)
        return Strategy.piecewise(sampler, steps, indices, None, width_set)
    path = Path(text)
    if not path.is_file():
        raise StrategyError(
            f"strategy {text!r} is neither 'uniform:<width>', 'piecewise:<w1>,<w2>,...' "
            "nor an existing JSON file"
        )
    try:
        strategy = _strategy_of_file(path.read_bytes())
    except StrategyError as exc:
        raise StrategyError(f"{path}: {exc}") from exc
    want_sampler = strategy.sampler if sampler is None else canonical_sampler(sampler)
    want_steps = strategy.steps if steps is None else steps
    if strategy.sampler != want_sampler or strategy.steps != want_steps:
        raise StrategyError(
            f"{path} is a strategy for {strategy.sampler} with {strategy.steps} steps, "
            f"but sampling runs {want_sampler} with {want_steps} steps (leave out --sampler/--steps "
            "to use the file's)"
        )
    if widths is not None and not _same_widths(strategy.widths, width_set):
        raise StrategyError(
            f"{path} uses widths {[format_width(w) for w in strategy.widths]}, "
            f"the model offers {[format_width(w) for w in width_set]}"
        )
    return strategy


def _strategy_of_file(text: bytes) -> Strategy:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StrategyError(f"strategy is not valid JSON: {exc}") from exc
    return strategy_of_document(data)


def strategy_of_document(data: Any) -> Strategy:
    """A strategy from parsed JSON: a strategy file (``pick.json``, :meth:`Strategy.to_dict`) or a
    search report's ``results.json`` (its pick; the report's config gives the sampler grid)."""
    if isinstance(data, Mapping) and "config" in data and "genes" not in data:
        cfg, pick = data["config"], data.get("pick")
        if not isinstance(pick, Mapping):  # a search's results.json written before it finished
            raise StrategyError("a search report without a pick: did the search finish?")
        try:
            return Strategy(cfg["sampler"], cfg["steps"], tuple(cfg["widths"]), tuple(pick["genome"]))
        except (KeyError, TypeError) as exc:
            raise StrategyError(f"a search report without a readable pick (no {exc})") from exc
    return Strategy.from_dict(data)


def _same_widths(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= _WIDTH_TOL for x, y in zip(a, b, strict=True))
