"""The torch side of the workers: every call into ddsm_core's model, training and evaluation code.

Imported only inside task bodies. Supernets are cached per process, keyed by their checkpoint's sha256
(a checkpoint is immutable, so the key never goes stale); so are feature extractors and statistics.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from ddsm_core.costs import CostTable
from ddsm_core.errors import DDSMError
from ddsm_core.spec import SearchSpec

_CACHE_SIZE = 2
GRID_IMAGES = 16  # a finalist's sample grid: its first 16 evaluation images, 4 x 4
_models: OrderedDict[tuple[str, str], Any] = OrderedDict()
_lock = threading.Lock()


class TrainingStopped(DDSMError):
    """The run was cancelled or reaped while this worker was training it."""


class TrainingInterrupted(DDSMError):
    """A stop request (SIGINT / SIGTERM to this worker) ended the run early: it is not finished.

    :param step: the step of ``checkpoint``, from which the run resumes.
    :param signum: the signal that stopped it (the worker hands it back once the run is recorded).
    """

    def __init__(self, step: int, checkpoint: Path | None, signum: int | None) -> None:
        super().__init__(f"training interrupted at step {step}")
        self.step, self.checkpoint, self.signum = step, checkpoint, signum


def configure(threads: int) -> None:
    """Per-process torch settings (called before the first task's work): passive OpenMP waits if
    torch is not loaded yet, ``threads`` torch threads (0: all cores); see :mod:`ddsm_core.threads`."""
    from ddsm_core.threads import passive_openmp, set_threads

    passive_openmp()
    set_threads(threads)


def device_of(setting: str) -> str:
    from ddsm_core.device import pick_device

    return str(pick_device(setting))


def load_supernet(checkpoint: Path, sha: str, device: str) -> tuple[Any, Any, dict[str, Any]]:
    """``(model, schedule, manifest)`` for checkpoint ``sha``, loaded once per process and device."""
    from ddsm_core.checkpoint import load_checkpoint

    device = device_of(device)
    with _lock:
        key = (sha, device)
        if key in _models:
            _models.move_to_end(key)
            return _models[key]
        from ddsm_core.inference import prepare_for_inference

        loaded = load_checkpoint(checkpoint, use_ema=True, map_location=device)
        prepare_for_inference(loaded[0])  # packed per-width weights, channels_last where it helps
        _models[key] = loaded
        while len(_models) > _CACHE_SIZE:
            _models.popitem(last=False)
        return loaded


def inspect_checkpoint(checkpoint: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate a checkpoint folder; return its per-width cost table and a config summary (manifest)."""
    from ddsm_core.checkpoint import read_manifest
    from ddsm_core.config import UNetConfig
    from ddsm_core.flops import cost_table

    manifest = read_manifest(checkpoint, verify=True)
    config = UNetConfig.from_dict(manifest["model_config"])
    table = cost_table(config)
    summary = {k: manifest.get(k) for k in ("step", "model_config", "schedule", "train_config")}
    return table.to_dict(), summary


def measure_latency_table(
    checkpoint: Path,
    *,
    dtype: str,
    batch_sizes: Sequence[int],
    repeats: int,
    warmup: int,
    device: str,
    info: Mapping[str, Any],
) -> dict[str, Any]:
    """The checkpoint's :class:`~ddsm_core.latency.LatencyTable` on this worker's device (as a dict),
    with the model prepared as an evaluation prepares it (packed weights, the device's default layout)."""
    import torch

    from ddsm_core.checkpoint import load_checkpoint
    from ddsm_core.inference import prepare_for_inference
    from ddsm_core.latency import measure_latency

    dev = device_of(device)
    # a fresh copy (not the evaluation cache's): it may be cast to another dtype
    model, schedule, _ = load_checkpoint(checkpoint, use_ema=True, map_location=dev)
    model = prepare_for_inference(model.to(dtype=getattr(torch, dtype)))
    table = measure_latency(
        model, batch_sizes, schedule=schedule, repeats=repeats, warmup=warmup, device=dev, dtype=dtype,
        model_info=dict(info),
    )  # fmt: skip
    return table.to_dict()


@cache
def _stats(path: str) -> Any:
    from ddsm_core.fid import FeatureStats

    return FeatureStats.load(path)


def evaluate_genome(
    *,
    checkpoint: Path,
    checkpoint_sha: str,
    stats_path: Path,
    extractor: str,
    spec: SearchSpec,
    genome: Sequence[int],
    n_images: int,
    table: CostTable,
    device: str,
    share_prefixes: bool = False,
    final: bool = False,
    features_out: Path | None = None,
    grid_out: Path | None = None,
) -> dict[str, Any]:
    """Sample ``n_images`` with the genome's strategy from the search's fixed seeds (guided when the
    spec says so); FID + GFLOPs.

    :param final: a finalist or probe: image ``i`` from seed ``spec.final_first_seed + i`` (held out
        from the search's by default), else ``spec.eval_seed + i``, as ``ddsm search`` samples them.
    :param features_out: also write the per-image features ([N x D] float64, row ``i`` from the
        ``i``-th seed) to this .npy file, for the paired comparison of finalists with full width.
    :param grid_out: also write a PNG grid of the first :data:`GRID_IMAGES` images (the first seeds:
        every finalist's grid shows the same noise), unless the sampler diverged.

    A low rung of a search ranked by ``paired`` also gets ``paired_distance`` to the full width's
    features on the same seeds, from this process's :class:`~ddsm_core.evaluate.FullWidthReference`
    (the class ``ddsm search`` uses: the same numbers as a local search).
    """
    from ddsm_core.evaluate import evaluate

    model, schedule, _ = load_supernet(checkpoint, checkpoint_sha, device)
    dev = device_of(device)
    first = spec.first_seed(final)
    grid = (checkpoint_sha, dev, spec.sampler, spec.steps, spec.widths, spec.eval_seed, spec.batch_size,
            spec.guidance, spec.class_label)  # fmt: skip
    paired = spec.paired_rung(n_images) and not final
    cache = None
    if share_prefixes and not final:  # same seeds, sampler, model: resume from earlier candidates' states
        # one cache serves every image count (a multi-fidelity search's rungs too, as a local search's
        # GenomeEvaluator does): its entries are keyed by each batch's first seed and length
        cache = _prefix_cache(grid)
    result = evaluate(
        model,
        schedule,
        spec.strategy(genome),
        _stats(str(stats_path)),
        _extractor(extractor, dev),
        n_images=n_images,
        seeds=first,  # image i uses first + i, as `ddsm search` does
        batch_size=spec.batch_size,
        costs=table,
        device=dev,
        prefix_cache=cache,
        guidance=spec.guidance,
        class_label=spec.class_label,
        keep_features=features_out is not None or paired,
        keep_images=GRID_IMAGES if grid_out is not None else 0,
    )
    if paired:
        reference = _full_width_reference((*grid, extractor), model, schedule, extractor, spec, dev)
        result = reference.add_distance(result, genome)
    if features_out is not None and result.features is not None:
        import numpy as np

        np.save(features_out, np.asarray(result.features, dtype=np.float64))
    if grid_out is not None and result.ok and result.images is not None:
        from ddsm_core.data import save_image_grid

        images = result.images.clamp(-1.0, 1.0)
        save_image_grid(images, grid_out, nrow=max(1, math.ceil(math.sqrt(len(images)))))
    return result_metrics(result)


_prefix_caches: OrderedDict[tuple[Any, ...], Any] = OrderedDict()


def _prefix_cache(key: tuple[Any, ...]) -> Any:
    """One :class:`~ddsm_core.evaluate.PrefixCache` per model + sampler grid + seeds (bit-identical
    results, fewer sampler steps), the most recent two kept."""
    from ddsm_core.evaluate import PrefixCache

    with _lock:
        if key not in _prefix_caches:
            _prefix_caches[key] = PrefixCache()
            while len(_prefix_caches) > 2:
                _prefix_caches.popitem(last=False)
        _prefix_caches.move_to_end(key)
        return _prefix_caches[key]


_references: OrderedDict[tuple[Any, ...], Any] = OrderedDict()


def _full_width_reference(
    key: tuple[Any, ...], model: Any, schedule: Any, extractor: str, spec: SearchSpec, device: str
) -> Any:
    """One :class:`~ddsm_core.evaluate.FullWidthReference` per model + sampler grid + seeds + extractor
    (its features per rung are computed once per process), the most recent two kept."""
    from ddsm_core.evaluate import FullWidthReference

    with _lock:
        if key not in _references:
            _references[key] = FullWidthReference(
                model, schedule, _extractor(extractor, device), spec, device=device
            )
            while len(_references) > 2:
                _references.popitem(last=False)
        _references.move_to_end(key)
        return _references[key]


def result_metrics(result: Any) -> dict[str, Any]:
    """An EvalResult as the plain metrics dict stored with a candidate."""
    # to_dict leaves out the per-image features (stored as their own artifact, never in the row)
    data = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    return {k: v for k, v in data.items() if isinstance(v, (int, float, str, bool)) or v is None}


@cache
def _extractor(name: str, device: str) -> Any:
    from ddsm_core.features import get_extractor

    return get_extractor(name, device=device)


def reference_stats(
    dataset: str, extractor: str, out: Path, device: str
) -> tuple[Path, int, str, list[dict[str, Any]]]:
    """Statistics of the dataset's training split, with its real-data floors (held-out split vs the
    statistics, also in the file's meta); returns (file, images, the extractor's full name, floors)."""
    from ddsm_core.features import reference_stats as compute
    from ddsm_core.floor import floors_of

    stats = compute(dataset, extractor, device=device_of(device))
    return stats.save(out), int(stats.n), stats.extractor, [f.to_dict() for f in floors_of(stats)]


def checkpoint_step(checkpoint: Path) -> int:
    from ddsm_core.checkpoint import read_manifest

    return int(read_manifest(checkpoint)["step"])


def run_dir_of(workdir: Path) -> Path:
    """The trainer's run folder (checkpoints, ``log.jsonl``, ``samples/``) in a task's work folder."""
    return workdir / "run"


def train_supernet(
    config: Mapping[str, Any],
    workdir: Path,
    resume_from: Path | None,
    on_checkpoint: Callable[[int, Path | None, int], bool],
    stop: Callable[[], bool],
    device: str = "auto",
) -> Path:
    """Train (or resume) into ``workdir``; every new checkpoint goes to ``on_checkpoint`` (which returns
    False when this worker lost the run). Returns the final checkpoint folder.

    :raises TrainingInterrupted: a signal stopped the run before it finished (with its last checkpoint).
    :raises TrainingStopped: the run was cancelled or taken over.
    """
    from ddsm_core import checkpoint as ckpt_io
    from ddsm_core.recipes import resolve_recipe
    from ddsm_core.trainer import train

    model_config, train_config = resolve_recipe(
        config.get("preset", "digits"), config.get("train", {}), model_overrides=config.get("model")
    )
    run_dir = run_dir_of(workdir)
    if resume_from is not None:
        name = ckpt_io.step_dir_name(int(ckpt_io.read_manifest(resume_from)["step"]))
        ckpt_io.copy_checkpoint(resume_from, run_dir / name)
        (run_dir / ckpt_io.LATEST).write_text(name)
    seen: dict[str, Path | None] = {"latest": None}

    def callback(info: dict[str, Any]) -> None:
        latest = ckpt_io.find_resumable(run_dir) if run_dir.exists() else None
        fresh = latest if latest is not None and latest != seen["latest"] else None
        seen["latest"] = latest or seen["latest"]
        every = max(1, train_config.log_every)
        step = int(info["step"])
        if (fresh is not None or step % every == 0) and not on_checkpoint(step, fresh, train_config.steps):
            raise TrainingStopped("training run cancelled or taken over by another worker")
        if stop():
            raise TrainingStopped("lost the heartbeat of this training run")

    result = train(
        model_config,
        train_config,
        run_dir,
        resume=True,
        device=device_of(device),
        progress=False,
        callback=callback,
    )
    if result.interrupted:
        raise TrainingInterrupted(result.step, result.checkpoint, result.signal)
    if result.checkpoint is None:
        raise DDSMError("training ended without a checkpoint")
    return result.checkpoint
