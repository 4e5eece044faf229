"""Evaluate one step-aware strategy: sample from fixed seeds, FID, GFLOPs and measured latency.

Common random numbers: image ``i`` is sampled from ``seeds[i]`` (initial and per-step noise, see
:func:`ddsm_core.sampling.sample`), so every candidate strategy sees the same noise and FID
differences come from the strategy, not the draw; results do not depend on ``batch_size``.
A diverged candidate (non-finite images or FID) is a ``failed`` result with its reason, never an
exception: the search gives it a penalty and goes on. Mismatched reference statistics are a
:class:`~ddsm_core.errors.StatsError` raised before any sampling.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ddsm_core.costs import CostTable, mean_gflops_per_call, strategy_gflops
from ddsm_core.errors import StrategyError
from ddsm_core.fid import FeatureExtractor, FeatureStats, FIDError, extract_features
from ddsm_core.schedules import NoiseSchedule
from ddsm_core.strategy import Strategy
from ddsm_core.widths import format_width


@dataclass(frozen=True)
class EvalResult:
    """One evaluation record (JSON-able through :meth:`to_dict`).

    :param fid: Frechet distance with ``extractor``'s features; None when ``status == "failed"``.
    :param gflops: GFLOPs to sample ONE image (sum over its network calls, 2 x multiply-adds).
    :param gflops_per_call: the same averaged per network call (the paper's table unit).
    :param latency_s: measured sampling wall time per image, at ``batch_size`` images per batch.
    """

    fid: float | None
    extractor: str
    gflops: float
    gflops_per_call: float
    latency_s: float
    n_images: int
    status: Literal["ok", "failed"] = "ok"
    reason: str | None = None
    network_calls: int = 0
    strategy: str = ""
    batch_size: int = 0
    device: str = "cpu"
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def label(self) -> str:
        """What the number is: e.g. ``FID (domain:digits-cnn-v1)``."""
        return f"FID ({self.extractor})"

    def objectives(self) -> tuple[float, float] | None:
        """(FID, GFLOPs per image) for the search, None when failed."""
        return (float(self.fid), self.gflops) if self.ok and self.fid is not None else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def resolve_seeds(seeds: Sequence[int] | int, n_images: int) -> list[int]:
    """``seeds`` as a list of ``n_images`` per-image seeds (an int means ``seed, seed+1, ...``)."""
    if isinstance(seeds, int):
        return list(range(seeds, seeds + n_images))
    seeds = [int(s) for s in seeds]
    if len(seeds) < n_images:
        raise ValueError(f"{n_images} images need {n_images} seeds, got {len(seeds)}")
    return seeds[:n_images]


def class_labels(model: nn.Module, seeds: Sequence[int]) -> Tensor | None:
    """Labels for a class-conditional model, a fixed function of the seed (``seed % classes``)."""
    classes = getattr(getattr(model, "config", None), "num_classes", None)
    return torch.tensor([s % classes for s in seeds], dtype=torch.long) if classes else None


def check_strategy_fits(model: nn.Module, strategy: Strategy) -> None:
    allowed = getattr(getattr(model, "config", None), "widths", None)
    if allowed is None:
        return
    missing = [w for w in strategy.widths if not any(abs(w - a) < 1e-9 for a in allowed)]
    if missing:
        raise StrategyError(
            f"strategy widths {[format_width(w) for w in missing]} are not in the model's width set "
            f"{[format_width(w) for w in allowed]}"
        )


def sample_images(
    model: nn.Module,
    schedule: NoiseSchedule,
    strategy: Strategy,
    seeds: Sequence[int],
    batch_size: int,
    *,
    device: str | torch.device = "cpu",
    shape: Sequence[int] | None = None,
) -> tuple[Tensor, float]:
    """Sample one image per seed, unclipped (so divergence stays visible); returns (images, seconds)."""
    from ddsm_core.sampling import VPDenoiser, sample

    if shape is None:
        cfg = model.config  # type: ignore[attr-defined]
        shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    denoiser = VPDenoiser(model.eval(), schedule)
    device = torch.device(device)
    y = class_labels(model, seeds)
    out, seconds = [], 0.0
    with torch.inference_mode():
        for start in range(0, len(seeds), batch_size):
            chunk = seeds[start : start + batch_size]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            ys = None if y is None else y[start : start + batch_size]
            x = sample(denoiser, strategy, shape, chunk, y=ys, device=device, clip=False)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds += time.perf_counter() - t0
            out.append(x.float().cpu())
    return torch.cat(out), seconds


def fid_of_images(
    images: Tensor, ref_stats: FeatureStats, extractor: FeatureExtractor, batch_size: int = 250
) -> float:
    """FID of images in [-1, 1] against ``ref_stats`` (compatibility checked first)."""
    ref_stats.check_compatible(extractor.name, extractor.dim)
    stats = FeatureStats.from_features(extract_features(extractor, images, batch_size), extractor.name)
    return ref_stats.fid(stats)


def evaluate(
    model: nn.Module,
    schedule: NoiseSchedule,
    strategy: Strategy,
    ref_stats: FeatureStats,
    extractor: FeatureExtractor,
    n_images: int,
    seeds: Sequence[int] | int,
    batch_size: int = 250,
    *,
    costs: CostTable | None = None,
    device: str | torch.device = "cpu",
) -> EvalResult:
    """Sample ``n_images`` with ``strategy`` from ``seeds`` and measure FID, GFLOPs and latency.

    :param costs: GFLOPs per call and width (:func:`ddsm_core.flops.cost_table`; computed if None).
    :raises StatsError: ``ref_stats`` do not match ``extractor`` (before any sampling).
    :raises StrategyError: the strategy uses a width the model does not have.
    """
    start = time.perf_counter()
    ref_stats.check_compatible(extractor.name, extractor.dim)  # fail before spending any sampling time
    check_strategy_fits(model, strategy)
    if costs is None:
        from ddsm_core.flops import cost_table

        costs = cost_table(model)  # type: ignore[arg-type]
    seed_list = resolve_seeds(seeds, n_images)
    common = {
        "extractor": extractor.name,
        "gflops": strategy_gflops(strategy, costs),
        "gflops_per_call": mean_gflops_per_call(strategy, costs),
        "n_images": n_images,
        "network_calls": len(strategy.network_calls()),
        "strategy": strategy.describe(),
        "batch_size": batch_size,
        "device": str(device),
    }
    images, seconds = sample_images(model, schedule, strategy, seed_list, batch_size, device=device)
    common["latency_s"] = seconds / max(n_images, 1)

    def done(fid: float | None, reason: str | None = None) -> EvalResult:
        status: Literal["ok", "failed"] = "ok" if reason is None else "failed"
        return EvalResult(fid, status=status, reason=reason, seconds=time.perf_counter() - start, **common)

    bad = int((~torch.isfinite(images.flatten(1)).all(1)).sum())
    if bad:
        return done(None, f"{bad} of {n_images} sampled images are not finite (the sampler diverged)")
    try:
        fid = fid_of_images(images.clamp(-1.0, 1.0), ref_stats, extractor, batch_size)
    except FIDError as exc:
        return done(None, f"FID failed: {exc}")
    if not math.isfinite(fid):
        return done(None, f"FID is not finite ({fid})")
    return done(fid)


class GenomeEvaluator:
    """Turns a search genome into an evaluation (``ddsm_core.search.EvaluateFn``), in-process.

    Every genome is sampled from the same seeds (``eval_seed + i`` for image ``i``); the objectives
    told to the search are (FID, GFLOPs per image); the full :class:`EvalResult` is kept as the record.
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: NoiseSchedule,
        ref_stats: FeatureStats,
        extractor: FeatureExtractor,
        *,
        sampler: str,
        steps: int,
        widths: Sequence[float],
        eval_seed: int = 0,
        batch_size: int = 250,
        costs: CostTable | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        ref_stats.check_compatible(extractor.name, extractor.dim)
        if costs is None:
            from ddsm_core.flops import cost_table

            costs = cost_table(model)  # type: ignore[arg-type]
        self.model, self.schedule, self.ref, self.extractor = model, schedule, ref_stats, extractor
        self.sampler, self.steps, self.widths = sampler, steps, tuple(widths)
        self.eval_seed, self.batch_size, self.costs, self.device = eval_seed, batch_size, costs, device
        self.images_sampled = 0
        self.network_calls = 0

    def strategy(self, genome: Sequence[int]) -> Strategy:
        return Strategy(self.sampler, self.steps, self.widths, tuple(int(g) for g in genome))

    def evaluate(self, genome: Sequence[int], n_images: int, seed_offset: int = 0) -> EvalResult:
        strategy = self.strategy(genome)
        result = evaluate(
            self.model, self.schedule, strategy, self.ref, self.extractor, n_images,
            self.eval_seed + seed_offset, self.batch_size, costs=self.costs, device=self.device,
        )  # fmt: skip
        self.images_sampled += n_images
        self.network_calls += n_images * result.network_calls
        return result

    def __call__(self, genome: tuple[int, ...], n_images: int):  # -> ddsm_core.search.Evaluation
        from ddsm_core.search import Evaluation

        result = self.evaluate(genome, n_images)
        return Evaluation(result.objectives(), result.reason, result.to_dict())
