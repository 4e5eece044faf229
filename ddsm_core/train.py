"""Training the slimmable supernet with the sandwich rule.

Each step draws one batch and trains, on that same batch, the largest width, ``n_middle`` widths drawn
at random from the ones in between, and the smallest width, summing their gradients before one
optimizer step (US-Net's sandwich rule, Yu & Huang 2019). With ``distill`` the sub-widths regress the
full width's detached prediction instead of the true noise (US-Net's in-place distillation).

Determinism. Everything random in step ``k`` (the batch, the timesteps, the noise, the flips, the
middle widths, dropout) is drawn from generators seeded by ``derive_seed(seed, ..., k)``. A run is
therefore a function of its config alone, and resuming at step ``k`` needs no RNG state: it is exact
(bitwise on CPU). Under DDP every rank draws the same *global* batch of timesteps and noise and takes
its own slice, so 2 processes compute what 1 process would (up to float summation order).

Distributed: launched with ``torchrun --nproc-per-node N``, :func:`train` joins the process group from
the environment (NCCL on GPUs, gloo on CPU) and wraps the model in DistributedDataParallel; rank 0
writes checkpoints, samples and logs. bf16 autocast is used on CUDA when ``amp`` is on.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddsm_core import checkpoint as ckpt_io
from ddsm_core.config import UNetConfig
from ddsm_core.data import StepBatchSampler, derive_seed, load_dataset, save_image_grid
from ddsm_core.errors import ConfigError, DDSMError, choices_message
from ddsm_core.schedules import NoiseSchedule
from ddsm_core.widths import format_width

LRSchedule = Literal["constant", "cosine"]


class TrainingError(DDSMError):
    """Training cannot go on (a non-finite loss, a run directory in the way, ...)."""


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
    "cifar10": _CIFAR10_RECIPE,
    # The same recipe at 64x64 (no bundled copy: --dataset FOLDER of face images).
    "celeba64": {**_CIFAR10_RECIPE, "dataset": "", "steps": 500_000},
}


@dataclass(frozen=True)
class WidthLosses:
    """Per-width epsilon-MSE on a fixed evaluation set, overall and per timestep bin.

    The same images, timesteps and noise for every width (common random numbers), so differences
    between widths are not sampling noise.
    """

    widths: tuple[float, ...]
    overall: tuple[float, ...]
    t_edges: tuple[int, ...]
    per_bin: tuple[tuple[float, ...], ...]  # [width][bin]
    n_images: int
    diff_se: tuple[float, ...] = ()  # standard error of (loss - full-width loss), paired per image

    def to_dict(self) -> dict[str, Any]:
        return {
            "widths": list(self.widths),
            "overall": list(self.overall),
            "t_edges": list(self.t_edges),
            "per_bin": [list(r) for r in self.per_bin],
            "n_images": self.n_images,
            "diff_se": list(self.diff_se),
        }

    def to_markdown(self) -> str:
        """One row per width: loss, ratio and excess over full width (+- paired SE), loss per t range."""
        full = self.overall[-1]
        se = self.diff_se or (float("nan"),) * len(self.widths)
        bins = [f"t {a}-{b - 1}" for a, b in zip(self.t_edges, self.t_edges[1:], strict=False)]
        head = "| width | eval loss | / full | minus full (+- SE) | " + " | ".join(bins) + " |"
        rule = "|---" * (4 + len(bins)) + "|"
        rows = [
            f"| {format_width(w)} | {o:.5f} | {o / full:.3f} | {o - full:+.5f} +- {e:.5f} | "
            + " | ".join(f"{v:.5f}" for v in per)
            + " |"
            for w, o, per, e in zip(self.widths, self.overall, self.per_bin, se, strict=True)
        ]
        return "\n".join([head, rule, *rows])


@dataclass(frozen=True)
class TrainResult:
    step: int
    checkpoint: Path | None
    interrupted: bool
    signal: int | None
    wall_s: float
    eval: WidthLosses | None


# ---- the sandwich step ---------------------------------------------------------------------------


def sandwich_widths(widths: tuple[float, ...], n_middle: int, gen: torch.Generator) -> list[float]:
    """[largest, n random middle widths (ascending), smallest]; every width once if there are few."""
    ordered = sorted(widths)
    middle = ordered[1:-1]
    if n_middle < len(middle):
        picks = torch.randperm(len(middle), generator=gen)[:n_middle].sort().values.tolist()
        middle = [middle[i] for i in picks]
    return [ordered[-1], *middle, ordered[0]] if len(ordered) > 1 else ordered


def step_draws(
    config: TrainConfig, step: int, image_shape: tuple[int, ...], widths: tuple[float, ...]
) -> dict[str, Any]:
    """All the randomness of one step for the GLOBAL batch: widths, timesteps, noise, flips."""
    gen = torch.Generator().manual_seed(derive_seed(config.seed, "step", step))
    b = config.batch_size
    return {
        "widths": sandwich_widths(widths, config.n_middle, gen),
        "t": torch.randint(0, config.timesteps, (b,), generator=gen),
        "noise": torch.randn((b, *image_shape), generator=gen),
        "flip": torch.rand(b, generator=gen) < 0.5,
    }


def train_step(
    model: nn.Module,
    schedule: NoiseSchedule,
    x0: Tensor,
    y: Tensor | None,
    t: Tensor,
    noise: Tensor,
    widths: list[float],
    *,
    distill: bool = False,
    amp: bool = False,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> dict[float, Tensor]:
    """Forward and backward every width of ``widths`` (largest first) on one batch; gradients add up.

    :param model: the supernet (or its DDP wrapper); gradients accumulate in its parameters.
    :param x0, t, noise: an [N x C x H x W] batch, its [N] integer timesteps and its noise.
    :param no_sync: DDP's ``no_sync``: all-reduce only once, after the last width's backward.
    :return: the (detached) loss of each width.
    """
    x_t = schedule.q_sample(x0, t, noise)
    t_in = t.to(x0.dtype)
    losses: dict[float, Tensor] = {}
    teacher: Tensor | None = None
    for i, width in enumerate(widths):
        last = i == len(widths) - 1
        ctx = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
        with ctx:
            with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=amp):
                pred = model(x_t, t_in, width=width, y=y)
            target = teacher if teacher is not None else noise
            loss = F.mse_loss(pred.float(), target)
            loss.backward()
        if distill and i == 0:
            teacher = pred.detach().float()
        losses[width] = loss.detach()
    return losses


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    ema_p = [p for p in ema.parameters()]
    model_p = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_p, model_p, 1.0 - decay)
    for eb, mb in zip(ema.buffers(), model.buffers(), strict=True):
        eb.copy_(mb)


def lr_factor(config: TrainConfig, step: int) -> float:
    """LR multiplier at ``step`` (0-based): linear warm-up, then constant or cosine."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return 1.0
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ---- evaluation and samples ----------------------------------------------------------------------


