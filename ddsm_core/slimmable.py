"""Slimmable layers: one set of weights, run on the first channels at any width.

Every layer takes the width as a forward argument (``layer(x, width)``); no layer stores a width.
Channel counts come from ``ddsm_core.widths.channels`` only.

Parts. A layer's input (or output) may be a concatenation of several tensors, e.g. a U-Net up-block
reads ``cat(h, skip)``. A width-k sub-network is then made of the first channels of EACH part, not
the first channels of the concatenation (the DDSM authors' code does the latter, which makes the
narrow network read the wrong skip channels). Layers therefore take their channel count as a tuple
of part sizes, and slice their weights part by part.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddsm_core.errors import ConfigError
from ddsm_core.widths import channels

Parts = tuple[int, ...]


def as_parts(c: int | Sequence[int]) -> Parts:
    """Normalise a channel count or a sequence of part sizes to a tuple of part sizes."""
    parts = (int(c),) if isinstance(c, int) else tuple(int(p) for p in c)
    if not parts or min(parts) < 1:
        raise ConfigError(f"channel parts must be positive integers, got {c!r}")
    return parts


def part_channels(parts: Parts, width: float) -> Parts:
    """Channels each part keeps at ``width``."""
    return tuple(channels(p, width) for p in parts)


def slice_parts(t: Tensor, dim: int, parts: Parts, width: float) -> Tensor:
    """The first ``channels(p, width)`` entries of each part of ``t`` along ``dim``.

    A view when there is one part or nothing is cut (so the full width copies nothing); a
    concatenation of views otherwise.
    """
    kept = part_channels(parts, width)
    if len(parts) == 1:
        return t if kept[0] == parts[0] else t.narrow(dim, 0, kept[0])
    if kept == parts:
        return t
    pieces, offset = [], 0
    for full, k in zip(parts, kept, strict=True):
        pieces.append(t.narrow(dim, offset, k))
        offset += full
    return torch.cat(pieces, dim)


class SlimModule:
    """Marker for layers whose validity at a width is checked when the model is built."""

    def check_width(self, width: float) -> None:
        """Raise ConfigError (with the reason) when this layer cannot run at ``width``."""
        raise NotImplementedError


class _SlimWeights(SlimModule):
    """Shared slicing of a [out, in, ...] weight and its bias for conv and linear layers."""

    weight: Tensor
    bias: Tensor | None
    in_parts: Parts
    out_parts: Parts
    slim_in: bool
    slim_out: bool

    def _setup_parts(
        self, in_parts: int | Sequence[int], out_parts: int | Sequence[int], slim_in: bool, slim_out: bool
    ) -> None:
        self.in_parts, self.out_parts = as_parts(in_parts), as_parts(out_parts)
        self.slim_in, self.slim_out = slim_in, slim_out

    def channels_at(self, width: float) -> tuple[int, int]:
        """(input, output) channels at ``width``."""
        w_in, w_out = (width if self.slim_in else 1.0), (width if self.slim_out else 1.0)
        return sum(part_channels(self.in_parts, w_in)), sum(part_channels(self.out_parts, w_out))

    def weights_at(self, width: float) -> tuple[Tensor, Tensor | None]:
        """The weight and bias a width-``width`` sub-network uses.

        At full width these are the parameters themselves. At a narrow width they are views of
        the first channels, or, when autograd is off (sampling), contiguous copies kept per
        width: a strided view is repacked by the convolution on every call, which made small
        narrow calls up to ~1.5x slower than a standalone narrow layer (bench/width_latency.md).
        The copies are dropped as soon as a parameter changes (optimizer step, load, device move,
        ``model.to(memory_format=torch.channels_last)``), and keep the parameter's memory format.
        """
        if width >= 1.0 or torch.is_grad_enabled():
            return self._slice(width)
        w, b = self.weight, self.bias
        key = (w.device, w.dtype, w.data_ptr(), w._version, None if b is None else b._version, w.stride())
        packed = self.__dict__.get("_packed")
        if packed is None or packed[0] != key:
            packed = (key, {})
            self.__dict__["_packed"] = packed
        if width not in packed[1]:
            weight, bias = self._slice(width)
            packed[1][width] = (weight.contiguous(memory_format=_memory_format(w)),
                                None if bias is None else bias.contiguous())  # fmt: skip
        return packed[1][width]

    def _slice(self, width: float) -> tuple[Tensor, Tensor | None]:
        w_in, w_out = (width if self.slim_in else 1.0), (width if self.slim_out else 1.0)
        weight = slice_parts(slice_parts(self.weight, 0, self.out_parts, w_out), 1, self.in_parts, w_in)
        bias = None if self.bias is None else slice_parts(self.bias, 0, self.out_parts, w_out)
        return weight, bias

    def __getstate__(self) -> dict:
        # Copies and pickles of the layer leave the derived per-width copies behind.
        state = self.__dict__.copy()
        state.pop("_packed", None)
        return state

    def check_width(self, width: float) -> None:
        self.channels_at(width)  # channels() itself rejects widths outside (0, 1]


def _memory_format(w: Tensor) -> torch.memory_format:
    """channels_last for a 4-d weight stored that way (and not trivially both), else contiguous."""
    if w.ndim == 4 and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


class SlimConv2d(nn.Conv2d, _SlimWeights):
    """Conv2d whose input/output channels are cut to the first channels (of each part) at a width.

    :param in_channels: full input channels, or the part sizes of a concatenated input.
    :param out_channels: full output channels, or part sizes (e.g. (C, C, C) for a fused q, k, v).
    :param slim_in: False for a fixed input (the image); ``slim_out`` likewise for the output.
    """

    def __init__(
        self,
        in_channels: int | Sequence[int],
        out_channels: int | Sequence[int],
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        *,
        bias: bool = True,
        slim_in: bool = True,
        slim_out: bool = True,
    ) -> None:
        in_parts, out_parts = as_parts(in_channels), as_parts(out_channels)
        super().__init__(sum(in_parts), sum(out_parts), kernel_size, stride, padding, bias=bias)
        self._setup_parts(in_parts, out_parts, slim_in, slim_out)

    __getstate__ = _SlimWeights.__getstate__  # nn.Module's own would come first in the MRO

    def forward(self, x: Tensor, width: float = 1.0) -> Tensor:  # type: ignore[override]
        """:param x: an [N x C_in(width) x H x W] Tensor."""
        weight, bias = self.weights_at(width)
        return self._conv_forward(x, weight, bias)


class SlimLinear(nn.Linear, _SlimWeights):
    """Linear layer cut to the first features (of each part) at a width; see SlimConv2d."""

    def __init__(
        self,
        in_features: int | Sequence[int],
        out_features: int | Sequence[int],
        *,
        bias: bool = True,
        slim_in: bool = True,
        slim_out: bool = True,
    ) -> None:
        in_parts, out_parts = as_parts(in_features), as_parts(out_features)
        super().__init__(sum(in_parts), sum(out_parts), bias=bias)
        self._setup_parts(in_parts, out_parts, slim_in, slim_out)

    __getstate__ = _SlimWeights.__getstate__

    def forward(self, x: Tensor, width: float = 1.0) -> Tensor:  # type: ignore[override]
        """:param x: an [N x F_in(width)] Tensor."""
        weight, bias = self.weights_at(width)
        return F.linear(x, weight, bias)


class SlimEmbedding(nn.Embedding, SlimModule):
    """Label embedding whose vectors are cut to their first ``channels(dim, width)`` entries."""

    def forward(self, y: Tensor, width: float = 1.0) -> Tensor:  # type: ignore[override]
        """:param y: an [N] long Tensor of labels; returns [N x channels(dim, width)]."""
        return F.embedding(y, self.weight.narrow(1, 0, channels(self.embedding_dim, width)))

    def check_width(self, width: float) -> None:
        channels(self.embedding_dim, width)


class SlimGroupNorm(nn.GroupNorm, SlimModule):
    """GroupNorm whose number of groups scales with the channels kept (fixed group size).

    At full width there are ``num_groups`` (16) groups of ``C / num_groups`` channels. A width-k
    sub-network keeps that group size, so it has ``channels_k / group_size`` groups: e.g. with
    C = 128 and 16 groups of 8, width 2/8 keeps 32 channels in 4 groups, and each kept group is
    exactly a group of the full network. With a fixed group count instead (the DDSM authors' code),
    a 64-channel layer could not run at width 3/8 (24 channels, 16 groups); the fixed group size
    works for every width k/8 whenever C is a multiple of 16 (C k/8 channels make 2k groups). The
    model's build-time check rejects a width whose kept channels do not split into whole groups.

    The affine weight and bias are sliced per part like the input (see module docstring).
    """

    def __init__(self, num_groups: int, num_channels: int | Sequence[int], eps: float = 1e-5) -> None:
        parts = as_parts(num_channels)
        total = sum(parts)
        if total % num_groups:
            raise ConfigError(f"GroupNorm: {total} channels do not split into {num_groups} groups")
        super().__init__(num_groups, total, eps=eps)
        self.parts = parts
        self.group_size = total // num_groups

    def groups_at(self, width: float) -> int:
        kept = sum(part_channels(self.parts, width))
        if kept % self.group_size:
            raise ConfigError(
                f"GroupNorm keeps {kept} channels, not a multiple of its group size {self.group_size}"
            )
        return kept // self.group_size

    def forward(self, x: Tensor, width: float = 1.0) -> Tensor:  # type: ignore[override]
        """:param x: an [N x C(width) x H x W] Tensor."""
        weight = slice_parts(self.weight, 0, self.parts, width)
        bias = slice_parts(self.bias, 0, self.parts, width)
        return F.group_norm(x, self.groups_at(width), weight, bias, self.eps)

    def check_width(self, width: float) -> None:
        self.groups_at(width)
