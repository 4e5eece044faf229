"""Strategy transfer: a strategy for one sampler and step count mapped to another by noise level.

A searched strategy is really a width as a function of the noise level: the network runs narrow where
the sample is still noise and wide where details form. Transfer reads it that way. Every sampler step
``i`` calls the network at the noise level ``sigma_i`` of its grid, i.e. at the log-SNR
``lambda_i = -2 log sigma_i`` (:mod:`ddsm_core.schedules`). All grids of one noise schedule span the
same range, from ``sigma_max`` (t = T-1, the first step) to ``sigma_min`` (t = 0, the last), but they
place their steps differently inside it (DDPM/DDIM uniform in t, EDM dense near ``sigma_min``,
DPM-Solver++ uniform in log-SNR).

The rule. Each step owns the stretch of log-SNR nearer to its own ``lambda_i`` than to any other
step's (its *cell*: boundaries halfway between neighbouring steps, the outer cells end at the range's
ends; a one-step grid owns the whole range). The source strategy is thus a step function
``w(lambda)``. Target step ``j`` takes the width that covers the largest part of its cell
(ties: the wider width, the quality-safe choice). Why this rule:

- it is the identity for the same sampler and step count (the cells coincide);
- it is monotone: a strategy whose width never decreases (or never increases) along the trajectory
  maps to one that does too, as cells are ordered intervals and a monotone step function's majority
  value over ordered intervals is ordered;
- it preserves the share of the log-SNR range at each width up to one target cell per width switch,
  and for the same sampler at another step count the share of steps at each width (the cells are the
  same map of t);
- it never invents a width the search did not choose, and where the target is coarser than the source
  (DDIM-50 -> DPM-Solver++-10) a target step follows what most of its noise range ran at, not
  whichever source step happens to sit nearest to its single evaluation point.

The grids are computed here in numpy, as the same numbers as :func:`ddsm_core.sampling.get_sigmas`
(a test compares them for every sampler), so that the API process, which has no torch, can transfer
strategies (warm starts). The width set stays the source's: a strategy is for one supernet.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ddsm_core.errors import ConfigError, StrategyError
from ddsm_core.strategy import Strategy, canonical_sampler

DEFAULT_SCHEDULE: dict[str, Any] = {"kind": "linear", "T": 1000, "beta_start": 1e-4, "beta_end": 0.02}
"""DDPM's linear schedule, the one every preset trains with (``NoiseSchedule.linear().to_dict()``)."""

_SCHEDULE_KEYS = ("kind", "T", "beta_start", "beta_end", "cosine_s")
_EDM_RHO = 7.0  # EDM eq. 5, as sampling.get_sigmas_karras


def _schedule_dict(schedule: Mapping[str, Any] | Any | None) -> dict[str, Any]:
    """A schedule's parameters: a ``NoiseSchedule.to_dict()`` mapping, a schedule object, or None."""
    if schedule is None:
        return dict(DEFAULT_SCHEDULE)
    if not isinstance(schedule, Mapping) and hasattr(schedule, "to_dict"):
        schedule = schedule.to_dict()
    if not isinstance(schedule, Mapping):
        raise ConfigError(f"a noise schedule must be a mapping like {DEFAULT_SCHEDULE}, got {schedule!r}")
    unknown = sorted(set(schedule) - set(_SCHEDULE_KEYS))
    if unknown:
        raise ConfigError(f"unknown noise schedule keys {unknown}; allowed: {', '.join(_SCHEDULE_KEYS)}")
    return {"kind": "linear", "T": 1000, "beta_start": 1e-4, "beta_end": 0.02, "cosine_s": 0.008} | dict(
        schedule
    )


def named_schedule(kind: str, timesteps: int = 1000) -> dict[str, Any]:
    """The parameters of a noise schedule by name (what the presets train with), for a transfer without
    a supernet at hand; the CLI and the REST API read ``--schedule``/``schedule`` through this.

    :raises ConfigError: for an unknown kind.
    """
    if kind == "linear":
        return {"kind": "linear", "T": timesteps, "beta_start": 1e-4, "beta_end": 0.02}
    if kind == "cosine":
        return {"kind": "cosine", "T": timesteps, "cosine_s": 0.008}
    raise ConfigError(f"unknown noise schedule {kind!r}; allowed: linear, cosine")


def check_widths(strategy: Strategy, widths: Sequence[float], where: str = "the checkpoint") -> None:
    """A strategy is for one supernet: its width set must be the supernet's (``widths``; empty: unknown).

    :raises StrategyError: naming both width sets.
    """
    from ddsm_core.widths import format_width

    if widths and (
        len(widths) != len(strategy.widths)
        or any(abs(a - b) > 1e-9 for a, b in zip(widths, strategy.widths, strict=True))
    ):
        raise StrategyError(
            f"the strategy uses widths {[format_width(w) for w in strategy.widths]}, "
            f"{where} offers {[format_width(w) for w in widths]}"
        )


