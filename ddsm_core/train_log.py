"""A training run's log (``log.jsonl``, one JSON record per logged step) read back as per-width loss
curves. Torch-free: the API reads the log a worker uploaded.

A record is ``{"step": k, "losses": {"2/8": mse, ..., "8/8": mse}, "lr": ..., ...}`` (:mod:`ddsm_core.
trainer`); a run resumed after a stop may log a step twice, and the later record wins.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ddsm_core.errors import ConfigError
from ddsm_core.widths import parse_width

LOG_FILE = "log.jsonl"
SAMPLES_DIR = "samples"  # one PNG grid per sampled step: <run>/samples/step-0000040.png
_GRID = re.compile(r"(\d+)\.png$")


def read_log(lines: Iterable[str]) -> dict[int, dict[str, float]]:
    """``{step: {width: loss}}`` of the records with finite losses, each width as a decimal ('0.25',
    '1'; the trainer writes '2/8', '8/8'). A torn last line, written while the run was killed, and
    any record that does not parse are skipped."""
    out: dict[int, dict[str, float]] = {}
    for line in lines:
        try:
            record = json.loads(line)
            step, losses = int(record["step"]), record["losses"]
            values = {f"{parse_width(w):g}": float(v) for w, v in losses.items()}
        except (ValueError, KeyError, TypeError, AttributeError, ConfigError):
            continue
        if values and all(math.isfinite(v) for v in values.values()):
            out[step] = values
    return out


def loss_curves(lines: Iterable[str], max_points: int = 400) -> dict[str, Any]:
    """Per-width loss curves: ``{"steps": [...], "losses": {width: [...]}, "logged": n}``.

    More than ``max_points`` logged steps are averaged in consecutive buckets (each point is the mean
    of its bucket, at the bucket's last step), so a long run's curve keeps its trend, not its noise.
    """
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    records = read_log(lines)
    steps = sorted(records)
    widths = sorted({w for v in records.values() for w in v}, key=float)
    size = max(1, math.ceil(len(steps) / max_points))
    out_steps: list[int] = []
    losses: dict[str, list[float | None]] = {w: [] for w in widths}
    for first in range(0, len(steps), size):
        bucket = steps[first : first + size]
        out_steps.append(bucket[-1])
        for w in widths:
            values = [records[s][w] for s in bucket if w in records[s]]
            losses[w].append(sum(values) / len(values) if values else None)
    return {"steps": out_steps, "losses": losses, "logged": len(steps)}


def log_until(text: str, step: int) -> str:
    """The log's lines up to ``step`` (a run resumed from that step's checkpoint logs the rest again)."""
    kept = []
    for line in text.splitlines():
        try:
            if int(json.loads(line)["step"]) > step:
                continue
        except (ValueError, KeyError, TypeError):
            continue
        kept.append(line + "\n")
    return "".join(kept)


def grid_step(path: str | Path) -> int | None:
    """The step of a sample grid file (``step-0000040.png`` -> 40), None for another file."""
    match = _GRID.search(Path(path).name)
    return int(match.group(1)) if match else None
