"""Width arithmetic and parsing (torch-free)."""

from __future__ import annotations

import pytest

from ddsm_core.errors import ConfigError
from ddsm_core.widths import DEFAULT_WIDTHS, channels, format_width, match_width, parse_width, validate_widths


def test_default_widths_are_the_papers_seven_eighths() -> None:
    assert DEFAULT_WIDTHS == tuple(k / 8 for k in range(2, 9))


@pytest.mark.parametrize(
    ("full", "width", "expected"),
    [(128, 1.0, 128), (128, 3 / 8, 48), (256, 2 / 8, 64), (64, 0.1, 7), (3, 0.5, 2), (1, 0.25, 1)],
)
def test_channels_rounds_up_and_keeps_full_width(full: int, width: float, expected: int) -> None:
    assert channels(full, width) == expected


@pytest.mark.parametrize("width", [0.0, -0.5, 1.5])
def test_channels_rejects_width_outside_unit_interval(width: float) -> None:
    with pytest.raises(ConfigError, match="width"):
        channels(128, width)


@pytest.mark.parametrize(
    ("text", "value"), [("6/8", 0.75), ("3/4", 0.75), ("0.75", 0.75), ("1", 1.0), (" 2/8 ", 0.25)]
)
def test_parse_width_accepts_fractions_and_decimals(text: str, value: float) -> None:
    assert parse_width(text) == value


@pytest.mark.parametrize("text", ["abc", "9/8", "0", "1/0", ""])
def test_parse_width_error_lists_allowed_forms(text: str) -> None:
    with pytest.raises(ConfigError, match="allowed forms"):
        parse_width(text)


def test_match_width_unknown_lists_allowed() -> None:
    assert match_width(0.75, DEFAULT_WIDTHS) == 0.75
    with pytest.raises(ConfigError, match=r"unknown width 0\.3; allowed: 2/8, 3/8, 4/8, 5/8, 6/8, 7/8, 8/8"):
        match_width(0.3, DEFAULT_WIDTHS)


def test_format_width() -> None:
    assert [format_width(w) for w in (0.25, 1.0, 0.3)] == ["2/8", "8/8", "0.3"]


def test_validate_widths_sorts_and_rejects_duplicates() -> None:
    assert validate_widths([1.0, 0.5]) == (0.5, 1.0)
    with pytest.raises(ConfigError, match="duplicate"):
        validate_widths([0.5, 0.5])
    with pytest.raises(ConfigError, match="empty"):
        validate_widths([])
