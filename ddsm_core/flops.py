"""GFLOPs of the supernet per width, counted from the real model with torch's FlopCounterMode.

Counts are 2 x multiply-adds (FlopCounterMode counts 2 FLOPs per MAC for convolutions and matrix
products; tests/core/test_flops.py checks this), per image, for one network call. Two columns:

- ``gflops``: everything FlopCounterMode counts, i.e. convolutions, linear layers and the attention
  matrix products (q k^T and attn v). This is what the supernet really computes.
- ``gflops_conv_linear``: convolutions and linear layers only: the paper's count (its 12.14 GFLOPs for
  DDPM's CIFAR-10 network at full width excludes the attention products, which would add 0.34).

Neither counts GroupNorm, SiLU, softmax, additions or upsampling (elementwise, memory-bound).
The model is run on PyTorch's "meta" device (shapes only, no arithmetic), so counting the
35.7 M-parameter CIFAR-10 network at seven widths takes well under a second and no memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch.utils.flop_counter import FlopCounterMode

from ddsm_core.config import UNetConfig
from ddsm_core.unet import SlimmableUNet
from ddsm_core.widths import match_width

if TYPE_CHECKING:
    from ddsm_core.costs import CostTable

# Ops that are convolutions or linear layers (bias-free linear layers lower to mm). Everything else
# FlopCounterMode counts in this model is attention (bmm on the math path, sdpa kernels on GPU).
_CONV_LINEAR_OPS = frozenset({"aten.convolution", "aten._convolution", "aten.addmm", "aten.mm"})


def _config_of(model_or_config: SlimmableUNet | UNetConfig) -> UNetConfig:
    return model_or_config if isinstance(model_or_config, UNetConfig) else model_or_config.config


def _meta_model(config: UNetConfig) -> SlimmableUNet:
    """The same network on the meta device: identical ops and shapes, no storage or arithmetic."""
    with torch.device("meta"):
        return SlimmableUNet(config).eval()


def count_params(model_or_config: SlimmableUNet | UNetConfig) -> int:
    """Number of parameters of the full supernet (all widths share them)."""
    if isinstance(model_or_config, SlimmableUNet):
        return sum(p.numel() for p in model_or_config.parameters())
    return sum(p.numel() for p in _meta_model(model_or_config).parameters())


def _flops_by_op(model: SlimmableUNet, width: float, batch: int) -> dict[str, int]:
    cfg = model.config
    x = torch.zeros(batch, cfg.in_channels, cfg.image_size, cfg.image_size, device="meta")
    t = torch.zeros(batch, device="meta")
    y = None if cfg.num_classes is None else torch.zeros(batch, dtype=torch.long, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x, t, width, y)
    return {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}


def count_gflops(
    model_or_config: SlimmableUNet | UNetConfig, widths: Sequence[float] | None = None, batch: int = 1
) -> dict[float, dict[str, float]]:
    """GFLOPs of one network call per image at each width.

    :param model_or_config: a SlimmableUNet or its UNetConfig (only the architecture matters).
    :param widths: widths to count, each one of the config's widths; default all of them.
    :param batch: batch size of the counted call; results are divided by it (per image).
    :return: ``{width: {"gflops": total, "gflops_conv_linear": conv/linear only}}`` in width order.
    """
    config = _config_of(model_or_config)
    chosen = config.widths if widths is None else tuple(match_width(w, config.widths) for w in widths)
    model = _meta_model(config)
    out: dict[float, dict[str, float]] = {}
    for width in chosen:
        by_op = _flops_by_op(model, width, batch)
        conv_linear = sum(n for op, n in by_op.items() if op in _CONV_LINEAR_OPS)
        out[width] = {
            "gflops": sum(by_op.values()) / batch / 1e9,
            "gflops_conv_linear": conv_linear / batch / 1e9,
        }
    return out


def cost_table(
    model_or_config: SlimmableUNet | UNetConfig, widths: Sequence[float] | None = None
) -> CostTable:
    """A CostTable (total and conv/linear GFLOPs per call) for the model's width set."""
    from ddsm_core.costs import CostTable

    counts = count_gflops(model_or_config, widths)
    return CostTable(
        widths=tuple(counts),
        gflops=tuple(c["gflops"] for c in counts.values()),
        gflops_conv_linear=tuple(c["gflops_conv_linear"] for c in counts.values()),
    )


def flops_report(config: UNetConfig, preset: str | None = None) -> dict[str, object]:
    """The ``ddsm flops --json`` object: preset, params, widths and both GFLOPs lists, aligned."""
    counts = count_gflops(config)
    return {
        "preset": preset,
        "params": count_params(config),
        "widths": list(counts),
        "gflops": [round(c["gflops"], 6) for c in counts.values()],
        "gflops_conv_linear": [round(c["gflops_conv_linear"], 6) for c in counts.values()],
    }