@torch.no_grad()
def eval_width_losses(
    model: nn.Module,
    schedule: NoiseSchedule,
    dataset: Any,
    *,
    widths: tuple[float, ...] | None = None,
    n_images: int = 512,
    t_bins: int = 4,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> WidthLosses:
    """Epsilon-MSE per width on the first ``n_images`` of ``dataset``, each at one timestep per bin.

    Timesteps are stratified: image i in bin j gets a t uniform in bin j; the noise comes from ``seed``.
    """
    widths = tuple(widths or model.config.widths)  # type: ignore[union-attr]
    n = min(n_images, len(dataset))
    T = schedule.T
    edges = tuple(round(T * j / t_bins) for j in range(t_bins + 1))
    gen = torch.Generator().manual_seed(derive_seed(seed, "eval"))
    items = [dataset[i] for i in range(n)]
    x0 = torch.stack([x for x, _ in items])
    labels = torch.tensor([lab for _, lab in items])
    per_image = torch.zeros(len(widths), t_bins, n, dtype=torch.float64)
    was_training = model.training
    model.eval()
    conditional = getattr(model, "config", None) is not None and model.config.num_classes  # type: ignore
    for j in range(t_bins):
        lo, hi = edges[j], edges[j + 1]
        t = torch.randint(lo, hi, (n,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        for s in range(0, n, batch_size):
            xb, tb, nb = (v[s : s + batch_size].to(device) for v in (x0, t, noise))
            yb = labels[s : s + batch_size].to(device) if conditional else None
            x_t = schedule.q_sample(xb, tb, nb)
            for i, w in enumerate(widths):
                pred = model(x_t, tb.float(), width=w, y=yb).float()
                per_image[i, j, s : s + batch_size] = ((pred - nb) ** 2).mean(dim=(1, 2, 3)).double().cpu()
    model.train(was_training)
    per_bin = per_image.mean(dim=2).tolist()
    # Paired differences to the full width (the last width), per image, averaged over the bins.
    diff = per_image.mean(dim=1) - per_image[-1].mean(dim=0)
    diff_se = (diff.std(dim=1) / math.sqrt(n)).nan_to_num(0.0) if n > 1 else torch.zeros(len(widths))
    return WidthLosses(
        widths=widths,
        overall=tuple(sum(r) / t_bins for r in per_bin),
        t_edges=edges,
        per_bin=tuple(tuple(r) for r in per_bin),
        n_images=n,
        diff_se=tuple(diff_se.tolist()),
    )


@torch.no_grad()
def sample_width_grid(
    model: nn.Module,
    schedule: NoiseSchedule,
    path: str | Path,
    *,
    widths: tuple[float, ...] | None = None,
    n: int = 16,
    sampler: str = "ddim",
    steps: int = 50,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Path:
    """One row of ``n`` samples per width (same seeds in every row), saved as a PNG grid."""
    from ddsm_core.sampling import VPDenoiser, sample
    from ddsm_core.strategy import Strategy

    cfg: UNetConfig = model.config  # type: ignore[assignment]
    widths = tuple(widths or cfg.widths)
    was_training = model.training
    model.eval()
    denoiser = VPDenoiser(model, schedule)
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    seeds = list(range(seed, seed + n))
    y = torch.arange(n, device=device) % cfg.num_classes if cfg.num_classes else None
    rows = []
    for w in widths:
        strategy = Strategy.uniform(sampler, steps, cfg.widths.index(w), cfg.widths)
        rows.append(sample(denoiser, strategy, shape, seeds, y=y, device=device).cpu())
    model.train(was_training)
    return save_image_grid(torch.cat(rows), path, nrow=n)


# ---- the training loop ---------------------------------------------------------------------------


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @classmethod
    def from_env(cls, device_type: str) -> _Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        owns = False
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
            owns = True
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)

    def any_flag(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is set on any (so all ranks stop at the same step)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def mean(self, t: Tensor) -> Tensor:
        """The mean of ``t`` over the ranks (each rank's losses cover its share of the global batch)."""
        if self.world == 1:
            return t
        import torch.distributed as dist

        t = t.clone()
        dist.all_reduce(t)
        return t / self.world

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


class _StopRequest:
    """SIGINT / SIGTERM -> finish the current step, checkpoint, return. A second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def pick_device(device: str | None, local_rank: int = 0) -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is there (or asked for), else the CPU."""
    if device in (None, "auto"):
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' asked for but CUDA is not available; use --device cpu")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def _check_resume_config(saved: Mapping[str, Any] | None, config: TrainConfig, where: Path) -> None:
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


def train(
    model_config: UNetConfig,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    dataset: Any = None,
    eval_dataset: Any = None,
    resume: bool = False,
    device: str | None = None,
    data_root: str | Path | None = None,
    download: bool = False,
    verify: bool = True,
    progress: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
    stop_at: int | None = None,
) -> TrainResult:
    """Train (or resume) a supernet into the run directory ``out_dir``.

    :param dataset: a dataset of ``(image in [-1,1], label)``; default ``load_dataset(config.dataset)``.
    :param eval_dataset: images for the per-width eval loss; default the dataset's test split when it
        has one, else the training images.
    :param resume: continue from ``out_dir``'s latest checkpoint (fresh start if there is none).
        Without it, an ``out_dir`` that already holds a checkpoint is an error.
    :param callback: called on rank 0 after every step with ``{"step", "losses", "lr", ...}``.
    :param stop_at: stop (checkpointing) once this step is reached, as if interrupted.
    :return: where it ended; ``interrupted`` is set when a signal (or ``stop_at``) stopped it early.
    """
    started = time.time()
    if config.dropout is not None:
        model_config = dataclasses.replace(model_config, dropout=config.dropout)
    dev0 = pick_device(device)
    dist_env = _Dist.from_env(dev0.type)
    dev = pick_device(device, dist_env.local_rank) if dev0.type == "cuda" else dev0
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    try:
        trainer = _Trainer(model_config, config, Path(out_dir), dev, dist_env)
        trainer.prepare(resume)  # checks a run being resumed before any data is read
        data_opts = {"root": data_root, "download": download, "verify": verify}
        trainer.dataset, trainer.eval_dataset = _load_datasets(
            config, model_config, dataset, eval_dataset, data_opts, dist_env
        )
        return trainer.run(progress=progress, callback=callback, stop_at=stop_at, started=started)
    finally:
        if dist_env.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _load_datasets(
    config: TrainConfig,
    model_config: UNetConfig,
    dataset: Any,
    eval_dataset: Any,
    data_opts: Mapping[str, Any],
    dist_env: _Dist,
) -> tuple[Any, Any]:
    size, ch = model_config.image_size, model_config.in_channels
    opts = {
        "image_size": size,
        "channels": ch,
        "root": data_opts.get("root"),
        "verify": data_opts.get("verify"),
    }
    if dataset is None:
        if data_opts.get("download"):  # one process downloads, the others wait and then read
            if dist_env.rank == 0:
                load_dataset(config.dataset, split="train", download=True, **opts)
            dist_env.barrier()
        dataset = load_dataset(config.dataset, split="train", **opts)
    if eval_dataset is None:
        has_test = config.dataset in ("digits", "cifar10")
        eval_dataset = load_dataset(config.dataset, split="test", **opts) if has_test else dataset
    shape = tuple(dataset[0][0].shape)
    if shape != (ch, size, size):
        raise ConfigError(
            f"dataset {config.dataset!r} gives images of shape {shape}, the model expects {(ch, size, size)}"
        )
    return dataset, eval_dataset


class _Trainer:
    """The state of one training process: model, EMA, optimizer, data; rank 0 also writes the run."""

    def __init__(
        self,
        model_config: UNetConfig,
        config: TrainConfig,
        out_dir: Path,
        dev: torch.device,
        dist_env: _Dist,
    ) -> None:
        from ddsm_core.unet import SlimmableUNet

        if config.batch_size % dist_env.world:
            raise ConfigError(
                f"batch size {config.batch_size} is not divisible by {dist_env.world} processes"
            )
        self.model_config, self.config, self.out_dir = model_config, config, out_dir
        self.dataset: Any = None  # set before run()
        self.eval_dataset: Any = None
        self.dev, self.dist = dev, dist_env
        self.is_main = dist_env.rank == 0
        self.schedule = config.schedule()
        with torch.random.fork_rng(devices=[]):  # initial weights from the seed, global RNG untouched
            torch.manual_seed(derive_seed(config.seed, "init"))
            self.model = SlimmableUNet(model_config).to(dev)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.Adam(
            self.model.parameters(), lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda k: lr_factor(config, k))
        self.step = 0
        self.last_ckpt: Path | None = None
        self.last_eval: WidthLosses | None = None
        self.smooth: dict[float, float] = {}
        self.amp = config.amp and dev.type == "cuda"
        local = config.batch_size // dist_env.world
        self.part = slice(dist_env.rank * local, (dist_env.rank + 1) * local)  # this rank's share of a batch

    # 1. fresh start or exact resume
    def prepare(self, resume: bool) -> None:
        existing = ckpt_io.find_resumable(self.out_dir) if self.out_dir.exists() else None
        if existing is not None and not resume:
            raise TrainingError(
                f"{self.out_dir} already holds a run (checkpoint {existing.name}); pass --resume to continue "
                "it or choose another --out"
            )
        if existing is not None:
            self.step = self._restore(existing)
            self.last_ckpt = existing
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            ckpt_io.clean_stale_temporaries(self.out_dir)

    def _restore(self, ckpt: Path) -> int:
        from safetensors.torch import load_file

        manifest = ckpt_io.read_manifest(ckpt)
        ckpt_io.check_compatible(manifest, self.model_config)
        _check_resume_config(manifest.get("train_config"), self.config, ckpt.parent)
        if manifest["schedule"] != self.schedule.to_dict():
            raise ConfigError(f"{ckpt} was trained with noise schedule {manifest['schedule']}")
        for module, key in ((self.model, "model"), (self.ema, "ema")):
            fname = manifest["weights"][key]
            ckpt_io.load_state_into(module, load_file(str(ckpt / fname), device=str(self.dev)), ckpt / fname)
        state = ckpt_io.load_training_state(ckpt, map_location=str(self.dev))
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["lr_scheduler"])
        return int(manifest["step"])

    # 2. the loop
    def run(
        self,
        *,
        progress: bool,
        callback: Callable[[dict[str, Any]], None] | None,
        stop_at: int | None,
        started: float,
    ) -> TrainResult:
        cfg = self.config
        net, no_sync = self.model, None
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(
                self.model, device_ids=[self.dev.index] if self.dev.type == "cuda" else None
            )
            no_sync = net.no_sync
        # Batches are a function of (seed, step): a resumed run sees what the first one would have seen.
        sampler = StepBatchSampler(
            len(self.dataset), cfg.batch_size, seed=cfg.seed, start_step=self.step, total_steps=cfg.steps,
            rank=self.dist.rank, world=self.dist.world,
        )  # fmt: skip
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=cfg.num_workers,
            pin_memory=self.dev.type == "cuda",
        )
        bar = _progress_bar(cfg.steps, self.step, enabled=progress and self.is_main)
        interrupted = False
        with _StopRequest() as stop:
            for x0, y in loader:
                record = self.train_one(net, no_sync, x0, y)
                record["elapsed_s"] = round(time.time() - started, 3)
                if self.is_main and callback is not None:
                    callback(record)
                stop_now = stop.signum is not None or (stop_at is not None and self.step >= stop_at)
                stop_now = self.dist.any_flag(stop_now) and self.step < cfg.steps
                self.log(record, bar, force=stop_now)
                self.periodic(final=stop_now or self.step == cfg.steps, interrupted=stop_now)
                if stop_now:
                    interrupted = True
                    break
        bar.close()
        return TrainResult(
            step=self.step,
            checkpoint=self.last_ckpt,
            interrupted=interrupted,
            signal=stop.signum,
            wall_s=time.time() - started,
            eval=self.last_eval,
        )

    def train_one(
        self,
        net: nn.Module,
        no_sync: Callable[[], contextlib.AbstractContextManager] | None,
        x0: Tensor,
        y: Tensor,
    ) -> dict[str, Any]:
        """One optimizer step of the sandwich rule; returns the step's log record."""
        cfg, dev = self.config, self.dev
        draws = step_draws(cfg, self.step, tuple(x0.shape[1:]), self.model_config.widths)
        x0 = x0.to(dev, non_blocking=True)
        if cfg.hflip:
            flip = draws["flip"][self.part].to(dev)
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        y = y.to(dev) if self.model_config.num_classes is not None else None
        t, noise = draws["t"][self.part].to(dev), draws["noise"][self.part].to(dev)
        self.opt.zero_grad(set_to_none=True)
        # Dropout draws from the global RNG: fork it and seed it per step, so nothing leaks out and a
        # resumed run draws the same masks.
        with torch.random.fork_rng(devices=[dev.index] if dev.type == "cuda" else []):
            torch.manual_seed(derive_seed(cfg.seed, "dropout", self.step, self.dist.rank))
            losses = train_step(
                net, self.schedule, x0, y, t, noise, draws["widths"], distill=cfg.distill, amp=self.amp,
                no_sync=no_sync,
            )  # fmt: skip
        params = self.model.parameters()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip > 0 else None
        self.opt.step()
        self.sched.step()
        decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step)) if cfg.ema_warmup else cfg.ema_decay
        ema_update(self.ema, self.model, decay)
        self.step += 1
        reduced = self.dist.mean(torch.stack(list(losses.values())).float()).tolist()
        values = dict(zip(losses, reduced, strict=True))
        if not all(math.isfinite(v) for v in values.values()):
            raise TrainingError(
                f"non-finite loss at step {self.step} ({_fmt_losses(values)}); lower --lr or check the data"
            )
        return {
            "step": self.step,
            "losses": {format_width(w): v for w, v in values.items()},
            "lr": self.sched.get_last_lr()[0],
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "ema_decay": decay,
            "_values": values,
        }

    # 3. bookkeeping (rank 0): progress, log, eval, samples, checkpoints
    def log(self, record: dict[str, Any], bar: Any, force: bool) -> None:
        values = record.pop("_values")
        for w, v in values.items():
            self.smooth[w] = v if w not in self.smooth else 0.9 * self.smooth[w] + 0.1 * v
        if self.is_main and (
            force or _due(self.step, self.config.log_every) or self.step == self.config.steps
        ):
            _append_jsonl(self.out_dir / "log.jsonl", record)
            bar.set_postfix_str(_fmt_losses(self.smooth), refresh=False)
        bar.update(1)

    def periodic(self, *, final: bool, interrupted: bool) -> None:
        cfg, step = self.config, self.step
        if self.is_main:
            end = final and not interrupted
            if cfg.eval_images and (_due(step, cfg.eval_every) or end):
                self.last_eval = eval_width_losses(
                    self.ema, self.schedule, self.eval_dataset, n_images=cfg.eval_images, seed=cfg.seed,
                    device=self.dev,
                )  # fmt: skip
                _append_jsonl(
                    self.out_dir / "eval.jsonl", {"step": step, "ema": True, **self.last_eval.to_dict()}
                )
            if cfg.sample_n and (_due(step, cfg.sample_every) or end):
                sample_width_grid(
                    self.ema, self.schedule, self.out_dir / "samples" / f"{ckpt_io.step_dir_name(step)}.png",
                    n=cfg.sample_n, sampler=cfg.sample_sampler, steps=cfg.sample_steps, seed=cfg.seed,
                    device=self.dev,
                )  # fmt: skip
            if _due(step, cfg.checkpoint_every) or final:
                self.last_ckpt = self.save()
        if final:
            self.dist.barrier()

    def save(self) -> Path:
        state = {
            "step": self.step,
            "optimizer": self.opt.state_dict(),
            "lr_scheduler": self.sched.state_dict(),
        }
        return ckpt_io.save_to_run(
            self.out_dir,
            step=self.step,
            keep_last=self.config.keep_last,
            model_config=self.model_config,
            schedule=self.schedule.to_dict(),
            model_state=self.model.state_dict(),
            ema_state=self.ema.state_dict(),
            training_state=state,
            train_config=self.config.to_dict(),
            extra={
                "rng": "per step, derived from (train_config.seed, step, rank): resuming needs no RNG state",
                "eval": self.last_eval.to_dict() if self.last_eval is not None else None,
            },
        )


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def _fmt_losses(losses: Mapping[float, float]) -> str:
    return " ".join(f"{format_width(w)}={v:.4f}" for w, v in sorted(losses.items()))


