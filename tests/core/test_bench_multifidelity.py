"""bench/multifidelity.py's held-out strategies: full width (the paired metric's reference) is always
among them, whatever ``--strategies``."""

from __future__ import annotations

import sys

import pytest

from bench import multifidelity

STEPS, N_WIDTHS = 20, 7  # the digits supernet's


@pytest.mark.parametrize("count", [3, 4, 6, 7, 8, 32])
def test_full_width_is_always_held_out(count: int) -> None:
    genomes = multifidelity.held_out_genomes(STEPS, N_WIDTHS, count, seed=0)
    assert len(genomes) == len(set(genomes)) == count
    assert (N_WIDTHS - 1,) * STEPS in genomes
    if count >= N_WIDTHS:  # every uniform width, as before
        assert genomes[:N_WIDTHS] == [(w,) * STEPS for w in range(N_WIDTHS)]


def test_too_few_strategies_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["multifidelity.py", "--checkpoint", "nowhere", "--strategies", "2"])
    with pytest.raises(SystemExit) as exit_:
        multifidelity.main()
    assert exit_.value.code == 2
    assert "--strategies must be at least 3" in capsys.readouterr().err
