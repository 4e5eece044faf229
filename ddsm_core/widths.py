"""Widths of the slimmable supernet: fractions of the full width, and the one channel rule.

Torch-free: the API process uses it to validate and display strategies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

from ddsm_core.errors import ConfigError

# The paper's seven widths (PAPER.md section 1): k/8 of the full width, k = 2..8.
DEFAULT_WIDTHS: tuple[float, ...] = (2 / 8, 3 / 8, 4 / 8, 5 / 8, 6 / 8, 7 / 8, 8 / 8)

# Float slack when comparing widths and channel counts (k/8 are exact binary floats; 0.1 is not).
_EPS = 1e-9


def channels(full: int, width: float) -> int:
    """Number of channels a layer with ``full`` channels uses at ``width``.

    THE channel arithmetic of the project: every slimmable layer, the build-time validation, the
    golden tests and the FLOPs count go through it. Rule: ``ceil(full * width)`` (with float slack),
    at least 1, so a sub-network never has fewer channels than the fraction asks for and the full
    width (1.0) always gives ``full``. Widths whose product is not an integer are legal here;
    the model's build-time check decides whether a layer can split that way (GroupNorm, heads).
    """
    if not 0.0 < width <= 1.0 + _EPS:
        raise ConfigError(f"width must be in (0, 1], got {width!r}")
    return max(1, min(full, math.ceil(full * width - _EPS)))


def format_width(width: float, denominator: int = 8) -> str:
    """'6/8' for 0.75 when the width is a multiple of 1/denominator, else the decimal."""
    k = width * denominator
    if abs(k - round(k)) < 1e-6:
        return f"{round(k)}/{denominator}"
    return f"{width:g}"


_FORMS = "a fraction like '6/8' or a decimal like '0.75', in (0, 1]"


def parse_width(s: str) -> float:
    """Parse '6/8', '3/4', '0.75' or '1' into a float width in (0, 1]."""
    text = str(s).strip()
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"cannot parse width {s!r}; allowed forms: {_FORMS}") from None
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"width {s!r} out of range; allowed forms: {_FORMS}")
    return value


def match_width(width: float, allowed: Sequence[float]) -> float:
    """The member of ``allowed`` equal to ``width`` (within float slack), else ConfigError listing them."""
    for a in allowed:
        if abs(a - width) < 1e-6:
            return a
    listed = ", ".join(format_width(a) for a in allowed)
    raise ConfigError(f"unknown width {width!r}; allowed: {listed}")


def validate_widths(widths: Sequence[float]) -> tuple[float, ...]:
    """Sorted, unique, each in (0, 1]; raises ConfigError otherwise."""
    values = tuple(float(w) for w in widths)
    if not values:
        raise ConfigError("width set is empty; give at least one width in (0, 1]")
    for w in values:
        if not 0.0 < w <= 1.0:
            raise ConfigError(f"width {w!r} out of range; every width must be in (0, 1]")
    ordered = tuple(sorted(values))
    if any(b - a < 1e-6 for a, b in zip(ordered, ordered[1:], strict=False)):
        raise ConfigError(f"duplicate widths in {values}")
    return ordered
