"""SlimmableUNet behaviour: widths, validation, conditioning, determinism."""

from __future__ import annotations

import pytest
import torch

from ddsm_core.config import UNetConfig
from ddsm_core.errors import ConfigError
from ddsm_core.unet import SlimmableUNet, timestep_embedding


@pytest.fixture(scope="module")
def digits_model() -> SlimmableUNet:
    return SlimmableUNet(UNetConfig.digits()).eval()


def _x(n: int = 3, c: int = 1, s: int = 8) -> torch.Tensor:
    return torch.randn(n, c, s, s, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("width", UNetConfig.digits().widths)
def test_every_width_predicts_an_image_shaped_epsilon(digits_model: SlimmableUNet, width: float) -> None:
    x = _x()
    with torch.no_grad():
        out = digits_model(x, torch.tensor([0.0, 10.5, 999.0]), width)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_unknown_width_lists_allowed(digits_model: SlimmableUNet) -> None:
    with pytest.raises(ConfigError, match=r"unknown width 0\.3; allowed: 2/8, 3/8, 4/8, 5/8, 6/8, 7/8, 8/8"):
        digits_model(_x(), torch.zeros(3), 0.3)


def test_width_leaves_no_state_behind(digits_model: SlimmableUNet) -> None:
    x, t = _x(), torch.full((3,), 100.0)
    state = {k: v.clone() for k, v in digits_model.state_dict().items()}
    attrs = {name: set(vars(m)) for name, m in digits_model.named_modules()}
    with torch.no_grad():
        first = digits_model(x, t, 1.0)
        digits_model(x, t, 0.25)
        again = digits_model(x, t, 1.0)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert {name: set(vars(m)) for name, m in digits_model.named_modules()} == attrs
    assert all(torch.equal(v, state[k]) for k, v in digits_model.state_dict().items())


def test_output_of_a_sample_does_not_depend_on_the_batch(digits_model: SlimmableUNet) -> None:
    x, t = _x(4), torch.tensor([5.0, 50.0, 500.0, 900.0])
    with torch.no_grad():
        batch = digits_model(x, t, 0.5)
        single = digits_model(x[2:3], t[2:3], 0.5)
    torch.testing.assert_close(batch[2:3], single, rtol=1e-5, atol=1e-6)


def test_scalar_and_fractional_timesteps(digits_model: SlimmableUNet) -> None:
    x = _x(2)
    with torch.no_grad():
        a = digits_model(x, torch.tensor(10.5), 1.0)
        b = digits_model(x, torch.tensor([10.5, 10.5]), 1.0)
    torch.testing.assert_close(a, b)
    emb = timestep_embedding(torch.tensor([0.0, 0.5, 1.0]), 8)
    assert emb.shape == (3, 8) and not torch.equal(emb[0], emb[1])


def test_class_conditional_needs_labels_and_uses_them() -> None:
    model = SlimmableUNet(UNetConfig.digits(num_classes=10)).eval()
    torch.nn.init.normal_(model.label_embed.weight)  # type: ignore[union-attr]
    torch.nn.init.normal_(model.out_conv.weight, std=0.1)
    x, t = _x(2), torch.tensor([3.0, 3.0])
    with torch.no_grad():
        a = model(x, t, 0.5, torch.tensor([1, 2]))
        b = model(x, t, 0.5, torch.tensor([1, 7]))
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[1], b[1])
    with pytest.raises(ConfigError, match="needs labels y"):
        model(x, t, 0.5)


def test_unconditional_model_rejects_labels(digits_model: SlimmableUNet) -> None:
    with pytest.raises(ConfigError, match="unconditional"):
        digits_model(_x(1), torch.zeros(1), 1.0, torch.tensor([3]))


def test_build_rejects_width_splitting_a_group_and_names_layer_and_width() -> None:
    message = r"width 0\.3 is invalid for layer 'down\.\d\.\d\.norm\d'.*group size"
    with pytest.raises(ConfigError, match=message):
        SlimmableUNet(UNetConfig.digits(widths=(0.3, 1.0)))


def test_build_rejects_width_with_too_few_channels_for_heads() -> None:
    cfg = UNetConfig.digits(num_head_channels=32)  # 4x4 level: 128 channels, 32 at 2/8 but 48 at 3/8
    with pytest.raises(ConfigError, match=r"width 3/8 is invalid for layer 'down\.3\.1'.*48 channels.*heads"):
        SlimmableUNet(cfg)


def test_config_rejects_levels_that_groupnorm_cannot_split() -> None:
    with pytest.raises(ConfigError, match="level 0 has 40 channels"):
        UNetConfig.digits(model_channels=40)


def test_narrow_training_step_updates_only_the_sub_network() -> None:
    model = SlimmableUNet(UNetConfig.digits(dropout=0.0))
    model(_x(2), torch.tensor([1.0, 2.0]), 0.25).square().mean().backward()
    conv = model.down[0][0].conv1
    assert conv.weight.grad[:16, :16].abs().sum() > 0
    assert conv.weight.grad[16:].abs().sum() == 0 and conv.weight.grad[:, 16:].abs().sum() == 0
