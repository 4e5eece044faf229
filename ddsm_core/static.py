"""One width of the supernet as a static network: ordinary layers holding that width's weights.

A slimmable layer decides at every call which channels to use (``SlimConv2d.weights_at``), and a
graph compiler sees every width as another parameter shape (torch.compile hits its recompile limit).
:func:`materialize` cuts the supernet once, at one width, into a plain copy: each slimmable layer
becomes an ``nn.Conv2d`` / ``nn.Linear`` / ``nn.GroupNorm`` / ``nn.Embedding`` of exactly the
channels it keeps there, with a copy of the weights it reads there. The containers (residual blocks,
attention, the U-Net's skips) are the supernet's own classes and code, so the copy computes what
``model(x, t, width)`` computes by construction (tests/core/test_static.py checks it against the
supernet at every width). It is the input of the traced per-width networks of
:class:`ddsm_core.inference.StaticWidths`.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ddsm_core.slimmable import (
    SlimConv2d,
    SlimEmbedding,
    SlimGroupNorm,
    SlimLinear,
    _memory_format,
    part_channels,
    slice_parts,
)
from ddsm_core.unet import SlimmableUNet
from ddsm_core.widths import channels, match_width

# The plain layers take (and ignore) the width argument their supernet containers pass down.


class StaticConv2d(nn.Conv2d):
    def forward(self, x: Tensor, width: float = 1.0) -> Tensor:  # type: ignore[override]
        return super().forward(x)


class StaticLinear(nn.Linear):
    def forward(self, x: Tensor, width: float = 1.0) -> Tensor:  # type: ignore[override]
        return super().forward(x)


class StaticGroupNorm(nn.GroupNorm):
    def forward(self, x: Tensor, width: float = 1.0) -> Tensor:  # type: ignore[override]
        return super().forward(x)


class StaticEmbedding(nn.Embedding):
    def forward(self, y: Tensor, width: float = 1.0) -> Tensor:  # type: ignore[override]
        return super().forward(y)


class StaticUNet(nn.Module):
    """The width-``width`` sub-network of a :class:`~ddsm_core.unet.SlimmableUNet`, made of plain layers.

    ``static(x, t, y)`` equals ``supernet(x, t, width, y)`` up to float rounding. No argument checks
    (labels must be given iff the supernet is class-conditional): it is a network to trace or compile.
    """

    def __init__(self, net: SlimmableUNet, width: float) -> None:
        super().__init__()
        self.net, self.width, self.config = net, width, net.config

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """:param x: [N x C x H x W]; :param t: [N] timesteps or a scalar; :param y: [N] labels or None."""
        return self.net.forward_at(x, t, self.width, y)


def materialize(model: SlimmableUNet, width: float) -> StaticUNet:
    """A plain, eval-mode, gradient-free copy of ``model``'s width-``width`` sub-network.

    The weights are copied (in the supernet's dtype, device and memory format), so the copy does
    not follow later changes to the supernet: rebuild it after training.
    """
    width = match_width(width, model.config.widths)
    # Normal tensors even when called under inference_mode (e.g. lazily, by a sampler).
    with torch.inference_mode(False), torch.no_grad():
        net = copy.deepcopy(model)  # slimmable layers leave their per-width packs behind (__getstate__)
        for parent in list(net.modules()):
            for name, child in parent.named_children():
                static = _static_layer(child, width)
                if static is not None:
                    setattr(parent, name, static)
    net.eval().requires_grad_(False)
    return StaticUNet(net, width).eval()


def _static_layer(layer: nn.Module, width: float) -> nn.Module | None:
    """The plain layer a slimmable ``layer`` is at ``width``; None for any other module."""
    like = {"device": layer.weight.device, "dtype": layer.weight.dtype} if hasattr(layer, "weight") else {}
    if isinstance(layer, SlimConv2d):
        c_in, c_out = layer.channels_at(width)
        weight, bias = layer.weights_at(width)
        conv = StaticConv2d(c_in, c_out, layer.kernel_size, layer.stride, layer.padding,
                            layer.dilation, layer.groups, bias is not None, **like)  # fmt: skip
        return _load(conv, weight, bias)
    if isinstance(layer, SlimLinear):
        c_in, c_out = layer.channels_at(width)
        weight, bias = layer.weights_at(width)
        return _load(StaticLinear(c_in, c_out, bias is not None, **like), weight, bias)
    if isinstance(layer, SlimGroupNorm):
        kept = sum(part_channels(layer.parts, width))
        norm = StaticGroupNorm(layer.groups_at(width), kept, layer.eps, **like)
        weight, bias = (slice_parts(p, 0, layer.parts, width) for p in (layer.weight, layer.bias))
        return _load(norm, weight, bias)
    if isinstance(layer, SlimEmbedding):
        dim = channels(layer.embedding_dim, width)
        embedding = StaticEmbedding(layer.num_embeddings, dim, **like)
        return _load(embedding, layer.weight.narrow(1, 0, dim), None)
    return None


def _load(layer: nn.Module, weight: Tensor, bias: Tensor | None) -> nn.Module:
    """Copy ``weight`` (keeping a channels_last layout) and ``bias`` into ``layer``'s parameters."""
    copied = weight.detach().clone(memory_format=_memory_format(weight))
    layer.weight = nn.Parameter(copied, requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return layer
