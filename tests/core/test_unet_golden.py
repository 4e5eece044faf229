"""Golden tests: the supernet against plain, non-slimmable U-Nets holding the same weights.

``PlainUNet`` below is written independently of ddsm_core (nn.Conv2d / nn.Linear / nn.GroupNorm /
nn.Embedding, einsum attention), with the same module names so state dicts line up. Its layers that
read a concatenation (the up-blocks' first GroupNorm, conv and shortcut) or write one (fused q, k, v)
are tagged with their part sizes; ``narrow_state_dict`` uses the tags to cut the supernet's weights
for a standalone narrow network by plain indexing, or, with ``naive_concat=True``, the wrong way
(first channels of the concatenation: the DDSM authors' bug), which must NOT match.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddsm_core.config import UNetConfig
from ddsm_core.unet import SlimmableUNet

# ---- an independent, plain U-Net -----------------------------------------------------------------


def _tag(
    module: nn.Module, *, concat: tuple[int, ...] | None = None, out_parts: tuple[int, ...] | None = None
):
    """concat: part sizes of a concatenated input; out_parts: part sizes of a fused output."""
    module.golden_concat, module.golden_out_parts = concat, out_parts
    return module


class PlainRes(nn.Module):
    def __init__(self, parts: tuple[int, ...], out: int, emb: int, groups: int) -> None:
        super().__init__()
        cin = sum(parts)
        self.norm1 = _tag(nn.GroupNorm(groups, cin), concat=parts)
        self.conv1 = _tag(nn.Conv2d(cin, out, 3, padding=1), concat=parts)
        self.emb_proj = nn.Linear(emb, out)
        self.norm2 = nn.GroupNorm(groups, out)
        self.conv2 = nn.Conv2d(out, out, 3, padding=1)
        self.shortcut = _tag(nn.Conv2d(cin, out, 1), concat=parts) if cin != out else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.shortcut is None else self.shortcut(x))


class PlainAttn(nn.Module):
    def __init__(self, ch: int, heads: int, groups: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = _tag(nn.Conv2d(ch, 3 * ch, 1), out_parts=(ch, ch, ch))
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        b, c, hgt, wid = x.shape
        d = c // self.heads
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, d, hgt * wid).unbind(1)
        attn = torch.softmax(torch.einsum("bhdi,bhdj->bhij", q, k) / math.sqrt(d), dim=-1)
        out = torch.einsum("bhij,bhdj->bhdi", attn, v).reshape(b, c, hgt, wid)
        return x + self.proj(out)


class PlainDown(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.conv(x)


class PlainUp(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class PlainTime(nn.Module):
    def __init__(self, sin_dim: int, emb: int) -> None:
        super().__init__()
        self.sin_dim = sin_dim
        self.lin1, self.lin2 = nn.Linear(sin_dim, emb), nn.Linear(emb, emb)

    def forward(self, t: Tensor) -> Tensor:
        half = self.sin_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        sincos = torch.cat([torch.cos(args), torch.sin(args)], dim=1).to(self.lin1.weight.dtype)
        return self.lin2(F.silu(self.lin1(sincos)))


class PlainUNet(nn.Module):
    """A U-Net whose every channel count is given explicitly (full or narrow: it does not know)."""

    def __init__(self, cfg: UNetConfig, ch: int, emb: int, groups: int, heads_of) -> None:
        super().__init__()
        mults, res = cfg.channel_mult, cfg.resolutions
        self.time_embed = PlainTime(cfg.model_channels, emb)
        self.label_embed = nn.Embedding(cfg.num_classes, emb) if cfg.num_classes else None
        self.head = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.down, skips, cur = nn.ModuleList(), [ch], ch
        for i, m in enumerate(mults):
            for _ in range(cfg.num_res_blocks):
                blk = [PlainRes((cur,), ch * m, emb, groups)]
                cur = ch * m
                if res[i] in cfg.attention_resolutions:
                    blk.append(PlainAttn(cur, heads_of(cur), groups))
                self.down.append(nn.ModuleList(blk))
                skips.append(cur)
            if i < len(mults) - 1:
                self.down.append(nn.ModuleList([PlainDown(cur)]))
                skips.append(cur)
        self.middle = nn.ModuleList(
            [
                PlainRes((cur,), cur, emb, groups),
                PlainAttn(cur, heads_of(cur), groups),
                PlainRes((cur,), cur, emb, groups),
            ]
        )
        self.up = nn.ModuleList()
        for i in reversed(range(len(mults))):
            for j in range(cfg.num_res_blocks + 1):
                blk = [PlainRes((cur, skips.pop()), ch * mults[i], emb, groups)]
                cur = ch * mults[i]
                if res[i] in cfg.attention_resolutions:
                    blk.append(PlainAttn(cur, heads_of(cur), groups))
                if i > 0 and j == cfg.num_res_blocks:
                    blk.append(PlainUp(cur))
                self.up.append(nn.ModuleList(blk))
        self.out_norm = nn.GroupNorm(groups, ch)
        self.out_conv = nn.Conv2d(ch, cfg.out_channels, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.time_embed(t)
        if self.label_embed is not None:
            emb = emb + self.label_embed(y)
        h = self.head(x)
        hs = [h]
        for blk in self.down:
            for layer in blk:
                h = layer(h, emb)
            hs.append(h)
        for layer in self.middle:
            h = layer(h, emb)
        for blk in self.up:
            h = torch.cat([h, hs.pop()], dim=1)
            for layer in blk:
                h = layer(h, emb)
        return self.out_conv(F.silu(self.out_norm(h)))


def plain_unet(cfg: UNetConfig, k: int) -> PlainUNet:
    """The standalone network of width k/8: every slimmable channel count times k/8."""
    assert cfg.model_channels % 8 == 0

    def heads_of(c: int) -> int:
        return c // cfg.num_head_channels if cfg.num_head_channels > 0 else cfg.num_heads

    # GroupNorm keeps its group size, so 16 groups at full width are 16 k/8 groups at k/8.
    return PlainUNet(
        cfg, cfg.model_channels * k // 8, cfg.time_embed_dim * k // 8, cfg.num_groups * k // 8, heads_of
    )


def _take(t: Tensor, dim: int, parts: tuple[int, ...], k: int) -> Tensor:
    index, offset = [], 0
    for p in parts:
        index += range(offset, offset + p * k // 8)
        offset += p
    return t.index_select(dim, torch.tensor(index))


def narrow_state_dict(full: PlainUNet, sd: dict[str, Tensor], k: int, naive_concat: bool = False) -> dict:
    """Cut a full-width state dict to width k/8, part by part (or naively, for the negative test)."""
    out = {}
    for name, module in full.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            t = sd[f"{name}.{pname}"]
            for dim, parts in _parts_by_dim(module, t, naive_concat).items():
                if not _is_fixed(name, dim):
                    t = _take(t, dim, parts or (t.shape[dim],), k)
            out[f"{name}.{pname}"] = t
    return out


def _parts_by_dim(module: nn.Module, t: Tensor, naive_concat: bool) -> dict[int, tuple[int, ...] | None]:
    """Which dims of a parameter slim, and their part sizes (None: one part)."""
    concat = None if naive_concat else getattr(module, "golden_concat", None)
    out_parts = getattr(module, "golden_out_parts", None)
    if isinstance(module, nn.Embedding):
        return {1: None}
    if isinstance(module, nn.GroupNorm):
        return {0: concat}
    return {0: out_parts} if t.dim() == 1 else {0: out_parts, 1: concat}


def _is_fixed(name: str, dim: int) -> bool:
    """Image channels (head input, output conv output) and the sinusoid input never slim."""
    return (
        (name == "head" and dim == 1)
        or (name == "out_conv" and dim == 0)
        or (name == "time_embed.lin1" and dim == 1)
    )


# ---- fixtures ------------------------------------------------------------------------------------


def small_config(**overrides) -> UNetConfig:
    base = dict(
        image_size=16, in_channels=3, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
        attention_resolutions=(8,), dropout=0.1, num_heads=2, num_classes=3,
    )  # fmt: skip
    return UNetConfig(**{**base, **overrides})


def randomized_supernet(cfg: UNetConfig) -> SlimmableUNet:
    """Random weights everywhere (the default init zeroes some branches, which would hide bugs)."""
    model = SlimmableUNet(cfg).double().eval()
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            scale = 1.0 / math.sqrt(fan_in) if p.dim() > 1 else 0.3
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale
            p.copy_(noise + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    return model


def inputs(cfg: UNetConfig, n: int = 2) -> tuple[Tensor, Tensor, Tensor | None]:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(n, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen, dtype=torch.float64)
    t = torch.tensor([3.0, 517.25, 999.0, 0.0][:n])
    y = None if cfg.num_classes is None else torch.arange(n) % cfg.num_classes
    return x, t, y


# ---- the golden tests ----------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, {"num_classes": None}], ids=["conditional", "unconditional"])
def test_full_width_equals_plain_unet_with_same_weights(overrides: dict) -> None:
    cfg = small_config(**overrides)
    supernet = randomized_supernet(cfg)
    plain = plain_unet(cfg, 8).double().eval()
    plain.load_state_dict(supernet.state_dict(), strict=True)
    x, t, y = inputs(cfg)
    with torch.no_grad():
        torch.testing.assert_close(supernet(x, t, 1.0, y), plain(x, t, y), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k", [2, 3, 4, 5, 6, 7])
def test_width_k_equals_standalone_narrow_unet_from_sliced_weights(k: int) -> None:
    cfg = small_config()
    supernet = randomized_supernet(cfg)
    full = plain_unet(cfg, 8)
    narrow = plain_unet(cfg, k).double().eval()
    narrow.load_state_dict(narrow_state_dict(full, supernet.state_dict(), k), strict=True)
    x, t, y = inputs(cfg)
    with torch.no_grad():
        torch.testing.assert_close(supernet(x, t, k / 8, y), narrow(x, t, y), rtol=1e-10, atol=1e-10)


def test_width_k_with_autograd_on_equals_standalone_narrow_unet() -> None:
    """With autograd on, layers slice views instead of using their sampling-time weight copies."""
    cfg = small_config()
    supernet = randomized_supernet(cfg)
    narrow = plain_unet(cfg, 3).double().eval()
    narrow.load_state_dict(narrow_state_dict(plain_unet(cfg, 8), supernet.state_dict(), 3), strict=True)
    x, t, y = inputs(cfg)
    torch.testing.assert_close(supernet(x, t, 3 / 8, y), narrow(x, t, y), rtol=1e-10, atol=1e-10)


def test_slicing_the_concatenation_naively_gives_a_different_network() -> None:
    """The check that the golden test can catch the skip-concatenation bug at all."""
    cfg = small_config()
    supernet = randomized_supernet(cfg)
    full = plain_unet(cfg, 8)
    wrong = plain_unet(cfg, 4).double().eval()
    wrong.load_state_dict(narrow_state_dict(full, supernet.state_dict(), 4, naive_concat=True), strict=True)
    x, t, y = inputs(cfg)
    with torch.no_grad():
        ours, theirs = supernet(x, t, 0.5, y), wrong(x, t, y)
    assert (ours - theirs).abs().max() > 1e-2 * ours.abs().max()


def test_head_size_fixed_variant_matches_narrow_unet() -> None:
    """num_head_channels > 0: the head count scales with the width instead of the head size."""
    cfg = small_config(num_heads=1, num_head_channels=4)
    supernet = randomized_supernet(cfg)
    narrow = plain_unet(cfg, 2).double().eval()
    narrow.load_state_dict(narrow_state_dict(plain_unet(cfg, 8), supernet.state_dict(), 2), strict=True)
    x, t, y = inputs(cfg)
    assert supernet.middle[1].heads_at(0.25) == 4 and supernet.middle[1].heads_at(1.0) == 16
    with torch.no_grad():
        torch.testing.assert_close(supernet(x, t, 0.25, y), narrow(x, t, y), rtol=1e-10, atol=1e-10)
