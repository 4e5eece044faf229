"""The slimmable U-Net supernet (DDPM / ADM shape) predicting epsilon at any width of its set.

Layout (DDPM's CIFAR-10 network, Ho et al. 2020): a 3x3 head conv; per level ``num_res_blocks``
residual blocks (self-attention after each at the configured resolutions) and a stride-2 conv
downsampling; a middle of ResBlock, attention, ResBlock; per level on the way up
``num_res_blocks + 1`` residual blocks, each reading ``cat(h, skip)``, and a nearest-neighbour
upsampling + 3x3 conv; GroupNorm, SiLU and a 3x3 output conv. Residual blocks add a projection of
the timestep embedding (sinusoidal -> Linear -> SiLU -> Linear, 4 x model_channels wide), plus a
label embedding when ``num_classes`` is set (with one more row, the null label ``num_classes``, when
``null_label`` is set: classifier-free guidance's unconditional model).

Every layer is slimmable except the image channels at both ends and the sinusoidal input of the
time MLP; the time MLP's hidden and output features slim with the width too (as in the authors'
code). Skip concatenations are sliced per part (see ``ddsm_core.slimmable``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddsm_core.config import UNetConfig
from ddsm_core.errors import ConfigError
from ddsm_core.slimmable import SlimConv2d, SlimEmbedding, SlimGroupNorm, SlimLinear, SlimModule
from ddsm_core.widths import channels, format_width, match_width


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps.

    :param t: an [N] Tensor of timesteps in [0, T-1].
    :return: an [N x dim] float32 Tensor, [cos | sin] halves (guided-diffusion's convention).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


class TimeEmbedding(nn.Module):
    """Sinusoidal features (fixed size) -> SlimLinear -> SiLU -> SlimLinear."""

    def __init__(self, model_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.model_channels = model_channels
        self.lin1 = SlimLinear(model_channels, embed_dim, slim_in=False)
        self.lin2 = SlimLinear(embed_dim, embed_dim)

    def forward(self, t: Tensor, width: float) -> Tensor:
        h = timestep_embedding(t, self.model_channels).to(self.lin1.weight.dtype)
        return self.lin2(F.silu(self.lin1(h, width)), width)


class ResBlock(nn.Module):
    """GN-SiLU-conv, + embedding projection, GN-SiLU-dropout-conv, + (1x1 conv) shortcut.

    :param in_channels: input channels, or (h, skip) part sizes for an up-block.
    """

    def __init__(
        self, in_channels: int | tuple[int, ...], out_channels: int, embed_dim: int, cfg: UNetConfig
    ) -> None:
        super().__init__()
        parts = (in_channels,) if isinstance(in_channels, int) else in_channels
        self.norm1 = SlimGroupNorm(cfg.num_groups, parts)
        self.conv1 = SlimConv2d(parts, out_channels, 3, padding=1)
        self.emb_proj = SlimLinear(embed_dim, out_channels)
        self.norm2 = SlimGroupNorm(cfg.num_groups, out_channels)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = SlimConv2d(out_channels, out_channels, 3, padding=1)
        same = len(parts) == 1 and parts[0] == out_channels
        self.shortcut = None if same else SlimConv2d(parts, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor, width: float) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x, width)), width)
        h = h + self.emb_proj(F.silu(emb), width)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h, width))), width)
        return h + (x if self.shortcut is None else self.shortcut(x, width))


class AttentionBlock(nn.Module, SlimModule):
    """Multi-head self-attention over the H*W positions with a residual connection.

    q, k, v come from one fused 1x1 conv whose output has three parts (C, C, C), each sliced to
    its first channels at a width. Heads: ``num_heads`` at every width (head size scales), or, with
    ``num_head_channels > 0``, heads of that size (head count scales).
    """

    def __init__(self, ch: int, cfg: UNetConfig) -> None:
        super().__init__()
        self.ch = ch
        self.num_heads, self.head_channels = cfg.num_heads, cfg.num_head_channels
        self.norm = SlimGroupNorm(cfg.num_groups, ch)
        self.qkv = SlimConv2d(ch, (ch, ch, ch), 1)
        self.proj = SlimConv2d(ch, ch, 1)

    def heads_at(self, width: float) -> int:
        c = channels(self.ch, width)
        divisor = self.head_channels if self.head_channels > 0 else self.num_heads
        heads = c // self.head_channels if self.head_channels > 0 else self.num_heads
        if heads < 1 or c % divisor:
            raise ConfigError(
                f"attention: {c} channels do not split into heads "
                f"(num_heads {self.num_heads}, num_head_channels {self.head_channels})"
            )
        return heads

    def check_width(self, width: float) -> None:
        self.heads_at(width)

    def forward(self, x: Tensor, emb: Tensor, width: float) -> Tensor:
        n, c, hgt, wid = x.shape
        heads = self.heads_at(width)
        qkv = self.qkv(self.norm(x, width), width).reshape(n, 3 * heads, c // heads, hgt * wid)
        q, k, v = qkv.transpose(-1, -2).chunk(3, dim=1)  # each [N, heads, HW, head_dim]
        h = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(h.transpose(-1, -2).reshape(n, c, hgt, wid), width)


class Downsample(nn.Module):
    """Stride-2 3x3 conv."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = SlimConv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor, width: float) -> Tensor:
        return self.conv(x, width)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling then a 3x3 conv."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = SlimConv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor, width: float) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"), width)


