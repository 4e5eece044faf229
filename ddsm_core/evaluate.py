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
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ddsm_core.costs import CostTable, mean_gflops_per_call, strategy_gflops
from ddsm_core.errors import ConfigError, StrategyError
from ddsm_core.fid import FeatureExtractor, FeatureStats, FIDError, extract_features
from ddsm_core.latency import LatencyTable
from ddsm_core.sampling import SamplerState
from ddsm_core.schedules import NoiseSchedule
from ddsm_core.spec import SearchSpec
from ddsm_core.strategy import Strategy
from ddsm_core.widths import format_width


@dataclass(frozen=True)
class EvalResult:
    """One evaluation record (JSON-able through :meth:`to_dict`).

    :param fid: Frechet distance with ``extractor``'s features; None when ``status == "failed"``.
    :param gflops: GFLOPs to sample ONE image (sum over its network calls, 2 x multiply-adds).
    :param gflops_per_call: the same averaged per network call (the paper's table unit).
    :param latency_s: measured sampling wall time per image, at ``batch_size`` images per batch (only
        the steps actually run: ``reused_fraction`` of the sampler steps came from a :class:`PrefixCache`).
    :param predicted_latency_s: seconds per image that a latency table predicts for the strategy at
        the search's batch size (:meth:`ddsm_core.spec.SearchSpec.latency`); None without a table.
    :param paired_distance: mean over images of the squared distance between this strategy's features
        and the full width's features of the same seed (a multi-fidelity rung ranked by ``paired``,
        :class:`FullWidthReference`); None otherwise.
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
    reused_fraction: float = 0.0
    predicted_latency_s: float | None = None
    paired_distance: float | None = None
    # [N x D] per-image features (``evaluate(keep_features=True)``), for paired comparisons between
    # strategies sampled from the same seeds (ddsm_core.paired); never serialised.
    features: Any = field(default=None, repr=False, compare=False)
    # the first images ([K x C x H x W] in [-1, 1], ``evaluate(keep_images=K)``), e.g. for a sample grid
    # of several strategies from the same seeds; never serialised
    images: Any = field(default=None, repr=False, compare=False)

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
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_SERIALISED}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data and k not in _NOT_SERIALISED})


_NOT_SERIALISED = ("features", "images")


def resolve_seeds(seeds: Sequence[int] | int, n_images: int) -> list[int]:
    """``seeds`` as a list of ``n_images`` per-image seeds (an int means ``seed, seed+1, ...``)."""
    if isinstance(seeds, int):
        return list(range(seeds, seeds + n_images))
    seeds = [int(s) for s in seeds]
    if len(seeds) < n_images:
        raise ValueError(f"{n_images} images need {n_images} seeds, got {len(seeds)}")
    return seeds[:n_images]


def class_labels(model: nn.Module, seeds: Sequence[int], label: int | None = None) -> Tensor | None:
    """Labels for a class-conditional model: ``label`` for every image, else a fixed function of the
    seed (``seed % classes``); None for an unconditional model (ConfigError if ``label`` is given)."""
    from ddsm_core.sampling import seed_labels

    classes = getattr(getattr(model, "config", None), "num_classes", None)
    if not classes:
        if label is not None:
            raise ConfigError(f"class {label} given, but the model is not class-conditional")
        return None
    return seed_labels(seeds, classes, label)


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


class PrefixCache:
    """Sampler states before each step, keyed by (first seed, batch length, genes so far).

    Every sampler is a deterministic function of the seeds (initial and per-step noise) and the widths
    of the steps run so far, so the :class:`~ddsm_core.sampling.SamplerState` before step ``i``
    depends only on the batch and ``genes[:i]``: candidates that share a prefix (every one-point
    crossover child shares its first parent's) start :func:`~ddsm_core.sampling.sample` from it. The
    images are bit-identical to sampling from scratch. One cache serves one model, sampler grid and
    labelling; least recently used entries go beyond ``max_bytes``.
    """

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[Any, ...], SamplerState] = OrderedDict()
        self._bytes = 0

    def longest(self, batch: tuple[int, int], genes: tuple[int, ...]) -> SamplerState | None:
        """The state with the longest prefix of ``genes`` (short of all of them), or None."""
        for k in range(len(genes) - 1, 0, -1):
            key = (batch, genes[:k])
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        return None

    def put(self, batch: tuple[int, int], genes: tuple[int, ...], state: SamplerState) -> None:
        key = (batch, genes)
        if key in self._entries:
            return
        self._entries[key] = state
        self._bytes += state.nbytes()
        while self._bytes > self.max_bytes and self._entries:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.nbytes()


def sample_images(
    model: nn.Module,
    schedule: NoiseSchedule,
    strategy: Strategy,
    seeds: Sequence[int],
    batch_size: int,
    *,
    device: str | torch.device = "cpu",
    shape: Sequence[int] | None = None,
    prefix_cache: PrefixCache | None = None,
    guidance: float | None = None,
    class_label: int | None = None,
) -> tuple[Tensor, float, float]:
    """Sample one image per seed, unclipped (divergence stays visible).

    :param guidance: classifier-free guidance weight (:class:`~ddsm_core.sampling.GuidedDenoiser`).
    :param class_label: every image of this class (default ``seed % classes``; conditional models).
    :return: (images, sampling seconds, fraction of sampler steps reused from ``prefix_cache``).
    """
    from ddsm_core.sampling import model_denoiser, sample

    if shape is None:
        cfg = model.config  # type: ignore[attr-defined]
        shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    denoiser = model_denoiser(model.eval(), schedule, guidance=guidance)  # type: ignore[arg-type]
    device = torch.device(device)
    y = class_labels(model, seeds, class_label)
    out, seconds, reused = [], 0.0, 0
    genes = strategy.genes
    with torch.inference_mode():
        for first in range(0, len(seeds), batch_size):
            chunk = seeds[first : first + batch_size]
            ys = None if y is None else y[first : first + batch_size]
            state, callback = None, None
            if prefix_cache is not None:
                batch = (chunk[0], len(chunk))
                state = prefix_cache.longest(batch, genes)
                reused += 0 if state is None else state.i

                def callback(info: dict[str, Any], batch: tuple[int, int] = batch) -> None:
                    if info["i"] > 0:  # the state before step i: after the genes of steps 0..i-1
                        prefix_cache.put(batch, genes[: info["i"]], info["state"])

            _sync(device)
            t0 = time.perf_counter()
            x = sample(
                denoiser, strategy, shape, chunk, y=ys, device=device, clip=False, start=state,
                callback=callback,
            )  # fmt: skip
            _sync(device)
            seconds += time.perf_counter() - t0
            out.append(x.float().cpu())
    batches = max(1, math.ceil(len(seeds) / batch_size))
    return torch.cat(out), seconds, reused / (batches * strategy.steps)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    prefix_cache: PrefixCache | None = None,
    keep_features: bool = False,
    keep_images: int = 0,
    guidance: float | None = None,
    class_label: int | None = None,
) -> EvalResult:
    """Sample ``n_images`` with ``strategy`` from ``seeds`` and measure FID, GFLOPs and latency.

    With ``guidance`` every sampler evaluation is two network passes (conditional and unconditional,
    batched): ``gflops`` and ``network_calls`` count both, ``gflops_per_call`` stays per pass.

    :param costs: GFLOPs per call and width (:func:`ddsm_core.flops.cost_table`; computed if None).
    :param prefix_cache: reuse sampler states of earlier strategies with the same first genes (same
        seeds and batch size only; the images are identical, the measured latency covers fewer steps).
    :param keep_features: keep the per-image features on the result (``features``, [N x D]).
    :param keep_images: keep the first this many images on the result (``images``, unclipped).
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
    passes = 1 if guidance is None else 2
    common = {
        "extractor": extractor.name,
        "gflops": strategy_gflops(strategy, costs, passes=passes),
        "gflops_per_call": mean_gflops_per_call(strategy, costs),
        "n_images": n_images,
        "network_calls": len(strategy.network_calls()) * passes,
        "strategy": strategy.describe(),
        "batch_size": batch_size,
        "device": str(device),
    }
    images, seconds, reused = sample_images(
        model, schedule, strategy, seed_list, batch_size, device=device, prefix_cache=prefix_cache,
        guidance=guidance, class_label=class_label,
    )  # fmt: skip
    common["latency_s"] = seconds / max(n_images, 1)
    common["reused_fraction"] = reused

    feats = None

    def done(fid: float | None, reason: str | None = None) -> EvalResult:
        status: Literal["ok", "failed"] = "ok" if reason is None else "failed"
        kept = feats if keep_features else None
        first = images[:keep_images] if keep_images > 0 else None
        return EvalResult(
            fid, status=status, reason=reason, seconds=time.perf_counter() - start, features=kept,
            images=first, **common,
        )  # fmt: skip

    bad = int((~torch.isfinite(images.flatten(1)).all(1)).sum())
    if bad:
        return done(None, f"{bad} of {n_images} sampled images are not finite (the sampler diverged)")
    try:
        feats = extract_features(extractor, images.clamp(-1.0, 1.0), batch_size)
        fid = ref_stats.fid(FeatureStats.from_features(feats, extractor.name))
    except FIDError as exc:
        return done(None, f"FID failed: {exc}")
    if not math.isfinite(fid):
        return done(None, f"FID is not finite ({fid})")
    return done(fid)


def paired_distance(features: Any, full: Any) -> float:
    """Mean over images of ``||features_i - full_i||^2`` (row ``i`` of both from the same seed)."""
    import numpy as np

    a, b = np.asarray(features, dtype=np.float64), np.asarray(full, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired features must have one shape, got {a.shape} and {b.shape}")
    return float(((a - b) ** 2).sum(axis=1).mean())


class FullWidthReference:
    """The full-width strategy's per-image features of a search, per image count, computed once.

    The rungs of a search ranked by ``paired`` (:data:`~ddsm_core.search.RUNG_METRICS`) compare each
    candidate's features with these, image by image: the same seeds (``spec.eval_seed + i``), batch
    size, guidance and labels as every candidate, so the numbers do not depend on which process
    computed them (the local :class:`GenomeEvaluator` and a service worker use this one class). The
    features are sampled and extracted as :func:`evaluate` does (clamped images), without a prefix
    cache. Thread-safe: concurrent callers wait for one computation.
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: NoiseSchedule,
        extractor: FeatureExtractor,
        spec: SearchSpec,
        *,
        device: str | torch.device = "cpu",
    ) -> None:
        self.model, self.schedule, self.extractor, self.device = model, schedule, extractor, device
        self.spec = spec.bind(model.config.widths)  # type: ignore[union-attr]
        self.genome = self.spec.full_width_genome()
        self._features: dict[int, Any] = {}
        self._lock = threading.Lock()

    def features(self, n_images: int) -> Any:
        """[n_images x D] float64 features of the full width from seeds ``eval_seed + i``; None when its
        images are not finite (the full width diverged: nothing to compare with)."""
        with self._lock:
            if n_images not in self._features:
                seeds = resolve_seeds(self.spec.eval_seed, n_images)
                images, _, _ = sample_images(
                    self.model, self.schedule, self.spec.strategy(self.genome), seeds, self.spec.batch_size,
                    device=self.device, guidance=self.spec.guidance, class_label=self.spec.class_label,
                )  # fmt: skip
                finite = bool(torch.isfinite(images).all())
                self._features[n_images] = (
                    extract_features(self.extractor, images.clamp(-1.0, 1.0), self.spec.batch_size)
                    if finite else None
                )  # fmt: skip
            return self._features[n_images]

    def add_distance(self, result: EvalResult, genome: Sequence[int]) -> EvalResult:
        """``result`` (evaluated with ``keep_features``) with its ``paired_distance``: 0 for the full
        width itself; a failed result stays as it is; an ok one whose full-width reference diverged
        fails with that reason (it cannot be ranked)."""
        if not result.ok:
            return result
        if tuple(int(g) for g in genome) == self.genome:
            return replace(result, paired_distance=0.0)
        full = self.features(result.n_images)
        if full is None or result.features is None:
            why = "the full width's images are not finite" if full is None else "no features were kept"
            return replace(result, status="failed", fid=None,
                           reason=f"no paired distance at {result.n_images} images: {why}")  # fmt: skip
        return replace(result, paired_distance=paired_distance(result.features, full))


class GenomeEvaluator:
    """Turns a search genome into an evaluation (``ddsm_core.search.EvaluateFn``), in-process.

    ``spec`` (bound to the model's widths if it names none) gives the sampler, steps, width set, batch
    size, seeds, guidance and class label: every genome is sampled from ``spec.eval_seed + i`` for
    image ``i``, and a finalist (:meth:`evaluate_final`) from ``spec.final_first_seed + i`` (held out
    from the search's images by default); evaluations with ``cache_images`` images share sampler states
    through a :class:`PrefixCache`; the objectives told to the search are (FID, ``spec.cost``: GFLOPs
    per image, or predicted ms per image from ``latency`` with objective latency); the full
    :class:`EvalResult` is kept as the record, with the predicted latency whenever a ``latency`` table
    is given. A search whose rungs are ranked by ``paired`` gets each low-rung record's
    ``paired_distance`` from a :class:`FullWidthReference` (one extra full-width sampling per rung
    image count, made once).
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: NoiseSchedule,
        ref_stats: FeatureStats,
        extractor: FeatureExtractor,
        spec: SearchSpec,
        *,
        costs: CostTable | None = None,
        device: str | torch.device = "cpu",
        cache_images: int | Sequence[int] | None = None,
        cache_bytes: int = 256 << 20,
        latency: LatencyTable | None = None,
    ) -> None:
        ref_stats.check_compatible(extractor.name, extractor.dim)
        if costs is None:
            from ddsm_core.flops import cost_table

            costs = cost_table(model)  # type: ignore[arg-type]
        self.model, self.schedule, self.ref, self.extractor = model, schedule, ref_stats, extractor
        self.spec = spec.bind(model.config.widths)  # type: ignore[union-attr]
        # a guidance or class the model cannot take fails here, not in every candidate
        self.spec.check_model(model.config)  # type: ignore[union-attr]
        self.spec.check_latency_table(latency)
        self.latency = latency
        self.costs, self.device = costs, device
        self.images_sampled = 0
        self.network_calls = 0
        # the prefix cache serves evaluations with ``cache_images`` images (the search phase) only, so
        # finalists re-evaluated with more images get a full, honest latency measurement
        # (several counts with multi-fidelity rungs: the cache key holds the batch's first seed and length)
        self.cache_images = {cache_images} if isinstance(cache_images, int) else set(cache_images or ())
        self.cache = PrefixCache(cache_bytes)
        # per-image features of the finalists' evaluations (and of any count not in ``cache_images``),
        # keyed by (genome, n_images, first seed): paired comparisons with full width on the same seeds
        self.kept_features: dict[tuple[tuple[int, ...], int, int], Any] = {}
        # a search whose low rungs are ranked by ``paired``: full-width features per rung, made once
        self.reference = FullWidthReference(model, schedule, extractor, self.spec, device=device)

    def strategy(self, genome: Sequence[int]) -> Strategy:
        return self.spec.strategy(genome)

    def evaluate(self, genome: Sequence[int], n_images: int, *, final: bool = False) -> EvalResult:
        """``genome`` on ``n_images`` images: the search's seeds (``eval_seed + i``), or with ``final``
        the finalists' (``final_first_seed + i``: no prefix cache, so the latency is measured whole,
        and the features kept)."""
        strategy = self.strategy(genome)
        first = self.spec.first_seed(final)
        searching = n_images in self.cache_images and not final
        paired = self.spec.paired_rung(n_images) and not final
        result = evaluate(
            self.model, self.schedule, strategy, self.ref, self.extractor, n_images, first,
            self.spec.batch_size, costs=self.costs, device=self.device,
            prefix_cache=self.cache if searching else None, keep_features=not searching or paired,
            guidance=self.spec.guidance, class_label=self.spec.class_label,
        )  # fmt: skip
        if paired:
            result = self.reference.add_distance(result, strategy.genes)
            result = result if not searching else replace(result, features=None)
        if self.latency is not None:
            result = replace(result, predicted_latency_s=self.spec.latency(strategy.genes, self.latency))
        if not searching and result.features is not None:
            self.kept_features[(strategy.genes, n_images, first)] = result.features
        self.images_sampled += n_images
        self.network_calls += round(n_images * result.network_calls * (1 - result.reused_fraction))
        return result

    def final_features(self) -> dict[tuple[int, ...], Any]:
        """genome -> [final_images x D] features of every finalist evaluated so far (seeds
        ``final_first_seed + i``): what the paired intervals vs full width are computed from."""
        key = (self.spec.final_images, self.spec.final_first_seed)
        return {genome: f for (genome, n, first), f in self.kept_features.items() if (n, first) == key}

    def _evaluation(self, genome: tuple[int, ...], result: EvalResult):  # -> ddsm_core.search.Evaluation
        from ddsm_core.search import Evaluation

        record = self.spec.costs(genome, result.to_dict())  # (the predicted latency is in it already)
        ok = result.objectives() is not None and record["cost"] is not None
        return Evaluation((float(result.fid), record["cost"]) if ok else None, result.reason, record)  # type: ignore[arg-type]

    def __call__(self, genome: tuple[int, ...], n_images: int):  # -> ddsm_core.search.Evaluation
        """A search evaluation (``ddsm_core.search.EvaluateFn``): the search's seeds."""
        return self._evaluation(genome, self.evaluate(genome, n_images))

    def evaluate_final(self, genome: tuple[int, ...]):  # -> ddsm_core.search.Evaluation
        """A finalist's or probe's evaluation: ``final_images`` images from the finalists' seeds."""
        return self._evaluation(genome, self.evaluate(genome, self.spec.final_images, final=True))
