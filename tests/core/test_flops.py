"""GFLOPs per width, counted from the model, against the paper's numbers and an analytic count."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from ddsm_core.cli import flops_cmd, run_app
from ddsm_core.config import UNetConfig
from ddsm_core.costs import CostTable
from ddsm_core.errors import ConfigError
from ddsm_core.flops import cost_table, count_gflops, count_params
from ddsm_core.slimmable import SlimConv2d, SlimLinear
from ddsm_core.unet import SlimmableUNet

# The paper: 6.070 / 3.420 / 1.520 / 0.3825 GMACs at widths 8/8, 6/8, 4/8, 2/8 = twice that in GFLOPs.
PAPER_CIFAR10_GFLOPS = {1.0: 12.14, 0.75: 6.84, 0.5: 3.04, 0.25: 0.765}


def test_flop_counter_counts_two_flops_per_multiply_add() -> None:
    conv, lin = nn.Conv2d(4, 6, 3, padding=1), nn.Linear(5, 7)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        conv(torch.zeros(2, 4, 8, 8))
        lin(torch.zeros(3, 5))
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert counts["aten.convolution"] == 2 * (2 * 8 * 8 * 6 * 4 * 3 * 3)
    assert counts["aten.addmm"] == 2 * (3 * 5 * 7)


def test_cifar10_parameters_match_the_paper() -> None:
    params = count_params(UNetConfig.cifar10())
    assert params == 35_746_307  # DDPM's CIFAR-10 network
    assert abs(params / 35.7e6 - 1) < 0.01


@pytest.fixture(scope="module")
def cifar10_counts() -> dict[float, dict[str, float]]:
    return count_gflops(UNetConfig.cifar10())


@pytest.mark.parametrize(("width", "paper"), sorted(PAPER_CIFAR10_GFLOPS.items()))
def test_cifar10_conv_linear_gflops_match_the_paper(cifar10_counts: dict, width: float, paper: float) -> None:
    assert abs(cifar10_counts[width]["gflops_conv_linear"] / paper - 1) < 0.015


def test_attention_products_are_the_only_difference_between_columns(cifar10_counts: dict) -> None:
    # q k^T and attn v: 2 products x 2 FLOPs x (HW)^2 x C; five blocks at 16x16 (C=256), one at 4x4.
    attention = 5 * 2 * 2 * 256**2 * 256 + 2 * 2 * 16**2 * 256
    full = cifar10_counts[1.0]
    assert round((full["gflops"] - full["gflops_conv_linear"]) * 1e9) == attention


def test_conv_linear_count_equals_an_analytic_count_from_the_layers() -> None:
    """2 x (output elements x input channels x kernel area) summed over every conv and linear."""
    cfg = UNetConfig.digits()
    model = SlimmableUNet(cfg).eval()
    for width in (0.25, 0.625, 1.0):
        macs = 0

        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            nonlocal macs
            kernel = module.weight[0, 0].numel() if isinstance(module, SlimConv2d) else 1
            macs += out.numel() * args[0].shape[1] * kernel

        handles = [
            m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (SlimConv2d, SlimLinear))
        ]
        with torch.no_grad():
            model(torch.zeros(1, 1, 8, 8), torch.zeros(1), width)
        for h in handles:
            h.remove()
        assert count_gflops(cfg, [width])[width]["gflops_conv_linear"] * 1e9 == pytest.approx(
            2 * macs, rel=1e-12
        )


def test_counts_are_per_image_and_shrink_with_width() -> None:
    cfg = UNetConfig.digits()
    one, four = count_gflops(cfg, batch=1), count_gflops(cfg, batch=4)
    for w in cfg.widths:
        assert four[w]["gflops"] == pytest.approx(one[w]["gflops"])
    totals = [c["gflops"] for c in one.values()]
    assert totals == sorted(totals) and totals[0] < 0.1 * totals[-1]


def test_celeba64_matches_the_papers_celeba_hq_64_baseline() -> None:
    full = count_gflops(UNetConfig.celeba64(), [1.0])[1.0]
    assert abs(full["gflops_conv_linear"] / 49.88 - 1) < 0.015


def test_unknown_width_lists_allowed() -> None:
    with pytest.raises(ConfigError, match="allowed: 2/8"):
        count_gflops(UNetConfig.digits(), [0.3])


def test_cost_table_from_model_and_config_agree() -> None:
    cfg = UNetConfig.digits(widths=(0.5, 1.0))
    table = cost_table(cfg)
    assert isinstance(table, CostTable) and table.widths == (0.5, 1.0)
    assert table == cost_table(SlimmableUNet(cfg))
    assert table.gflops_conv_linear is not None
    assert all(g > c for g, c in zip(table.gflops, table.gflops_conv_linear, strict=True))


# ---- the `ddsm flops` command --------------------------------------------------------------------


def _app() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)  # keep `flops` a sub-command even when it is the only one
    flops_cmd.register(app)
    return app


def test_cli_flops_json_has_aligned_lists() -> None:
    result = CliRunner().invoke(_app(), ["flops", "--preset", "digits", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report) == {"preset", "params", "widths", "gflops", "gflops_conv_linear"}
    assert report["preset"] == "digits" and report["params"] == count_params(UNetConfig.digits())
    assert report["widths"] == list(UNetConfig.digits().widths)
    assert len(report["gflops"]) == len(report["gflops_conv_linear"]) == 7


def test_cli_flops_table_is_readable() -> None:
    result = CliRunner().invoke(_app(), ["flops", "--preset", "digits"])
    assert result.exit_code == 0 and "2/8" in result.output and "conv/linear" in result.output


def test_cli_unknown_preset_is_a_one_line_error_listing_allowed(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_app(_app(), ["flops", "--preset", "imagenet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown preset 'imagenet'; allowed: celeba64, cifar10, digits, digits-bench"


def test_ddsm_entry_point_prints_the_cifar10_json() -> None:
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "ddsm"
    if not exe.exists():
        pytest.skip("the ddsm entry point is not installed (pip install -e .)")
    out = subprocess.run([str(exe), "flops", "--preset", "cifar10", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["preset"] == "cifar10" and report["params"] == 35_746_307
    by_width = dict(zip(report["widths"], report["gflops_conv_linear"], strict=True))
    assert all(abs(by_width[w] / g - 1) < 0.015 for w, g in PAPER_CIFAR10_GFLOPS.items())