class Block(nn.ModuleList):
    """Runs its layers in order, passing the embedding and the width to each (cf. ADM's
    TimestepEmbedSequential)."""

    def forward(self, x: Tensor, emb: Tensor, width: float) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb, width)
        return x


def _with_attention(cfg: UNetConfig, resolution: int, ch: int, first: nn.Module) -> list[nn.Module]:
    return [first, AttentionBlock(ch, cfg)] if resolution in cfg.attention_resolutions else [first]


def _build_down(cfg: UNetConfig) -> tuple[nn.ModuleList, list[int]]:
    """Encoder blocks and the channels of every skip tensor they leave (head output first)."""
    ch, emb = cfg.model_channels, cfg.time_embed_dim
    blocks, skips = nn.ModuleList(), [ch]
    for level, mult in enumerate(cfg.channel_mult):
        out = cfg.model_channels * mult
        for _ in range(cfg.num_res_blocks):
            blocks.append(
                Block(_with_attention(cfg, cfg.resolutions[level], out, ResBlock(ch, out, emb, cfg)))
            )
            ch = out
            skips.append(ch)
        if level < len(cfg.channel_mult) - 1:
            blocks.append(Block([Downsample(ch)]))
            skips.append(ch)
    return blocks, skips


def _build_middle(cfg: UNetConfig) -> Block:
    ch, emb = cfg.model_channels * cfg.channel_mult[-1], cfg.time_embed_dim
    return Block([ResBlock(ch, ch, emb, cfg), AttentionBlock(ch, cfg), ResBlock(ch, ch, emb, cfg)])


def _build_up(cfg: UNetConfig, skips: list[int]) -> nn.ModuleList:
    """Decoder blocks; each reads cat(h, skip) with the skip popped in reverse order."""
    skips, emb = list(skips), cfg.time_embed_dim
    ch, blocks = cfg.model_channels * cfg.channel_mult[-1], nn.ModuleList()
    for level in reversed(range(len(cfg.channel_mult))):
        out = cfg.model_channels * cfg.channel_mult[level]
        for i in range(cfg.num_res_blocks + 1):
            first = ResBlock((ch, skips.pop()), out, emb, cfg)
            layers = _with_attention(cfg, cfg.resolutions[level], out, first)
            ch = out
            if level > 0 and i == cfg.num_res_blocks:
                layers.append(Upsample(ch))
            blocks.append(Block(layers))
    assert not skips, "every skip tensor is consumed exactly once"
    return blocks


