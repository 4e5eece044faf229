"""Slimmable layers against hand-sliced plain torch ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ddsm_core.errors import ConfigError
from ddsm_core.slimmable import SlimConv2d, SlimEmbedding, SlimGroupNorm, SlimLinear, slice_parts


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_slice_parts_is_a_view_at_full_width_and_cuts_each_part() -> None:
    t = torch.arange(10.0)
    assert slice_parts(t, 0, (10,), 1.0) is t
    assert slice_parts(t, 0, (4, 6), 1.0) is t
    narrow = slice_parts(t, 0, (8,), 0.5)
    assert narrow.data_ptr() == t.data_ptr() and narrow.tolist() == [0, 1, 2, 3]
    # Parts (4, 6) at 1/2: first 2 of part one, first 3 of part two, not the first 5 overall.
    assert slice_parts(t, 0, (4, 6), 0.5).tolist() == [0, 1, 4, 5, 6]


def test_conv_full_width_uses_the_parameter_without_copy() -> None:
    conv = SlimConv2d((8, 8), 16, 3, padding=1)
    weight, bias = conv.weights_at(1.0)
    assert weight is conv.weight and bias is conv.bias


@pytest.mark.parametrize("width", [0.25, 0.5, 0.75, 1.0])
def test_conv_matches_plain_conv_on_first_channels(width: float) -> None:
    conv = SlimConv2d(16, 32, 3, stride=2, padding=1)
    cin, cout = int(16 * width), int(32 * width)
    x = torch.randn(2, cin, 8, 8, generator=_gen())
    expected = F.conv2d(x, conv.weight[:cout, :cin], conv.bias[:cout], stride=2, padding=1)
    torch.testing.assert_close(conv(x, width), expected)
    assert conv.channels_at(width) == (cin, cout)


def test_conv_with_concatenated_input_slices_each_part() -> None:
    conv = SlimConv2d((8, 4), 8, 1)
    h, skip = torch.randn(1, 4, 5, 5, generator=_gen()), torch.randn(1, 2, 5, 5, generator=_gen())
    w = conv.weight
    # The narrow layer's input is cat(h[:4], skip[:2]); its weight columns are 0..3 and 8..9.
    expected = F.conv2d(h, w[:4, :4], conv.bias[:4]) + F.conv2d(skip, w[:4, 8:10])
    torch.testing.assert_close(conv(torch.cat([h, skip], 1), 0.5), expected)


def test_fixed_image_channels_are_not_slimmed() -> None:
    head = SlimConv2d(3, 16, 3, padding=1, slim_in=False)
    tail = SlimConv2d(16, 3, 3, padding=1, slim_out=False)
    x = torch.randn(1, 3, 4, 4, generator=_gen())
    assert tail(head(x, 0.25), 0.25).shape == (1, 3, 4, 4)


def test_fused_output_parts_keep_first_channels_of_each() -> None:
    lin = SlimLinear(8, (8, 8, 8))
    x = torch.randn(3, 4, generator=_gen())
    rows = [*range(0, 4), *range(8, 12), *range(16, 20)]
    torch.testing.assert_close(lin(x, 0.5), F.linear(x, lin.weight[rows, :4], lin.bias[rows]))


def test_linear_fixed_input() -> None:
    lin = SlimLinear(6, 16, slim_in=False)
    x = torch.randn(2, 6, generator=_gen())
    torch.testing.assert_close(lin(x, 0.25), F.linear(x, lin.weight[:4], lin.bias[:4]))


def test_group_norm_keeps_group_size_so_groups_scale_with_width() -> None:
    gn = SlimGroupNorm(16, 128)
    with torch.no_grad():
        gn.weight.normal_(generator=_gen())
        gn.bias.normal_(generator=_gen())
    assert [gn.groups_at(k / 8) for k in range(2, 9)] == [4, 6, 8, 10, 12, 14, 16]
    x = torch.randn(2, 32, 4, 4, generator=_gen())
    torch.testing.assert_close(gn(x, 0.25), F.group_norm(x, 4, gn.weight[:32], gn.bias[:32], gn.eps))


def test_group_norm_on_concatenated_input_slices_affine_per_part() -> None:
    gn = SlimGroupNorm(4, (8, 8))  # group size 4
    with torch.no_grad():
        gn.weight.copy_(torch.arange(16.0))
    x = torch.randn(1, 8, 3, 3, generator=_gen())
    expected = F.group_norm(x, 2, torch.tensor([0.0, 1, 2, 3, 8, 9, 10, 11]), gn.bias[:8], gn.eps)
    torch.testing.assert_close(gn(x, 0.5), expected)


def test_group_norm_rejects_width_that_splits_a_group() -> None:
    gn = SlimGroupNorm(16, 128)  # group size 8
    with pytest.raises(ConfigError, match="group size 8"):
        gn.check_width(0.3)  # 39 channels


def test_embedding_keeps_first_features() -> None:
    emb = SlimEmbedding(5, 16)
    y = torch.tensor([4, 0])
    torch.testing.assert_close(emb(y, 0.25), emb.weight[[4, 0], :4])


def test_width_is_an_argument_never_state() -> None:
    conv = SlimConv2d(8, 8, 3, padding=1)
    before = dict(vars(conv))
    x = torch.randn(1, 8, 4, 4, generator=_gen())
    full = conv(x, 1.0)
    conv(x[:, :2], 0.25)
    assert vars(conv).keys() == before.keys()
    torch.testing.assert_close(conv(x, 1.0), full)


def test_narrow_backward_touches_only_kept_weights() -> None:
    conv = SlimConv2d(8, 8, 1)
    conv(torch.randn(2, 4, 3, 3, generator=_gen()), 0.5).sum().backward()
    grad = conv.weight.grad
    assert grad[:4, :4].abs().sum() > 0
    assert grad[4:].abs().sum() == 0 and grad[:, 4:].abs().sum() == 0


def test_sampling_keeps_contiguous_narrow_weights_until_the_parameter_changes() -> None:
    conv = SlimConv2d((8, 8), 8, 3, padding=1)
    x = torch.randn(1, 8, 4, 4, generator=_gen())
    with torch.inference_mode():
        first = conv(x, 0.5)
    with torch.no_grad():
        weight, _ = conv.weights_at(0.5)
        assert weight.is_contiguous() and conv.weights_at(0.5)[0] is weight  # kept, not recomputed
        torch.testing.assert_close(conv(x, 0.5), first)  # cache made in inference mode still usable
        conv.weight.mul_(2.0)  # an in-place update (an optimizer step) must drop the copies
        expected = F.conv2d(
            x, torch.cat([conv.weight[:4, :4], conv.weight[:4, 8:12]], 1), conv.bias[:4], padding=1
        )
        torch.testing.assert_close(conv(x, 0.5), expected)


def test_training_mode_slices_views_and_copies_drop_the_cache() -> None:
    import copy

    conv = SlimConv2d(8, 8, 1)
    with torch.no_grad():
        conv(torch.randn(1, 4, 2, 2, generator=_gen()), 0.5)
    assert "_packed" in vars(conv) and "_packed" not in vars(copy.deepcopy(conv))
    weight, _ = conv.weights_at(0.5)  # grad enabled: a view that autograd routes into the parameter
    assert weight.data_ptr() == conv.weight.data_ptr() and weight.requires_grad
