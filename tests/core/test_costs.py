"""Cost tables and strategy GFLOPs (torch-free)."""

from __future__ import annotations

import pytest

from ddsm_core.costs import CostTable, mean_gflops_per_call, relative_cost, strategy_gflops
from ddsm_core.errors import ConfigError, StrategyError
from ddsm_core.strategy import Strategy
from ddsm_core.widths import DEFAULT_WIDTHS

# Shaped like the cifar10 preset: 2 x the authors' GMACs at 2/8, 4/8, 6/8, 8/8.
TABLE = CostTable(
    widths=DEFAULT_WIDTHS,
    gflops=(0.8, 1.7, 3.1, 4.8, 6.9, 9.3, 12.2),
    gflops_conv_linear=(0.765, 1.7, 3.04, 4.75, 6.84, 9.3, 12.14),
)


def test_strategy_gflops_sums_over_network_calls() -> None:
    s = Strategy("ddim", 3, DEFAULT_WIDTHS, (0, 2, 6))
    assert strategy_gflops(s, TABLE) == pytest.approx(0.8 + 3.1 + 12.2)
    assert strategy_gflops(s, TABLE, conv_linear=True) == pytest.approx(0.765 + 3.04 + 12.14)
    assert mean_gflops_per_call(s, TABLE) == pytest.approx((0.8 + 3.1 + 12.2) / 3)


def test_heun_counts_both_evaluations_except_the_last_step() -> None:
    s = Strategy("edm", 3, DEFAULT_WIDTHS, (0, 2, 6))
    assert strategy_gflops(s, TABLE) == pytest.approx(2 * 0.8 + 2 * 3.1 + 12.2)
    assert mean_gflops_per_call(s, TABLE) == pytest.approx((2 * 0.8 + 2 * 3.1 + 12.2) / 5)


def test_uniform_full_width_matches_paper_baseline() -> None:
    s = Strategy.uniform("ddpm", 1000, -1)
    assert mean_gflops_per_call(s, TABLE, conv_linear=True) == pytest.approx(12.14)
    assert relative_cost(s, TABLE) == pytest.approx(1.0)
    half = Strategy.piecewise("ddpm", 1000, [0, 6])
    assert relative_cost(half, TABLE) == pytest.approx((0.8 + 12.2) / (2 * 12.2))


def test_width_not_in_table_lists_allowed() -> None:
    table = CostTable((0.5, 1.0), (3.0, 12.0))
    with pytest.raises(StrategyError, match=r"allowed: 4/8, 8/8"):
        strategy_gflops(Strategy.uniform("ddim", 2, 0), table)
    with pytest.raises(ConfigError, match="no convolution/linear-only"):
        strategy_gflops(Strategy.uniform("ddim", 2, 0, widths=(0.5, 1.0)), table, conv_linear=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"widths": (1.0, 0.5), "gflops": (1, 2)}, "strictly increasing"),
        ({"widths": (0.5, 1.0), "gflops": (1,)}, "2 widths but 1 gflops"),
        ({"widths": (0.5, 1.0), "gflops": (1, float("nan"))}, "finite"),
        ({"widths": (0.5, 1.0), "gflops": (1, 2), "gflops_conv_linear": (1, 2, 3)}, "gflops_conv_linear"),
    ],
)
def test_invalid_tables_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        CostTable(**kwargs)


def test_cost_table_dict_round_trip_ignores_extra_keys() -> None:
    data = TABLE.to_dict() | {"preset": "cifar10", "params": 35_700_000}
    assert CostTable.from_dict(data) == TABLE
    with pytest.raises(ConfigError, match="missing key 'gflops'"):
        CostTable.from_dict({"widths": [1.0]})