def _append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


class _NoBar:
    def set_postfix_str(self, *a: Any, **k: Any) -> None: ...
    def update(self, *a: Any) -> None: ...
    def close(self) -> None: ...


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)


def main_train(
    *,
    preset: str,
    out_dir: str | Path,
    overrides: Mapping[str, Any],
    resume: bool = False,
    class_cond: bool = False,
    device: str | None = None,
    data_root: str | Path | None = None,
    download: bool = False,
    verify: bool = True,
    export: str | Path | None = None,
    progress: bool = True,
    echo: Callable[[str], Any] = print,
) -> TrainResult:
    """What ``ddsm train`` does: recipe from the preset (or the run being resumed) plus overrides."""
    out_dir = Path(out_dir)
    base = TrainConfig.for_preset(preset)
    existing = ckpt_io.find_resumable(out_dir) if resume and out_dir.exists() else None
    if existing is not None:
        saved = ckpt_io.read_manifest(existing, verify=False).get("train_config")
        base = TrainConfig.from_dict(saved) if saved else base
    config = base.replace(**overrides)
    if not config.dataset:
        raise ConfigError(f"preset {preset!r} has no bundled dataset; pass --dataset FOLDER")
    model_config = UNetConfig.from_preset(preset)
    if class_cond:
        n_classes = _dataset_classes(config.dataset, model_config)
        model_config = dataclasses.replace(model_config, num_classes=n_classes)
    is_main = int(os.environ.get("RANK", "0")) == 0
    if is_main:
        where = f"resuming {existing}" if existing is not None else f"new run in {out_dir}"
        echo(
            f"{preset}: {config.dataset}, {config.steps} steps, batch {config.batch_size}, "
            f"lr {config.lr:g}; {where}"
        )
    result = train(
        model_config, config, out_dir, resume=resume, device=device, data_root=data_root,
        download=download, verify=verify, progress=progress,
    )  # fmt: skip
    if is_main and not result.interrupted:
        echo(f"done: step {result.step} in {result.wall_s:.1f} s; checkpoint {result.checkpoint}")
        if result.eval is not None:
            echo("per-width eval loss (EMA weights):\n" + result.eval.to_markdown())
        if export is not None and result.checkpoint is not None:
            echo(f"exported to {ckpt_io.copy_checkpoint(result.checkpoint, export)}")
    return result


def _dataset_classes(name: str, model_config: UNetConfig) -> int:
    if name in ("digits", "cifar10"):
        return 10
    ds = load_dataset(name, image_size=model_config.image_size, channels=model_config.in_channels)
    if not ds.num_classes:
        raise ConfigError(
            f"--class-cond needs labels, but {name!r} has none (put images in class subfolders)"
        )
    return ds.num_classes
