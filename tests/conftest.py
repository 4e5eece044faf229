"""Suite-wide settings.

Small tensor ops on a loaded 2-core machine slow down by orders of magnitude when torch spreads them
over threads that the worker processes of the integration tests also want; one thread is faster here.
"""

from __future__ import annotations

import importlib.abc
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# The suite never touches the internet: a missing FID Inception file is "downloaded" from a closed
# local port (connection refused at once), so the offline message is what tests see.
os.environ.setdefault("DDSM_FID_WEIGHTS_URL", "http://127.0.0.1:9/pt_inception-2015-12-05-6726825d.pth")

BLOCK_TORCH = "DDSM_TEST_BLOCK_TORCH"


class _NoTorch(importlib.abc.MetaPathFinder):
    """Makes `import torch` raise ModuleNotFoundError, as on a machine without torch. (A None entry in
    sys.modules would do that too, but libraries such as scipy then read sys.modules["torch"] as a
    present module and fail.)"""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by {BLOCK_TORCH})", name=name)
        return None


if os.environ.get(BLOCK_TORCH) == "1":
    sys.meta_path.insert(0, _NoTorch())

try:
    import torch
except ImportError:  # the API-only tests can run without torch
    torch = None  # type: ignore[assignment]

if torch is not None:
    torch.set_num_threads(1)
