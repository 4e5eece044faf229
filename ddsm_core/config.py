"""Typed, frozen configuration of the slimmable U-Net, with named presets.

Torch-free so that manifests can be read and validated without the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ddsm_core.errors import ConfigError, choices_message
from ddsm_core.widths import DEFAULT_WIDTHS, channels, validate_widths


@dataclass(frozen=True)
class UNetConfig:
    """Shape of a DDPM/ADM-style U-Net supernet.

    :param image_size: H = W of the input in pixels.
    :param in_channels: image channels (3 for RGB, 1 for digits).
    :param model_channels: channels of the first level at full width.
    :param channel_mult: per-level multiplier of ``model_channels``; one level per entry, each
        but the last followed by a 2x downsampling.
    :param num_res_blocks: residual blocks per level on the way down (one more on the way up).
    :param attention_resolutions: resolutions in pixels (e.g. ``(16,)``) whose blocks get
        self-attention; the middle block always has one.
    :param dropout: dropout inside residual blocks.
    :param num_heads: attention heads, the same at every width (head size scales with width).
    :param num_head_channels: if > 0, a fixed head size instead (the head count scales with width).
    :param num_groups: GroupNorm groups at full width; see ``slimmable.SlimGroupNorm`` for widths.
    :param widths: the width set the supernet offers, fractions of the full width.
    :param num_classes: class-conditional when set (a label embedding is added to the time embedding).
    :param null_label: one more label embedding row, the "no class" label of classifier-free guidance
        (index ``num_classes``; trained by ``TrainConfig.label_dropout``). Needs ``num_classes``.
    :param learn_sigma: output 2 x in_channels (epsilon and a variance term) when True.
    """

    image_size: int = 32
    in_channels: int = 3
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    num_heads: int = 1
    num_head_channels: int = -1
    num_groups: int = 16
    widths: tuple[float, ...] = field(default=DEFAULT_WIDTHS)
    num_classes: int | None = None
    null_label: bool = False
    learn_sigma: bool = False

    def __post_init__(self) -> None:
        # Normalise sequences (JSON gives lists) before the frozen dataclass is hashed or compared.
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        object.__setattr__(self, "widths", validate_widths(self.widths))
        self._check()

    def _check(self) -> None:
        positive = {
            "image_size": self.image_size,
            "in_channels": self.in_channels,
            "model_channels": self.model_channels,
            "num_res_blocks": self.num_res_blocks,
            "num_heads": self.num_heads,
            "num_groups": self.num_groups,
        }
        for name, value in positive.items():
            if int(value) < 1:
                raise ConfigError(f"UNetConfig.{name} must be >= 1, got {value!r}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ConfigError(f"UNetConfig.channel_mult must be positive integers, got {self.channel_mult}")
        if self.image_size % 2 ** (len(self.channel_mult) - 1):
            raise ConfigError(
                f"image_size {self.image_size} is not divisible by 2^{len(self.channel_mult) - 1} "
                f"(one downsampling per level after the first)"
            )
        unreachable = set(self.attention_resolutions) - set(self.resolutions)
        if unreachable:
            raise ConfigError(
                f"attention_resolutions {sorted(unreachable)} are not level resolutions; "
                f"allowed: {', '.join(map(str, self.resolutions))}"
            )
        for level, mult in enumerate(self.channel_mult):
            if self.model_channels * mult % self.num_groups:
                raise ConfigError(
                    f"level {level} has {self.model_channels * mult} channels, not divisible by "
                    f"num_groups {self.num_groups} (GroupNorm)"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1 or None, got {self.num_classes}")
        if self.null_label and self.num_classes is None:
            raise ConfigError("null_label needs a class-conditional model (set num_classes)")

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Pixel resolution of each level."""
        return tuple(self.image_size // 2**i for i in range(len(self.channel_mult)))

    @property
    def null_class(self) -> int | None:
        """The label of the null ("no class") embedding, or None when the model has none."""
        return self.num_classes if self.null_label else None

    @property
    def label_rows(self) -> int:
        """Rows of the label embedding: the classes, plus the null label when there is one."""
        return (self.num_classes or 0) + int(self.null_label)

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def time_embed_dim(self) -> int:
        """Width of the timestep (and label) embedding at full width: 4 x model_channels (DDPM)."""
        return 4 * self.model_channels

    def slim_channel_sizes(self) -> tuple[int, ...]:
        """Full channel counts of every slimmable tensor: each level's channels and the embedding's."""
        return tuple(sorted({self.model_channels * m for m in self.channel_mult} | {self.time_embed_dim}))

    def aligned_widths(self, multiple: int = 16) -> tuple[float, ...]:
        """The widths of the set at which every slimmable layer keeps a multiple of ``multiple`` channels.

        Convolution kernels work on vectors of 16 float32 (AVX-512) or tiles of 8-16 channels (GPU
        tensor cores): a 40-channel layer costs about what a 48-channel one costs
        (bench/width_latency.md), so off-multiple widths pay for FLOPs they do not save. E.g. digits
        (64 and 128 channels) at 16: 2/8, 4/8, 6/8, 8/8; cifar10 (128, 256): all seven widths.
        """
        if multiple < 1:
            raise ConfigError(f"channel multiple must be >= 1, got {multiple}")
        sizes = self.slim_channel_sizes()

        def aligned(c: int, w: float) -> bool:
            return channels(c, w) % multiple == 0 or channels(c, w) == c

        return tuple(w for w in self.widths if all(aligned(c, w) for c in sizes))

    def hardware_friendly(self, multiple: int = 16) -> UNetConfig:
        """This config with only its :meth:`aligned_widths` (the hardware-friendly width set).

        Rounding each layer's channels up instead cannot work in this U-Net: its up-blocks normalise
        ``cat(h, skip)`` in GroupNorm groups that span both parts (digits: 128 + 64 channels in
        groups of 12), and per-part rounding breaks the groups at every width where it changes a
        count (the model's build-time check rejects them).
        """
        aligned = self.aligned_widths(multiple)
        if not aligned:
            raise ConfigError(f"no width of {self.widths} keeps multiples of {multiple} channels everywhere")
        return dataclasses.replace(self, widths=aligned)

    # ---- presets -------------------------------------------------------------------------------

    @classmethod
    def cifar10(cls, **overrides: Any) -> UNetConfig:
        """DDPM's CIFAR-10 network (Ho et al. 2020; the paper's supernet): 35.7 M parameters."""
        return cls(**{**_CIFAR10, **overrides})

    @classmethod
    def celeba64(cls, **overrides: Any) -> UNetConfig:
        """64x64 faces: ch 128, multipliers (1,2,2,2,4), 2 res blocks, attention at 32x32: 78.7 M parameters.

        DDIM's CelebA-64 network with attention on the second level (the authors' code names
        attention levels by index, and their CIFAR-10 "level 1" is 32x32 here). This choice is the
        one whose cost matches the paper's CelebA-HQ-64 baseline: 49.78 conv/linear GFLOPs per call
        against 49.88 published (attention at 16x16 would give 47.77).
        """
        return cls(**{**_CELEBA64, **overrides})

    @classmethod
    def digits(cls, **overrides: Any) -> UNetConfig:
        """scikit-learn's 8x8 handwritten digits at their native 8x8, 1 channel: CPU-sized.

        Two levels (8x8 with 64 channels, 4x4 with 128), attention at 4x4. GroupNorm keeps 16
        groups at full width, i.e. 4 channels per group, so every width k/8 splits evenly.
        """
        return cls(**{**_DIGITS, **overrides})

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> UNetConfig:
        """A preset by name; unknown names raise ConfigError listing the allowed ones."""
        try:
            factory = PRESETS[name]
        except KeyError:
            raise ConfigError(choices_message("preset", name, sorted(PRESETS))) from None
        return factory(**overrides)

    # ---- serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UNetConfig:
        """Inverse of ``to_dict``; unknown keys raise ConfigError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown UNetConfig fields {unknown}; allowed: {', '.join(sorted(known))}")
        return cls(**dict(data))


_CIFAR10: dict[str, Any] = {
    "image_size": 32,
    "in_channels": 3,
    "model_channels": 128,
    "channel_mult": (1, 2, 2, 2),
    "num_res_blocks": 2,
    "attention_resolutions": (16,),
    "dropout": 0.1,
}
_CELEBA64: dict[str, Any] = {
    "image_size": 64,
    "in_channels": 3,
    "model_channels": 128,
    "channel_mult": (1, 2, 2, 2, 4),
    "num_res_blocks": 2,
    "attention_resolutions": (32,),
    "dropout": 0.1,
}
_DIGITS: dict[str, Any] = {
    "image_size": 8,
    "in_channels": 1,
    "model_channels": 64,
    "channel_mult": (1, 2),
    "num_res_blocks": 2,
    "attention_resolutions": (4,),
    "dropout": 0.1,
}

# The benchmark digits supernet (bench/train_digits_bench.md): half the demo's channels (1.0 M
# parameters), no dropout; it sees far more samples per CPU-minute than the demo's 4 M-parameter one.
_DIGITS_BENCH: dict[str, Any] = {**_DIGITS, "model_channels": 32, "dropout": 0.0}

PRESETS: dict[str, Callable[..., UNetConfig]] = {
    "cifar10": UNetConfig.cifar10,
    "celeba64": UNetConfig.celeba64,
    "digits": UNetConfig.digits,
    "digits-bench": lambda **overrides: UNetConfig(**{**_DIGITS_BENCH, **overrides}),
}
