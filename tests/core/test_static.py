"""Static per-width copies (``ddsm_core.static.materialize``) and the TorchScript path built on them
(``ddsm_core.inference.ScriptedWidths``) compute what the supernet computes at that width."""

from __future__ import annotations

import pytest
import torch
from test_unet_golden import inputs, randomized_supernet, small_config
from torch import nn

from ddsm_core.config import UNetConfig
from ddsm_core.errors import ConfigError
from ddsm_core.inference import ScriptedWidths, prepare_for_inference
from ddsm_core.sampling import model_denoiser, sample
from ddsm_core.schedules import NoiseSchedule
from ddsm_core.slimmable import SlimConv2d, SlimEmbedding, SlimGroupNorm, SlimLinear
from ddsm_core.static import materialize
from ddsm_core.strategy import Strategy

SLIM_LAYERS = (SlimConv2d, SlimLinear, SlimGroupNorm, SlimEmbedding)
CONFIGS = {
    "tiny-conditional": small_config(),
    "tiny-unconditional": small_config(num_classes=None),
    "digits": UNetConfig.digits(),
    "digits-conditional-null": UNetConfig.digits(num_classes=10, null_label=True),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_static_copy_equals_the_supernet_at_every_width(name: str) -> None:
    cfg = CONFIGS[name]
    supernet = randomized_supernet(cfg)  # float64, random weights everywhere
    x, t, y = inputs(cfg)
    for width in cfg.widths:
        static = materialize(supernet, width)
        with torch.no_grad():
            expected = supernet(x, t, width, y)
            torch.testing.assert_close(static(x, t, y), expected, rtol=1e-10, atol=1e-10)


def test_static_copy_holds_plain_layers_of_the_kept_channels_and_its_own_weights() -> None:
    cfg = small_config()
    supernet = prepare_for_inference(randomized_supernet(cfg).float())
    static = materialize(supernet, 3 / 8)
    assert not any(isinstance(m, SLIM_LAYERS) for m in static.modules())
    conv = static.net.down[0][0].conv1
    assert type(conv).__mro__[1] is nn.Conv2d and conv.weight.shape == (12, 12, 3, 3)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)  # the prepared layout kept
    norm = static.net.up[0][0].norm1  # reads cat(h, skip): 3/8 of each 64-channel part, groups of 8
    assert isinstance(norm, nn.GroupNorm) and (norm.num_channels, norm.num_groups) == (48, 6)
    assert static.net.label_embed.weight.shape == (3, 48)
    assert not any(p.requires_grad for p in static.parameters())
    x, t, y = inputs(cfg)
    x = x.float()
    with torch.no_grad():
        before = static(x, t, y)
        supernet.down[0][0].conv1.weight.add_(1.0)  # a copy: later supernet changes do not reach it
        torch.testing.assert_close(static(x, t, y), before, rtol=0, atol=0)
        assert not torch.allclose(supernet(x, t, 3 / 8, y), before)


def test_materialize_refuses_a_width_outside_the_set() -> None:
    with pytest.raises(ConfigError, match="unknown width"):
        materialize(randomized_supernet(small_config()), 0.3)


def _one_level_config(**overrides) -> UNetConfig:
    """Few layers, so tracing every width stays quick; attention, skips and labels are still there."""
    return small_config(image_size=8, channel_mult=(1, 2), attention_resolutions=(4,), **overrides)


def test_scripted_widths_match_eager_at_every_width_on_new_inputs() -> None:
    """The frozen graphs read x, t and y at each call (none is baked in as a trace constant)."""
    cfg = _one_level_config()
    model = prepare_for_inference(randomized_supernet(cfg).float())
    scripted = ScriptedWidths(model)
    x, t, y = inputs(cfg)
    x = x.float()
    with torch.inference_mode():  # as the samplers call it
        for width in cfg.widths:
            for xi, ti, yi in ((x, t, y), (-0.5 * x, t.flip(0) + 0.5, y.flip(0))):
                torch.testing.assert_close(scripted(xi, ti, width, yi), model(xi, ti, width, yi),
                                           rtol=1e-4, atol=1e-5)  # fmt: skip
    assert len(scripted._graphs) == len(cfg.widths)  # one graph per width for one input shape
    with torch.inference_mode():
        scripted(x[:1], t[:1], 0.5, y[:1])
    assert len(scripted._graphs) == len(cfg.widths) + 1  # another batch shape: another graph


def test_scripted_widths_keep_the_supernet_argument_checks() -> None:
    cfg = small_config()
    scripted = ScriptedWidths(prepare_for_inference(randomized_supernet(cfg).float()))
    x, t, y = inputs(cfg)
    with pytest.raises(ConfigError, match="unknown width"):
        scripted(x.float(), t, 0.3, y)
    with pytest.raises(ConfigError, match="needs labels"):
        scripted(x.float(), t, 0.5)
    with pytest.raises(ConfigError, match="labels must be in"):
        scripted(x.float(), t, 0.5, torch.tensor([0, 7]))


def test_sampling_through_scripted_widths_gives_the_eager_images() -> None:
    cfg = _one_level_config(num_classes=None)
    model = prepare_for_inference(randomized_supernet(cfg).float())
    schedule = NoiseSchedule.linear()
    strategy = Strategy("ddim", 3, cfg.widths, (0, 6, 2))  # 2/8, 8/8, 4/8
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    with torch.inference_mode():
        images = [
            sample(model_denoiser(net, schedule), strategy, shape, [3, 4, 5], clip=False)
            for net in (model, ScriptedWidths(model))
        ]
    torch.testing.assert_close(images[1], images[0], rtol=1e-4, atol=1e-4)
