"""Plots (torch-free; matplotlib imported lazily, Agg canvas, no pyplot global state).

:func:`plot_strategy` draws step-aware strategies as a LINE plot of width against sampler step (the
paper's reviewers asked for a line plot, not a smoothed heat map). The x axis runs from the noisiest
step (t = T, left) to the cleanest (t = 0, right).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Literal

from ddsm_core.errors import ConfigError
from ddsm_core.strategy import Strategy
from ddsm_core.widths import format_width

StrategyInput = Strategy | Sequence[tuple[str, Strategy]] | Mapping[str, Strategy]


def _labelled(strategies: StrategyInput) -> list[tuple[str, Strategy]]:
    if isinstance(strategies, Strategy):
        return [(strategies.describe(), strategies)]
    items = list(strategies.items()) if isinstance(strategies, Mapping) else list(strategies)
    if not items:
        raise ConfigError("plot_strategy needs at least one strategy")
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Strategy)):
            raise ConfigError(f"plot_strategy takes a Strategy or (label, Strategy) pairs, got {item!r}")
    return [(str(label), s) for label, s in items]


def plot_strategy(
    strategies: StrategyInput,
    path: str | os.PathLike[str] | IO[bytes],
    *,
    title: str | None = None,
    x: Literal["step", "progress"] = "step",
    dpi: int = 120,
) -> Path | IO[bytes]:
    """Write a PNG line plot of width (fraction of full width) against sampler step.

    :param strategies: one :class:`Strategy`, or ``(label, Strategy)`` pairs / a ``{label: Strategy}``
        mapping to compare several on one axis.
    :param path: PNG file to write (parent folders are created), or a binary file object
        (e.g. ``io.BytesIO`` for an HTTP response).
    :param title: figure title (default: the sampler and step count, when all strategies share them).
    :param x: ``"step"`` plots against the step index (0 = noisiest); ``"progress"`` against the
        fraction of the trajectory, ``(i + 0.5) / steps``, to compare strategies of different lengths.
    :return: the path written (the file object itself when given one).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    items = _labelled(strategies)
    if x not in ("step", "progress"):
        raise ConfigError(f"unknown x axis {x!r}; allowed: step, progress")
    fig = Figure(figsize=(7.0, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    widths: set[float] = set()
    for label, s in items:
        xs = [i if x == "step" else (i + 0.5) / s.steps for i in range(s.steps)]
        marker = "o" if s.steps <= 50 else None
        ax.plot(xs, s.width_per_step, drawstyle="steps-mid", marker=marker, markersize=3, label=label)
        widths.update(s.widths)
    ticks = sorted(widths)
    ax.set_yticks(ticks, [format_width(w) for w in ticks])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("width (fraction of full width)")
    ax.set_xlabel(
        "sampler step  (left: noisy, t = T  \u2192  right: clean, t = 0)"
        if x == "step"
        else "fraction of the sampling trajectory  (0: noisy, t = T  \u2192  1: clean, t = 0)"
    )
    if x == "progress":
        ax.set_xlim(0, 1)
    ax.grid(True, alpha=0.3)
    if title is None and len({(s.sampler, s.steps) for _, s in items}) == 1:
        title = f"step-aware strategy: {items[0][1].sampler}, {items[0][1].steps} steps"
    if title:
        ax.set_title(title)
    if len(items) > 1 or isinstance(strategies, (Mapping, Sequence)):
        ax.legend(loc="lower right", fontsize="small")
    if hasattr(path, "write"):
        fig.savefig(path, format="png", dpi=dpi)
        return path  # type: ignore[return-value]
    out = Path(path)  # type: ignore[arg-type]
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)
    return out
