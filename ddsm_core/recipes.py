"""Training recipes: the presets, their overrides, and the configs a run is built from, in ONE place.

:func:`resolve_recipe` turns (UNet preset, training overrides, model overrides, class labels) into the
``(UNetConfig, TrainConfig)`` pair that :func:`ddsm_core.trainer.train` runs; ``ddsm train``, the
service's training worker and the benchmarks all go through it. Torch-free (the API can validate a
recipe without torch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ddsm_core.config import UNetConfig
from ddsm_core.errors import ConfigError, choices_message

if TYPE_CHECKING:
    from ddsm_core.schedules import NoiseSchedule

LRSchedule = Literal["constant", "cosine"]


@dataclass(frozen=True)
class TrainConfig:
    """How to train a supernet (the model's shape is its :class:`~ddsm_core.config.UNetConfig`).

    :param dataset: ``digits``, ``cifar10`` or a folder of images.
    :param steps: optimizer steps in all (a resumed run continues up to it).
    :param batch_size: global batch, split evenly across DDP processes.
    :param lr: Adam's peak learning rate, reached linearly over ``warmup_steps``.
    :param lr_schedule: after warm-up, ``constant`` (DDPM) or ``cosine`` decay to ``lr * min_lr_ratio``.
    :param grad_clip: clip the global gradient norm to this (0 = off).
    :param ema_decay: EMA decay; with ``ema_warmup`` the decay at step k is
        ``min(ema_decay, (1 + k) / (10 + k))`` so a short run's EMA is not stuck at the initial weights.
    :param n_middle: middle widths drawn per step (sandwich rule); all of them if fewer exist.
    :param distill: in-place distillation: sub-widths regress the full width's detached prediction.
    :param dropout: replaces the model config's dropout for this run (None keeps it). Dropout only acts
        in training, so a checkpoint's other uses do not depend on it.
    :param label_dropout: fraction of training labels replaced by the null label (classifier-free
        guidance, Ho & Salimans 2022, who use 0.1-0.2); needs a class-conditional model, which then gets
        a null label row (``UNetConfig.null_label``). 0 = off.
    :param hflip: random horizontal flips (CIFAR-10 yes, digits no).
    :param amp: bf16 autocast on CUDA (ignored on CPU).
    :param eval_every, sample_every, checkpoint_every: intervals in steps (0 = only at the end).
    :param eval_images, sample_n: images for the per-width eval loss / per row of a sample grid
        (0 = none).
    """

    dataset: str = "digits"
    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-4
    warmup_steps: int = 5000
    lr_schedule: LRSchedule = "constant"
    min_lr_ratio: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    n_middle: int = 2
    distill: bool = False
    dropout: float | None = None
    label_dropout: float = 0.0
    hflip: bool = False
    noise_schedule: str = "linear"
    timesteps: int = 1000
    seed: int = 0
    amp: bool = True
    log_every: int = 50
    eval_every: int = 0
    eval_images: int = 512
    sample_every: int = 0
    sample_sampler: str = "ddim"
    sample_steps: int = 50
    sample_n: int = 16
    checkpoint_every: int = 1000
    keep_last: int = 1
    num_workers: int = 0

    # Fields that may change when a run is resumed (they do not change what the run computes).
    RUN_CONTROL: ClassVar[tuple[str, ...]] = (
        "steps",
        "log_every",
        "eval_every",
        "eval_images",
        "sample_every",
        "sample_sampler",
        "sample_steps",
        "sample_n",
        "checkpoint_every",
        "keep_last",
        "num_workers",
        "amp",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "adam_betas", tuple(float(b) for b in self.adam_betas))
        positive = ("steps", "batch_size", "timesteps", "log_every", "sample_steps", "keep_last")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        non_negative = ("warmup_steps", "n_middle", "eval_every", "sample_every", "checkpoint_every")
        for name in non_negative + ("grad_clip", "weight_decay", "num_workers", "eval_images", "sample_n"):
            if getattr(self, name) < 0:
                raise ConfigError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ConfigError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"TrainConfig.dropout must be in [0, 1) or None, got {self.dropout}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ConfigError(f"TrainConfig.label_dropout must be in [0, 1), got {self.label_dropout}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ConfigError(choices_message("lr schedule", self.lr_schedule, ("constant", "cosine")))

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["adam_betas"] = list(self.adam_betas)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown TrainConfig fields {unknown}; allowed: {', '.join(sorted(known))}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def for_preset(cls, preset: str, **overrides: Any) -> TrainConfig:
        """The recommended recipe for a UNet preset (see ``TRAIN_PRESETS``), with overrides."""
        try:
            base = TRAIN_PRESETS[preset]
        except KeyError:
            raise ConfigError(choices_message("preset", preset, sorted(TRAIN_PRESETS))) from None
        return cls(**{**base, **overrides})

    def schedule(self) -> NoiseSchedule:
        from ddsm_core.schedules import get_schedule

        return get_schedule(self.noise_schedule, self.timesteps)


# The paper's CIFAR-10 setup (DDPM): Adam 2e-4, 5000 warm-up steps, batch 128, EMA 0.9999, flips.
_CIFAR10_RECIPE: dict[str, Any] = {
    "dataset": "cifar10",
    "steps": 800_000,
    "batch_size": 128,
    "lr": 2e-4,
    "warmup_steps": 5000,
    "ema_decay": 0.9999,
    "hflip": True,
    "sample_every": 10_000,
    "checkpoint_every": 5000,
    "eval_every": 10_000,
    "eval_images": 1024,
}

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # ~8-10 CPU-minutes (bench/train_digits.md): batch 32, 800 steps, lr 1e-3 with a short warm-up and a
    # cosine decay, an EMA horizon of 1/(1-decay) = 100 steps, and the UNet preset's dropout (0.1).
    # Chosen for what the width search needs (DDPM-20, domain FID, 3 x 500 images): bench/digits_search.md
    # measured it at full width 61.0, uniform 2/8 85.2, small-early/large-late 61.2 vs its reverse 85.0;
    # this preset's own run (different initial weights) gives 58.6, 74.2, 58.5 vs 74.8. A variant (lr
    # 2e-3, EMA 0.995, no dropout) made full width worse (70.8) and 2/8 better (74.7), leaving the
    # per-step search little to find. The sample grids (DDPM-100) draw from their own seeds, not from the
    # training stream, so they do not change the weights.
    "digits": {
        "dataset": "digits",
        "steps": 800,
        "batch_size": 32,
        "lr": 1e-3,
        "warmup_steps": 50,
        "lr_schedule": "cosine",
        "min_lr_ratio": 0.05,
        "ema_decay": 0.99,
        "eval_images": 297,
        "sample_every": 200,
        "sample_sampler": "ddpm",
        "sample_steps": 100,
        "checkpoint_every": 200,
        "log_every": 10,
    },
    # The benchmark supernet, separate from the demo's: quality per CPU-minute (bench/train_digits_bench.md).
    # 1.0 M parameters (UNet preset `digits-bench`), batch 128, Adam 2e-3 held constant after 100 warm-up
    # steps, EMA 0.999 with warm-up, no dropout (a 1500-image set needs every sample's full signal).
    # A constant LR makes the run's state at step k independent of ``steps``, so the learning curve of
    # one long run measured which step count to stop at: 4000 steps (~42 CPU-minutes) reach the
    # real-data floor (0.97x at 297 images); `ddsm demo` uses the same recipe's first 800 steps.
    "digits-bench": {
        "dataset": "digits",
        "steps": 4000,
        "batch_size": 128,
        "lr": 2e-3,
        "warmup_steps": 100,
        "lr_schedule": "constant",
        "ema_decay": 0.999,
        "dropout": 0.0,
        "eval_images": 297,
        "sample_every": 0,
        "sample_sampler": "ddpm",
        "sample_steps": 100,
        "checkpoint_every": 200,
        "log_every": 50,
    },
    "cifar10": _CIFAR10_RECIPE,
    # The same recipe at 64x64 (no bundled copy: --dataset FOLDER of face images).
    "celeba64": {**_CIFAR10_RECIPE, "dataset": "", "steps": 500_000},
}


def check_resume_config(saved: Mapping[str, Any] | None, config: TrainConfig, where: Path) -> None:
    if not saved:
        return
    old = TrainConfig.from_dict(saved)
    diff = [
        f"{f.name}: run {getattr(old, f.name)!r} vs now {getattr(config, f.name)!r}"
        for f in dataclasses.fields(TrainConfig)
        if f.name not in config.RUN_CONTROL and getattr(old, f.name) != getattr(config, f.name)
    ]
    if diff:
        raise ConfigError(
            f"cannot resume {where} with a different training recipe ({'; '.join(diff)}); "
            "drop those options or start a new --out"
        )


def resolve_recipe(
    preset: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    model_overrides: Mapping[str, Any] | None = None,
    class_cond: bool = False,
    saved: Mapping[str, Any] | None = None,
) -> tuple[UNetConfig, TrainConfig]:
    """The model and training configs of a run.

    :param preset: a UNet preset and its recipe (``TRAIN_PRESETS``).
    :param overrides: :class:`TrainConfig` fields that replace the recipe's.
    :param model_overrides: :class:`~ddsm_core.config.UNetConfig` fields that replace the preset's.
    :param class_cond: a class-conditional model (the number of classes comes from the dataset).
        With ``label_dropout`` the model gets the null label (classifier-free guidance).
    :param saved: the ``train_config`` of a run being resumed: it replaces the preset's recipe.
    """
    base = TrainConfig.from_dict(saved) if saved else TrainConfig.for_preset(preset)
    config = base.replace(**dict(overrides or {}))
    if not config.dataset:
        raise ConfigError(f"preset {preset!r} has no bundled dataset; pass --dataset FOLDER")
    model_config = UNetConfig.from_preset(preset)
    if model_overrides:
        model_config = UNetConfig.from_dict({**model_config.to_dict(), **model_overrides})
    if class_cond:
        n_classes = dataset_classes(config.dataset, model_config)
        model_config = dataclasses.replace(model_config, num_classes=n_classes)
    if config.label_dropout > 0:
        if model_config.num_classes is None:
            raise ConfigError("label dropout (classifier-free guidance) needs a class-conditional model: "
                              "add --class-cond")  # fmt: skip
        model_config = dataclasses.replace(model_config, null_label=True)
    return model_config, config


def dataset_classes(name: str, model_config: UNetConfig) -> int:
    if name in ("digits", "cifar10"):
        return 10
    from ddsm_core.data import load_dataset

    ds = load_dataset(name, image_size=model_config.image_size, channels=model_config.in_channels)
    if not ds.num_classes:
        raise ConfigError(
            f"--class-cond needs labels, but {name!r} has none (put images in class subfolders)"
        )
    return ds.num_classes
