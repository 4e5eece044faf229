"""The committed benchmark supernet loads (sha256-verified) and is the digits-bench model."""

from __future__ import annotations

from pathlib import Path

from ddsm_core.checkpoint import load_checkpoint
from ddsm_core.config import UNetConfig

BENCH = Path(__file__).resolve().parents[2] / "bench" / "digits-supernet"


def test_bench_supernet_loads_as_the_digits_bench_preset():
    model, schedule, manifest = load_checkpoint(BENCH, expected_config=UNetConfig.from_preset("digits-bench"))
    assert manifest["step"] == 4000 and manifest["weights"]["ema"] is None  # EMA weights exported as model
    assert model.config == UNetConfig.from_preset("digits-bench")
    assert sum(p.numel() for p in model.parameters()) < 1.1e6
