"""Preparing a trained supernet for fast sampling (the training path never calls this).

Three things make narrow sub-networks run closer to their GFLOPs (bench/width_latency.md):

- packed weights: each slimmable layer keeps a contiguous copy of its narrow weights per width
  (``SlimConv2d.weights_at``); :func:`prepare_for_inference` builds them all up front, so the first
  sampling call at a width is not slower than the others and a latency measurement needs no warm-up
  for it;
- channels_last: convolutions on CPU (oneDNN) and GPU (cuDNN) run faster on NHWC tensors;
- hardware-friendly widths: ``UNetConfig.channel_multiple`` (a property of the trained supernet, not
  of this step).

The model's numbers do not change beyond float rounding (tests/core/test_inference.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ddsm_core.slimmable import SlimConv2d, SlimLinear

# Where NHWC pays off (bench/width_latency.md): on the CPU (oneDNN); on CUDA for half types only
# (cuDNN's NHWC kernels are the tensor-core ones; float32 NCHW is as fast or faster there).
CPU_CHANNELS_LAST = True


def default_channels_last(model: nn.Module) -> bool:
    """Whether :func:`prepare_for_inference` stores the model channels_last by default."""
    p = next(model.parameters())
    if p.device.type == "cuda":
        return p.dtype in (torch.bfloat16, torch.float16)
    return CPU_CHANNELS_LAST


def prepare_for_inference(
    model: nn.Module, *, channels_last: bool | None = None, widths: Sequence[float] | None = None
) -> nn.Module:
    """Eval mode, optionally channels_last, and every width's packed weights built now.

    :param model: a :class:`~ddsm_core.unet.SlimmableUNet` on its device and in its dtype (modified
        in place and returned).
    :param channels_last: store 4-d weights NHWC; activations follow (a conv with an NHWC weight
        returns NHWC), so inputs need no conversion. Default: :func:`default_channels_last`.
    :param widths: the widths to pack (default: all of the model's).
    """
    model.eval()
    if channels_last is None:
        channels_last = default_channels_last(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    chosen = tuple(model.config.widths if widths is None else widths)  # type: ignore[attr-defined]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (SlimConv2d, SlimLinear)):
                for width in chosen:
                    module.weights_at(width)
    return model