def schedule_sigmas(schedule: Mapping[str, Any] | Any | None = None) -> np.ndarray:
    """The VE sigmas ``sqrt((1 - abar_t) / abar_t)`` of every timestep, float64 ``[T]`` (numpy).

    The same table as ``NoiseSchedule.sigmas`` (linear: DDPM's betas; cosine: Nichol & Dhariwal eq. 17,
    betas clipped at 0.999).

    :param schedule: ``NoiseSchedule.to_dict()`` (default: DDPM's linear schedule, T = 1000).
    :raises ConfigError: for an unknown kind or out-of-range parameters.
    """
    s = _schedule_dict(schedule)
    T = s["T"]
    if isinstance(T, bool) or not isinstance(T, int) or T < 2:
        raise ConfigError(f"schedule needs an integer T >= 2, got {T!r}")
    if s["kind"] == "linear":
        b0, b1 = s["beta_start"], s["beta_end"]
        if not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in (b0, b1)) or not (
            0.0 < b0 <= b1 < 1.0
        ):
            raise ConfigError(f"linear schedule needs 0 < beta_start <= beta_end < 1, got {b0}, {b1}")
        betas = np.linspace(b0, b1, T, dtype=np.float64)
    elif s["kind"] == "cosine":
        steps = np.arange(T + 1, dtype=np.float64) / T
        f = np.cos((steps + s["cosine_s"]) / (1 + s["cosine_s"]) * math.pi / 2) ** 2
        betas = np.minimum(1 - f[1:] / f[:-1], 0.999)
    else:
        raise ConfigError(f"unknown noise schedule {s['kind']!r}; allowed: linear, cosine")
    abar = np.cumprod(1.0 - betas)
    return np.sqrt((1.0 - abar) / abar)


def respaced_timesteps(T: int, steps: int) -> np.ndarray:
    """``steps`` timesteps evenly spaced over ``[T-1, 0]``, rounded half to even, in exact integers.

    The intent of ``sampling.respaced_timesteps`` (``round(linspace(T-1, 0, steps))``). Integer
    arithmetic because a float ``linspace`` hits exact ties (``999 / 2 = 499.5``) off by an ulp either
    way, depending on the library and the CPU's vector width; there the two may differ by one timestep.
    """
    if steps == 1:
        return np.array([T - 1], dtype=np.int64)
    num = (T - 1) * (steps - 1 - np.arange(steps, dtype=np.int64))
    den = steps - 1
    floor, rem = np.divmod(num, den)
    up = (2 * rem > den) | ((2 * rem == den) & (floor % 2 == 1))
    return floor + up


def step_sigmas(sampler: str, steps: int, schedule: Mapping[str, Any] | Any | None = None) -> np.ndarray:
    """The noise level of every sampler step, float64 ``[steps]``, noisiest first.

    ``sampling.get_sigmas(...)[:-1]``: the sigma at which step ``i`` first calls the network.

    :raises StrategyError: for an unknown sampler or a step count the sampler cannot run.
    """
    sampler = canonical_sampler(sampler)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise StrategyError(f"steps must be an integer >= 1, got {steps!r}")
    table = schedule_sigmas(schedule)
    T = len(table)
    sigma_min, sigma_max = float(table[0]), float(table[-1])
    if sampler in ("ddpm", "ddim"):
        if steps > T:
            raise StrategyError(f"a DDPM/DDIM sampler runs 1..{T} steps on a {T}-step schedule, got {steps}")
        return table[respaced_timesteps(T, steps)]
    if sampler == "edm":
        ramp = np.linspace(0.0, 1.0, steps) if steps > 1 else np.zeros(1)
        lo, hi = sigma_min ** (1 / _EDM_RHO), sigma_max ** (1 / _EDM_RHO)
        return (hi + ramp * (lo - hi)) ** _EDM_RHO
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), steps))


def step_log_snr(sampler: str, steps: int, schedule: Mapping[str, Any] | Any | None = None) -> np.ndarray:
    """Log-SNR ``lambda_i = -2 log sigma_i`` of every sampler step, increasing (noisiest first)."""
    return -2.0 * np.log(step_sigmas(sampler, steps, schedule))


