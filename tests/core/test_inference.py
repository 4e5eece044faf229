"""Fast inference paths give the same numbers: packed per-width weights, channels_last, and the
hardware-friendly channel multiple (its channel counts, its GroupNorm check, its GFLOPs)."""

from __future__ import annotations

import pytest
import torch
from test_unet_golden import inputs, randomized_supernet, small_config

from ddsm_core.config import UNetConfig
from ddsm_core.errors import ConfigError
from ddsm_core.inference import prepare_for_inference
from ddsm_core.slimmable import SlimConv2d, SlimLinear
from ddsm_core.unet import SlimmableUNet


def _float_copy(model: SlimmableUNet) -> SlimmableUNet:
    clone = SlimmableUNet(model.config).eval()
    clone.load_state_dict(model.state_dict())
    return clone


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_prepared_model_matches_the_unpacked_path_at_every_width(channels_last: bool) -> None:
    """Unpacked: autograd on, every layer slices views of its parameters (the training path)."""
    cfg = small_config()
    reference = randomized_supernet(cfg).float()
    fast = prepare_for_inference(_float_copy(reference), channels_last=channels_last)
    x, t, y = inputs(cfg)
    x = x.float()
    for width in cfg.widths:
        expected = reference(x, t, width, y).detach()
        with torch.inference_mode():
            got = fast(x, t, width, y)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_prepare_packs_every_width_up_front_in_the_parameters_memory_format() -> None:
    cfg = small_config()
    model = prepare_for_inference(SlimmableUNet(cfg), channels_last=True)
    conv = model.down[0][0].conv1
    packed = conv.__dict__["_packed"][1]
    assert set(packed) == {w for w in cfg.widths if w < 1.0}
    weight, _ = packed[0.25]
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert weight.data_ptr() != conv.weight.data_ptr()  # a copy, not a strided view


def test_aligned_widths_keep_multiples_of_16_channels_in_every_layer_of_the_real_model() -> None:
    digits = UNetConfig.digits().hardware_friendly(16)
    assert digits.widths == (2 / 8, 4 / 8, 6 / 8, 8 / 8)
    assert UNetConfig.cifar10().aligned_widths(16) == UNetConfig.cifar10().widths
    assert UNetConfig.cifar10().aligned_widths(32) == (2 / 8, 4 / 8, 6 / 8, 8 / 8)
    with torch.device("meta"):
        model = SlimmableUNet(digits)  # builds: GroupNorm groups stay whole at every aligned width
    layers = [m for m in model.modules() if isinstance(m, (SlimConv2d, SlimLinear))]
    for width in digits.widths:
        for layer in layers:
            c_in, c_out = layer.channels_at(width)
            assert not layer.slim_in or c_in % 16 == 0, (width, layer)
            assert not layer.slim_out or c_out % 16 == 0, (width, layer)
    # and the widths it drops are the ones that break that
    conv = model.down[0][0].conv1
    assert conv.channels_at(3 / 8) == (24, 24)


def test_no_aligned_width_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no width"):
        UNetConfig.digits(widths=(3 / 8, 5 / 8)).hardware_friendly(16)
    with pytest.raises(ConfigError, match=">= 1"):
        UNetConfig.digits().aligned_widths(0)
