"""Cost of a step-aware strategy in GFLOPs (torch-free).

A :class:`CostTable` holds the GFLOPs of ONE network call at every width (2 x multiply-adds, counted
from the real model by :func:`ddsm_core.flops.cost_table`). The cost of a strategy is the sum over its
network calls (:meth:`ddsm_core.strategy.Strategy.network_calls`), so EDM Heun's second evaluations are
counted too, times the passes per call (2 with classifier-free guidance: a conditional and an
unconditional pass at the step's width).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ddsm_core.errors import ConfigError
from ddsm_core.strategy import Strategy, width_index
from ddsm_core.widths import format_width


def _floats(name: str, values: Any) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ConfigError(f"cost table {name} must be a sequence of numbers, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"cost table {name} must hold finite non-negative numbers, got {v!r}")
        out.append(float(v))
    return tuple(out)


@dataclass(frozen=True)
class CostTable:
    """GFLOPs of one network call per width.

    :param widths: width fractions, strictly increasing.
    :param gflops: total GFLOPs per call, aligned with ``widths``.
    :param gflops_conv_linear: convolution/linear-only GFLOPs per call (the paper's count), or None.
    """

    widths: tuple[float, ...]
    gflops: tuple[float, ...]
    gflops_conv_linear: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        widths = _floats("widths", self.widths)
        if not widths or any(b <= a for a, b in zip(widths, widths[1:], strict=False)):
            raise ConfigError(f"cost table widths must be non-empty and strictly increasing, got {widths}")
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "gflops", _floats("gflops", self.gflops))
        if self.gflops_conv_linear is not None:
            conv_linear = _floats("gflops_conv_linear", self.gflops_conv_linear)
            object.__setattr__(self, "gflops_conv_linear", conv_linear)
        for name in ("gflops", "gflops_conv_linear"):
            values = getattr(self, name)
            if values is not None and len(values) != len(widths):
                raise ConfigError(f"cost table has {len(widths)} widths but {len(values)} {name} values")

    def per_call(self, width: float, *, conv_linear: bool = False) -> float:
        """GFLOPs of one call at ``width``; :class:`StrategyError` (listing widths) if not in the table."""
        column = self._column(conv_linear)
        return column[width_index(self.widths, width)]

    def _column(self, conv_linear: bool) -> tuple[float, ...]:
        if not conv_linear:
            return self.gflops
        if self.gflops_conv_linear is None:
            raise ConfigError("this cost table has no convolution/linear-only GFLOPs")
        return self.gflops_conv_linear

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable dict (keys as in ``ddsm flops --json``)."""
        return {
            "widths": list(self.widths),
            "gflops": list(self.gflops),
            "gflops_conv_linear": None if self.gflops_conv_linear is None else list(self.gflops_conv_linear),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostTable:
        """Inverse of :meth:`to_dict`; extra keys (``preset``, ``params``) are ignored."""
        try:
            conv_linear = _opt_tuple(data.get("gflops_conv_linear"))
            return cls(tuple(data["widths"]), tuple(data["gflops"]), conv_linear)
        except KeyError as exc:
            raise ConfigError(f"cost table is missing key {exc.args[0]!r}") from exc
        except TypeError as exc:
            raise ConfigError(f"malformed cost table: {exc}") from exc

    def __str__(self) -> str:
        pairs = zip(self.widths, self.gflops, strict=True)
        cells = ", ".join(f"{format_width(w)}: {g:.4g}" for w, g in pairs)
        return f"CostTable(GFLOPs per call: {cells})"


def _opt_tuple(values: Any) -> tuple[float, ...] | None:
    return None if values is None else tuple(values)


def strategy_gflops(
    strategy: Strategy, table: CostTable, *, conv_linear: bool = False, passes: int = 1
) -> float:
    """Total GFLOPs of sampling one image with ``strategy``: the sum over its network calls.

    :param passes: network passes per sampler evaluation: 2 with classifier-free guidance (whatever
        its weight, both passes run), else 1.
    """
    if passes < 1:
        raise ConfigError(f"passes must be >= 1, got {passes}")
    column = table._column(conv_linear)
    return passes * math.fsum(column[width_index(table.widths, w)] for w in strategy.network_calls())


def mean_gflops_per_call(strategy: Strategy, table: CostTable, *, conv_linear: bool = False) -> float:
    """Average GFLOPs per network call (the paper's "GFLOPs" column)."""
    return strategy_gflops(strategy, table, conv_linear=conv_linear) / strategy.n_calls


def relative_cost(strategy: Strategy, table: CostTable, *, conv_linear: bool = False) -> float:
    """Cost of ``strategy`` as a fraction of the same sampler run at full (largest) width throughout."""
    full = table._column(conv_linear)[-1] * strategy.n_calls
    return strategy_gflops(strategy, table, conv_linear=conv_linear) / full