def _cells(log_snr: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Each step's cell ``[left, right]`` in log-SNR: halfway to its neighbours, ``lo``/``hi`` outside."""
    mids = (log_snr[1:] + log_snr[:-1]) / 2
    return np.concatenate([[lo], mids]), np.concatenate([mids, [hi]])


def transfer_strategy(
    strategy: Strategy,
    sampler: str,
    steps: int,
    schedule: Mapping[str, Any] | Any | None = None,
) -> Strategy:
    """``strategy`` mapped to ``sampler`` with ``steps`` steps by log-SNR (see the module docstring).

    :param strategy: the source strategy (its sampler and steps define where its widths sit).
    :param sampler: the target sampler (any accepted spelling).
    :param steps: the target step count.
    :param schedule: the supernet's noise schedule, ``NoiseSchedule.to_dict()`` or the schedule itself
        (default: DDPM's linear schedule with T = 1000, which every preset uses).
    :return: a strategy for ``sampler``/``steps`` over the same width set.
    :raises StrategyError: for an unknown sampler or a step count it cannot run.
    """
    src = step_log_snr(strategy.sampler, strategy.steps, schedule)
    dst = step_log_snr(sampler, steps, schedule)
    # every grid spans [lambda(sigma_max), lambda(sigma_min)]; take the union against rounding
    lo, hi = min(src[0], dst[0]), max(src[-1], dst[-1])
    src_left, src_right = _cells(src, lo, hi)
    dst_left, dst_right = _cells(dst, lo, hi)
    # overlap[j, i] = length of target cell j inside source cell i
    overlap = np.clip(
        np.minimum(dst_right[:, None], src_right[None, :]) - np.maximum(dst_left[:, None], src_left[None, :]),
        0.0,
        None,
    )
    genes = np.asarray(strategy.genes)
    n_widths = len(strategy.widths)
    per_width = np.zeros((len(dst), n_widths))
    for k in range(n_widths):
        per_width[:, k] = overlap[:, genes == k].sum(axis=1)
    new_genes = []
    for j, row in enumerate(per_width):
        if row.max() <= 0.0:  # a zero-length cell cannot happen on valid grids; nearest step then
            new_genes.append(int(genes[int(np.argmin(np.abs(src - dst[j])))]))
            continue
        # ties to the wider width: the last index whose share is (numerically) the largest
        best = np.flatnonzero(row >= row.max() * (1 - 1e-12))
        new_genes.append(int(best[-1]))
    return Strategy(canonical_sampler(sampler), steps, strategy.widths, tuple(new_genes))


def width_share(strategy: Strategy, schedule: Mapping[str, Any] | Any | None = None) -> dict[float, float]:
    """The fraction of the log-SNR range each width covers under the transfer rule's cells.

    What :func:`transfer_strategy` preserves (up to one target cell per width switch).
    """
    lam = step_log_snr(strategy.sampler, strategy.steps, schedule)
    sig = schedule_sigmas(schedule)
    lo, hi = -2.0 * math.log(float(sig[-1])), -2.0 * math.log(float(sig[0]))
    left, right = _cells(lam, lo, hi)
    total = hi - lo
    share = {w: 0.0 for w in strategy.widths}
    for g, a, b in zip(strategy.genes, left, right, strict=True):
        share[strategy.widths[g]] += float(b - a) / total
    return share


def read_strategies(path: str | os.PathLike[str]) -> list[tuple[str, Strategy]]:
    """The strategies in a file: a strategy JSON (one), or a search's results.json (its pick and knee
    first, then every genome of its front, without repeats), as ``(label, strategy)`` pairs.

    A results.json is read through its ``config`` (``sampler``, ``steps``, ``widths``) and the
    ``genome`` of ``pick``, ``knee`` and each ``front`` entry: what warm starts and transfers need.

    :raises StrategyError: naming the file when it is missing, not JSON, or neither kind.
    """
    p = Path(path)
    if not p.is_file():
        raise StrategyError(f"strategy file {p} does not exist")
    try:
        data = json.loads(p.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StrategyError(f"{p}: strategy is not valid JSON: {exc}") from exc
    try:
        if isinstance(data, Mapping) and "genes" in data:
            return [(p.stem, Strategy.from_dict(data))]
        if isinstance(data, Mapping) and isinstance(data.get("config"), Mapping):
            return results_strategies(data)
    except StrategyError as exc:
        raise StrategyError(f"{p}: {exc}") from exc
    raise StrategyError(f"{p} is neither a strategy (no 'genes') nor a search's results.json (no 'config')")


def results_strategies(results: Mapping[str, Any]) -> list[tuple[str, Strategy]]:
    """The strategies of a search's results (see :func:`read_strategies`): pick, knee, then the front."""
    cfg = results["config"]
    missing = [k for k in ("sampler", "steps", "widths") if k not in cfg]
    if missing:
        raise StrategyError(f"the results' config lacks {missing}")
    entries = [("pick", results.get("pick")), ("knee", results.get("knee"))]
    entries += [(f"front {k}", e) for k, e in enumerate(results.get("front") or [])]
    out, seen = [], set()
    for label, entry in entries:
        genome = entry.get("genome") if isinstance(entry, Mapping) else None
        if genome is None or tuple(genome) in seen:
            continue
        seen.add(tuple(genome))
        out.append((label, Strategy(cfg["sampler"], cfg["steps"], tuple(cfg["widths"]), tuple(genome))))
    if not out:
        raise StrategyError("the results hold no genome (pick, knee or front): did the search finish?")
    return out
