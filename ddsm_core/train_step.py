"""One training step of the slimmable supernet: the sandwich rule, its random draws, EMA and LR schedule.

Each step draws one batch and trains, on that same batch, the largest width, ``n_middle`` widths drawn
at random from the ones in between, and the smallest width, summing their gradients before one
optimizer step (US-Net's sandwich rule, Yu & Huang 2019). With ``distill`` the sub-widths regress the
full width's detached prediction instead of the true noise (US-Net's in-place distillation).

Everything random in step ``k`` (timesteps, noise, flips, middle widths, dropped labels) is drawn by
:func:`step_draws` from a generator seeded by ``derive_seed(seed, "step", k)``, for the GLOBAL batch: a
resumed run and a DDP run draw what a single uninterrupted process would.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddsm_core.data import derive_seed
from ddsm_core.recipes import TrainConfig
from ddsm_core.schedules import NoiseSchedule


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
    """All the randomness of one step for the GLOBAL batch: widths, timesteps, noise, flips and the
    labels to drop (``label_drop``, each with probability ``config.label_dropout``)."""
    gen = torch.Generator().manual_seed(derive_seed(config.seed, "step", step))
    b = config.batch_size
    draws = {
        "widths": sandwich_widths(widths, config.n_middle, gen),
        "t": torch.randint(0, config.timesteps, (b,), generator=gen),
        "noise": torch.randn((b, *image_shape), generator=gen),
        "flip": torch.rand(b, generator=gen) < 0.5,
    }
    # drawn last, so runs without label dropout draw exactly what they did before it existed
    if config.label_dropout > 0:
        draws["label_drop"] = torch.rand(b, generator=gen) < config.label_dropout
    return draws


def drop_labels(y: Tensor, drop: Tensor, null_label: int) -> Tensor:
    """Classifier-free guidance's label dropout: ``y`` with the ``drop`` entries set to ``null_label``.

    :param y: an [N] long Tensor of labels. :param drop: an [N] bool Tensor (``step_draws``'s mask).
    """
    return torch.where(drop.to(y.device), torch.full_like(y, null_label), y)


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
