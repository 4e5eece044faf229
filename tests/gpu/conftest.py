"""The CUDA test subset (``pytest -m gpu``): each test runs on ``$DDSM_GPU_TEST_DEVICE`` (default
``cuda``) and skips when that is CUDA and none is there. ``bench/gpu_check.py --device cpu --quick``
runs them on the CPU with ``DDSM_GPU_TEST_QUICK=1`` (smaller networks) to prove the code paths run.
"""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture
def device() -> torch.device:
    dev = torch.device(os.environ.get("DDSM_GPU_TEST_DEVICE", "cuda"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (torch.cuda.is_available() is False)")
    return dev


@pytest.fixture
def quick() -> bool:
    return os.environ.get("DDSM_GPU_TEST_QUICK", "") == "1"


@pytest.fixture(autouse=True)
def strict_fp32():
    """Full-precision float32 on CUDA (no TF32), so that CUDA and CPU results compare closely."""
    if not torch.cuda.is_available():
        yield
        return
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
