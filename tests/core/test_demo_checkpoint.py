"""`ddsm demo --checkpoint` checks the checkpoint's files before it starts anything. It lives here, not in
tests/api, because writing the checkpoint needs torch (tests/api also runs with torch blocked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    deployment = ("DATABASE_URL", "CELERY_BROKER_URL", "ARTIFACT_STORE")
    env = {k: v for k, v in os.environ.items() if k not in deployment}  # the embedded default
    cmd = [sys.executable, "-m", "api.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def test_demo_with_a_corrupt_checkpoint_fails_before_starting_the_service(tmp_path: Path) -> None:
    import shutil

    from ddsm_core.checkpoint import write_checkpoint
    from ddsm_core.config import UNetConfig
    from ddsm_core.schedules import NoiseSchedule
    from ddsm_core.unet import SlimmableUNet

    cfg = UNetConfig.digits(model_channels=16, num_res_blocks=1)
    ckpt = tmp_path / "c"
    write_checkpoint(ckpt, step=1, model_config=cfg, schedule=NoiseSchedule.linear().to_dict(),
                     model_state=SlimmableUNet(cfg).state_dict(), train_config={})  # fmt: skip
    weights = ckpt / "model.safetensors"
    shutil.copyfile(weights, tmp_path / "w")
    weights.write_bytes((tmp_path / "w").read_bytes()[:1000])  # a cut copy
    home = tmp_path / "home"
    res = run("demo", "--checkpoint", str(ckpt), "--home", str(home), "--out", str(tmp_path / "r"))
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "model.safetensors is corrupt" in res.stderr and not home.exists()
