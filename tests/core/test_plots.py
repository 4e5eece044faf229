"""Strategy line plots."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from ddsm_core.errors import ConfigError
from ddsm_core.plots import plot_strategy
from ddsm_core.strategy import Strategy

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_one_strategy_writes_a_png(tmp_path) -> None:
    out = plot_strategy(Strategy.piecewise("ddim", 10, [0, 3, 6]), tmp_path / "sub" / "s.png")
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_plot_writes_to_a_binary_file_object() -> None:
    buf = io.BytesIO()
    assert plot_strategy(Strategy.uniform("edm", 18, 3), buf, title="candidate 7") is buf
    assert buf.getvalue()[:8] == PNG_MAGIC


def test_plot_compares_labelled_strategies_of_different_lengths(tmp_path) -> None:
    pairs = [
        ("uniform 8/8", Strategy.uniform("ddpm", 100, -1)),
        ("searched", Strategy.piecewise("ddim", 10, [0, 6])),
    ]
    out = plot_strategy(pairs, tmp_path / "cmp.png", x="progress", title="compare")
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert plot_strategy(dict(pairs), tmp_path / "map.png").stat().st_size > 1000


def test_plot_rejects_bad_input(tmp_path) -> None:
    with pytest.raises(ConfigError, match="at least one"):
        plot_strategy([], tmp_path / "x.png")
    with pytest.raises(ConfigError, match=r"\(label, Strategy\) pairs"):
        plot_strategy([Strategy.uniform("ddim", 2, 0)], tmp_path / "x.png")  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="allowed: step, progress"):
        plot_strategy(Strategy.uniform("ddim", 2, 0), tmp_path / "x.png", x="t")  # type: ignore[arg-type]


def test_plots_import_neither_torch_nor_matplotlib() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import ddsm_core.plots\n"
        "assert 'matplotlib' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
