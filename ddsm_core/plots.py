"""Plots (torch-free; matplotlib imported lazily, Agg canvas, no pyplot global state).

:func:`plot_strategy` draws step-aware strategies as a LINE plot of width against sampler step (the
paper's reviewers asked for a line plot, not a smoothed heat map). The x axis runs from the noisiest
step (t = T, left) to the cleanest (t = 0, right). With ``x="log_snr"`` strategies of different
samplers and step counts share one axis, the noise level (what :mod:`ddsm_core.transfer` maps by), and
:func:`plot_fronts` draws the Pareto fronts of several searches together.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

from ddsm_core.atomic import atomic_path
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
    x: Literal["step", "progress", "log_snr"] = "step",
    schedule: Mapping[str, Any] | None = None,
    dpi: int = 120,
) -> Path | IO[bytes]:
    """Write a PNG line plot of width (fraction of full width) against sampler step.

    :param strategies: one :class:`Strategy`, or ``(label, Strategy)`` pairs / a ``{label: Strategy}``
        mapping to compare several on one axis.
    :param path: PNG file to write (parent folders are created), or a binary file object
        (e.g. ``io.BytesIO`` for an HTTP response).
    :param title: figure title (default: the sampler and step count, when all strategies share them).
    :param x: ``"step"`` plots against the step index (0 = noisiest); ``"progress"`` against the
        fraction of the trajectory, ``(i + 0.5) / steps``, to compare strategies of different lengths;
        ``"log_snr"`` against the log-SNR of the step's noise level (``-2 log sigma_i``), to compare
        strategies of different samplers (the width changes halfway between two steps' noise levels,
        the cells of :func:`ddsm_core.transfer.transfer_strategy`).
    :param schedule: the noise schedule for ``x="log_snr"`` (``NoiseSchedule.to_dict()``; default:
        DDPM's linear schedule).
    :return: the path written (the file object itself when given one).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    items = _labelled(strategies)
    if x not in ("step", "progress", "log_snr"):
        raise ConfigError(f"unknown x axis {x!r}; allowed: step, progress, log_snr")
    fig = Figure(figsize=(7.0, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    widths: set[float] = set()
    for label, s in items:
        xs = _x_values(s, x, schedule)
        marker = "o" if s.steps <= 50 else None
        ax.plot(xs, s.width_per_step, drawstyle="steps-mid", marker=marker, markersize=3, label=label)
        widths.update(s.widths)
    ticks = sorted(widths)
    ax.set_yticks(ticks, [format_width(w) for w in ticks])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("width (fraction of full width)")
    ax.set_xlabel(_X_LABELS[x])
    if x == "progress":
        ax.set_xlim(0, 1)
    ax.grid(True, alpha=0.3)
    if title is None and len({(s.sampler, s.steps) for _, s in items}) == 1:
        title = f"step-aware strategy: {items[0][1].sampler}, {items[0][1].steps} steps"
    if title:
        ax.set_title(title)
    if len(items) > 1 or isinstance(strategies, (Mapping, Sequence)):
        ax.legend(loc="lower right", fontsize="small")
    return _write(fig, path, dpi)


_X_LABELS = {
    "step": "sampler step  (left: noisy, t = T  \u2192  right: clean, t = 0)",
    "progress": "fraction of the sampling trajectory  (0: noisy, t = T  \u2192  1: clean, t = 0)",
    "log_snr": "log-SNR of the step's noise level, -2 log \u03c3  (left: noisy  \u2192  right: clean)",
}


def _x_values(s: Strategy, x: str, schedule: Mapping[str, Any] | None) -> list[float]:
    if x == "step":
        return list(range(s.steps))
    if x == "progress":
        return [(i + 0.5) / s.steps for i in range(s.steps)]
    from ddsm_core.transfer import step_log_snr

    return [float(v) for v in step_log_snr(s.sampler, s.steps, schedule)]


def _write(fig: Any, path: str | os.PathLike[str] | IO[bytes], dpi: int) -> Path | IO[bytes]:
    """Write a figure as PNG to a path (creating its folder) or a binary file object."""
    if hasattr(path, "write"):
        fig.savefig(path, format="png", dpi=dpi)
        return path  # type: ignore[return-value]
    with atomic_path(path) as tmp:  # type: ignore[arg-type]
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)  # type: ignore[arg-type]


def plot_fronts(
    fronts: Sequence[Any],
    path: str | os.PathLike[str] | IO[bytes],
    *,
    reference: tuple[float, float] | None = None,
    hypervolumes: Mapping[str, float] | None = None,
    fid_label: str = "FID",
    cost_label: str = "GFLOPs per image",
    title: str | None = None,
    dpi: int = 120,
) -> Path | IO[bytes]:
    """Write a PNG of several searches' Pareto fronts on one axis (FID against their one cost unit).

    Each front is drawn as its attainment staircase (the boundary of the region it dominates, the
    area a hypervolume measures) with its points marked.

    :param fronts: :class:`ddsm_core.compare.Front` values (``name``, ``points`` as (cost, FID)).
    :param reference: the shared reference point, drawn as a cross and closing each staircase.
    :param hypervolumes: ``{name: value}`` shown in the legend.
    :param fid_label: the y label (say which extractor measured the FID).
    :param cost_label: the x label: the fronts' cost unit (``Comparison.unit``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not fronts:
        raise ConfigError("plot_fronts needs at least one front")
    fig = Figure(figsize=(6.8, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for front in fronts:
        pts = sorted(front.points)
        stair: list[tuple[float, float]] = []
        for x, y in pts:  # keep the non-dominated points, cost ascending, FID descending
            if not stair or y < stair[-1][1]:
                stair.append((x, y))
        label = front.name
        if hypervolumes and front.name in hypervolumes:
            label += f" (HV {hypervolumes[front.name]:.3g})"
        xs = [p[0] for p in stair]
        ys = [p[1] for p in stair]
        if reference is not None and stair:
            xs = [xs[0], *xs, reference[0]]
            ys = [reference[1], *ys, ys[-1]]
        (line,) = ax.plot(xs, ys, drawstyle="steps-post", lw=1.2, label=label)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", ms=4, c=line.get_color())
    if reference is not None:
        ax.plot([reference[0]], [reference[1]], "x", c="k", ms=8, label="reference point")
    ax.set_xlabel(cost_label)
    ax.set_ylabel(fid_label)
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "Pareto fronts (lower left is better)")
    ax.legend(loc="best", fontsize="small")  # "best" keeps the reference point (top right) visible
    return _write(fig, path, dpi)