def _init_weights(model: nn.Module) -> None:
    """DDPM initialisation: Xavier-uniform weights, zero biases, residual branch outputs near zero."""
    for m in model.modules():
        if isinstance(m, (SlimConv2d, SlimLinear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in model.modules():
        last = {ResBlock: "conv2", AttentionBlock: "proj"}.get(type(m))
        if last is not None:
            nn.init.xavier_uniform_(getattr(m, last).weight, gain=1e-5)


class SlimmableUNet(nn.Module):
    """Epsilon-prediction U-Net whose sub-networks at ``config.widths`` share one set of weights."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        mc, emb = config.model_channels, config.time_embed_dim
        self.time_embed = TimeEmbedding(mc, emb)
        self.label_embed = SlimEmbedding(config.label_rows, emb) if config.num_classes else None
        self.head = SlimConv2d(config.in_channels, mc, 3, padding=1, slim_in=False)
        self.down, skips = _build_down(config)
        self.middle = _build_middle(config)
        self.up = _build_up(config, skips)
        self.out_norm = SlimGroupNorm(config.num_groups, mc)
        self.out_conv = SlimConv2d(mc, config.out_channels, 3, padding=1, slim_out=False)
        _init_weights(self)
        nn.init.xavier_uniform_(self.out_conv.weight, gain=1e-5)
        self.check_widths(config.widths)

    def check_widths(self, widths: tuple[float, ...]) -> None:
        """Raise ConfigError naming the first layer and width that cannot run."""
        for width in widths:
            for name, module in self.named_modules():
                if not isinstance(module, SlimModule):
                    continue
                try:
                    module.check_width(width)
                except ConfigError as exc:
                    raise ConfigError(
                        f"width {format_width(width)} is invalid for layer '{name}': {exc}"
                    ) from None

    def forward(self, x: Tensor, t: Tensor, width: float = 1.0, y: Tensor | None = None) -> Tensor:
        """Predict the noise in ``x`` at timestep ``t`` with the width-``width`` sub-network.

        :param x: an [N x C x H x W] Tensor of noisy images.
        :param t: an [N] Tensor of (possibly fractional) DDPM timesteps in [0, T-1], or a scalar.
        :param width: one of ``config.widths`` (ConfigError listing them otherwise).
        :param y: an [N] long Tensor of labels in ``[0, num_classes)`` (or the null label
            ``num_classes`` when ``config.null_label``); required iff the model is class-conditional.
        :return: an [N x out_channels x H x W] Tensor.
        """
        width = match_width(width, self.config.widths)
        self.check_labels(y)
        return self.forward_at(x, torch.as_tensor(t, device=x.device), width, y)

    def forward_at(self, x: Tensor, t: Tensor, width: float, y: Tensor | None = None) -> Tensor:
        """:meth:`forward` without its argument checks: ``width`` one of ``config.widths``, ``t`` a
        tensor on ``x``'s device, labels iff the model is class-conditional.

        Shared with the static per-width copies of :mod:`ddsm_core.static`, whose traced graphs must
        not hold the label check's data-dependent indexing (nor ``t`` as a constant).
        """
        emb = self.time_embed(t.expand(x.shape[0]), width)
        if self.label_embed is not None:
            emb = emb + self.label_embed(y, width)
        h = self.head(x, width)
        skips = [h]
        for block in self.down:
            h = block(h, emb, width)
            skips.append(h)
        h = self.middle(h, emb, width)
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, width)
        return self.out_conv(F.silu(self.out_norm(h, width)), width)

    def check_labels(self, y: Tensor | None) -> None:
        """Raise ConfigError unless ``y`` suits the model: [N] long labels in range iff conditional."""
        if self.label_embed is None:
            if y is not None:
                raise ConfigError("labels y given to an unconditional model (config.num_classes is None)")
            return
        if y is None:
            raise ConfigError(f"class-conditional model ({self.config.num_classes} classes) needs labels y")
        rows = self.config.label_rows
        if y.ndim != 1 or y.dtype != torch.long:
            raise ConfigError(f"labels y must be an [N] long tensor, got {tuple(y.shape)} {y.dtype}")
        # An out-of-range label is an IndexError on the CPU and a device-side assert on CUDA: check first.
        if y.device.type != "meta":
            bad = y[(y < 0) | (y >= rows)]
            if len(bad):
                null = f" ({rows - 1} is the null label)" if self.config.null_label else ""
                raise ConfigError(f"labels must be in 0..{rows - 1}{null}, got {bad.unique()[:5].tolist()}")
