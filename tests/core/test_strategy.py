"""Strategy: validation, constructors, network calls, JSON round-trip, CLI specs (torch-free)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ddsm_core.errors import ConfigError, StrategyError
from ddsm_core.strategy import SAMPLERS, Strategy, canonical_sampler, parse_strategy_spec
from ddsm_core.widths import DEFAULT_WIDTHS


def test_default_width_set_is_the_papers_seven_widths() -> None:
    assert Strategy.uniform("ddim", 3, 0).widths == tuple(k / 8 for k in range(2, 9))


@pytest.mark.parametrize(
    ("alias", "name"), [("edm-heun", "edm"), ("dpm-solver++", "dpmpp"), ("DDIM", "ddim")]
)
def test_aliases_are_stored_canonically(alias: str, name: str) -> None:
    assert canonical_sampler(alias) == name
    assert Strategy.uniform(alias, 4, 6).sampler == name


def test_unknown_sampler_lists_allowed_names() -> None:
    with pytest.raises(StrategyError) as info:
        Strategy.uniform("euler", 4, 6)
    message = str(info.value)
    for name in (*SAMPLERS, "edm-heun", "dpm-solver++"):
        assert name in message
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


def test_length_mismatch_names_steps_and_sampler() -> None:
    with pytest.raises(StrategyError, match=r"3 genes but the ddim sampler runs 4 steps"):
        Strategy("ddim", 4, DEFAULT_WIDTHS, (6, 6, 6))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"genes": (0, 7)}, r"gene 7 at step 1 is out of range"),
        ({"genes": (0, -1)}, r"out of range"),
        ({"genes": (0, 1.0)}, r"gene must be an integer"),
        ({"genes": (0, True)}, r"gene must be an integer"),
        ({"steps": 0, "genes": ()}, r"steps must be >= 1"),
        ({"widths": (0.5, 0.25)}, r"strictly increasing"),
        ({"widths": (0.0, 1.0)}, r"\(0, 1\]"),
        ({"widths": ()}, r"non-empty"),
        ({"genes": "01"}, r"sequence of width indices"),
    ],
)
def test_invalid_strategies_raise_clear_errors(kwargs: dict, match: str) -> None:
    args = {"sampler": "ddpm", "steps": 2, "widths": DEFAULT_WIDTHS, "genes": (0, 6)} | kwargs
    with pytest.raises(StrategyError, match=match):
        Strategy(**args)


def test_strategy_is_frozen_and_hashable() -> None:
    s = Strategy.uniform("ddim", 5, 3)
    with pytest.raises(AttributeError):
        s.steps = 6  # type: ignore[misc]
    assert hash(s) == hash(Strategy("ddim", 5, list(DEFAULT_WIDTHS), [3] * 5))  # lists become tuples


def test_uniform_and_width_at() -> None:
    s = Strategy.uniform("ddpm", 10, -1)
    assert s.genes == (6,) * 10 and s.width_at(0) == 1.0 and s.width_at(9) == 1.0
    with pytest.raises(StrategyError, match=r"step 10 is out of range"):
        s.width_at(10)
    with pytest.raises(StrategyError, match=r"out of range"):
        Strategy.uniform("ddpm", 10, 7)


def test_piecewise_cuts_at_boundaries_noisiest_first() -> None:
    s = Strategy.piecewise("ddim", 10, [0, 6], [0.3])
    assert s.width_per_step == (0.25,) * 3 + (1.0,) * 7
    equal = Strategy.piecewise("ddim", 9, [0, 2, 6])
    assert equal.genes == (0, 0, 0, 2, 2, 2, 6, 6, 6)
    with pytest.raises(StrategyError, match="boundaries"):
        Strategy.piecewise("ddim", 9, [0, 2], [0.5, 0.7])
    with pytest.raises(StrategyError, match="strictly increasing"):
        Strategy.piecewise("ddim", 9, [0, 2, 3], [0.7, 0.5])


def test_network_calls_one_per_step_except_heun() -> None:
    genes = (0, 3, 6)
    for sampler in ("ddpm", "ddim", "dpmpp"):
        s = Strategy(sampler, 3, DEFAULT_WIDTHS, genes)
        assert s.network_calls() == [0.25, 0.625, 1.0] and s.n_calls == 3
    heun = Strategy("edm-heun", 3, DEFAULT_WIDTHS, genes)
    # Two calls per Heun step at that step's width; the last step is Euler (one call).
    assert heun.network_calls() == [0.25, 0.25, 0.625, 0.625, 1.0]
    assert heun.n_calls == 5
    assert Strategy.uniform("edm", 1, 0).network_calls() == [0.25]


def test_json_round_trip_is_exact() -> None:
    s = Strategy("edm", 4, DEFAULT_WIDTHS, (0, 1, 5, 6))
    text = s.to_json(indent=2)
    assert Strategy.from_json(text) == s
    data = json.loads(text)
    assert data["format"] == "ddsm-strategy" and data["width_per_step"] == [0.25, 0.375, 0.875, 1.0]
    assert Strategy.from_dict(s.to_dict()) == s


_OK = '{"sampler": "ddim", "steps": 1, "widths": [1.0], "genes": [0]}'


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("__import__('os')", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"sampler": "ddim", "steps": 1, "widths": [1.0]}', "missing keys"),
        (_OK[:-1] + ', "code": 1}', "unknown strategy keys"),
        (_OK[:-1] + ', "width_per_step": [0.5]}', "does not match"),
        (_OK[:-1] + ', "format": "x"}', "not a strategy file"),
        (_OK[:-1] + ', "version": 2}', "unsupported strategy version"),
        (_OK.replace("[0]", "[1]"), "out of range"),
    ],
)
def test_bad_json_raises_strategy_error(text: str, match: str) -> None:
    with pytest.raises(StrategyError, match=match):
        Strategy.from_json(text)


def test_resampled_keeps_relative_position() -> None:
    s = Strategy.piecewise("ddim", 10, [0, 6])
    t = s.resampled(100, sampler="ddpm")
    assert t.sampler == "ddpm" and t.steps == 100
    assert t.genes == (0,) * 50 + (6,) * 50
    assert t.resampled(10, sampler="ddim") == s


def test_describe_is_run_length_encoded() -> None:
    assert Strategy.piecewise("ddim", 10, [0, 6]).describe() == "ddim/10: 2/8x5 8/8x5"


def test_parse_strategy_spec_inline_forms() -> None:
    assert parse_strategy_spec("uniform:8/8", "ddim", 5) == Strategy.uniform("ddim", 5, 6)
    assert parse_strategy_spec("uniform:0.5", "dpm-solver++", 5) == Strategy.uniform("dpmpp", 5, 2)
    assert parse_strategy_spec("piecewise:2/8,8/8", "ddpm", 4).genes == (0, 0, 6, 6)
    with pytest.raises(StrategyError, match=r"allowed: 2/8, 3/8"):
        parse_strategy_spec("uniform:1/8", "ddim", 5)
    with pytest.raises(StrategyError, match="neither"):
        parse_strategy_spec("uniformly", "ddim", 5)


def test_parse_strategy_spec_file_must_fit_the_sampler(tmp_path) -> None:
    path = tmp_path / "s.json"
    s = Strategy.piecewise("edm", 6, [1, 6])
    path.write_text(s.to_json())
    assert parse_strategy_spec(path, "edm-heun", 6) == s
    with pytest.raises(StrategyError, match=r"for edm with 6 steps, but sampling runs edm with 7 steps"):
        parse_strategy_spec(str(path), "edm", 7)
    with pytest.raises(StrategyError, match="the model offers"):
        parse_strategy_spec(str(path), "edm", 6, widths=(0.5, 1.0))
    path.write_text("{oops")
    with pytest.raises(StrategyError, match=r"s\.json: strategy is not valid JSON"):
        parse_strategy_spec(str(path), "edm", 6)


def test_strategy_and_costs_import_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import ddsm_core.strategy, ddsm_core.costs\n"
        "assert 'numpy' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
