"""What training watches: the per-width eval loss on fixed draws, and sample grids per width.

Both draw from their own seeded generators (never the training stream), so they do not change the
weights of a run. Both run between training steps and may be cut short by a stop request (the
trainer checkpoints and exits): they leave the model as they found it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddsm_core.config import UNetConfig
from ddsm_core.data import derive_seed, save_image_grid
from ddsm_core.schedules import NoiseSchedule
from ddsm_core.widths import format_width


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


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` for the block, then back to the mode it was in (also when the block is cut short)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


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
    conditional = getattr(model, "config", None) is not None and model.config.num_classes  # type: ignore
    with eval_mode(model):
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
                    sq = ((pred - nb) ** 2).mean(dim=(1, 2, 3))
                    per_image[i, j, s : s + batch_size] = sq.double().cpu()
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
    denoiser = VPDenoiser(model, schedule)
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    seeds = list(range(seed, seed + n))
    y = torch.arange(n, device=device) % cfg.num_classes if cfg.num_classes else None
    rows = []
    with eval_mode(model):
        for w in widths:
            strategy = Strategy.uniform(sampler, steps, cfg.widths.index(w), cfg.widths)
            rows.append(sample(denoiser, strategy, shape, seeds, y=y, device=device).cpu())
    return save_image_grid(torch.cat(rows), path, nrow=n)
