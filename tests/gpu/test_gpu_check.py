"""bench/gpu_check.py in its CPU smoke mode (runs in the normal suite; not part of ``-m gpu``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@pytest.mark.slow  # about 30 s of CPU (the gpu tests on the CPU, tiny latency tables, one compile)
def test_quick_cpu_run_writes_a_full_report(tmp_path):
    out = tmp_path / "gpu.md"
    proc = _run("--device", "cpu", "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "QUICK mode" in text and f"torch {torch.__version__}" in text and "git commit" in text
    tests = text.split("## CUDA tests")[1].split("##")[0]
    assert "- passed:" in tests and " passed" in tests  # the gpu tests ran on the CPU and passed
    for section in ("### float32, eager", "### bfloat16, eager", "### float32, compiled", "images/s"):
        assert section in text, section


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_asking_for_cuda_without_one_is_a_one_line_error(tmp_path):
    proc = _run("--out", str(tmp_path / "x.md"), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no CUDA device") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "x.md").exists()
