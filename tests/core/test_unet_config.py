"""UNetConfig presets, validation and round trip (torch-free)."""

from __future__ import annotations

import json

import pytest

from ddsm_core.config import PRESETS, UNetConfig
from ddsm_core.errors import ConfigError


def test_cifar10_preset_is_ddpm_cifar10() -> None:
    cfg = UNetConfig.cifar10()
    assert (cfg.image_size, cfg.in_channels, cfg.model_channels) == (32, 3, 128)
    assert cfg.channel_mult == (1, 2, 2, 2)
    assert (cfg.num_res_blocks, cfg.attention_resolutions, cfg.dropout, cfg.num_groups) == (2, (16,), 0.1, 16)


def test_digits_preset_is_native_8x8_grayscale() -> None:
    cfg = UNetConfig.digits()
    assert (cfg.image_size, cfg.in_channels, cfg.resolutions) == (8, 1, (8, 4))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name: str) -> None:
    cfg = UNetConfig.from_preset(name)
    assert UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_unknown_preset_lists_allowed() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'cifar100'; allowed: celeba64, cifar10, digits"):
        UNetConfig.from_preset("cifar100")
    with pytest.raises(ValueError):  # ConfigError is a ValueError too
        UNetConfig.from_preset("")


def test_from_dict_rejects_unknown_fields() -> None:
    with pytest.raises(ConfigError, match="unknown UNetConfig fields"):
        UNetConfig.from_dict({**UNetConfig.digits().to_dict(), "colour": "red"})


def test_preset_overrides_and_class_conditioning() -> None:
    cfg = UNetConfig.digits(num_classes=10, widths=(0.5, 1.0))
    assert cfg.num_classes == 10 and cfg.widths == (0.5, 1.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"attention_resolutions": (3,)}, "allowed: 8, 4"),
        ({"image_size": 6, "channel_mult": (1, 2, 2)}, "not divisible"),
        ({"model_channels": 0}, "model_channels"),
        ({"dropout": 1.0}, "dropout"),
        ({"widths": (0.5, 1.5)}, "out of range"),
    ],
)
def test_invalid_config_raises_config_error(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        UNetConfig.digits(**overrides)
