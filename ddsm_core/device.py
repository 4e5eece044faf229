"""Device choice, in one place: ``auto`` means the CUDA device of this process if there is one."""

from __future__ import annotations

import torch

from ddsm_core.errors import ConfigError


def pick_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is there (or asked for without an index), else the CPU.

    :param device: ``auto`` (or None), ``cpu``, ``cuda`` or ``cuda:N``.
    :param local_rank: this process's index on its machine under torchrun (picks its GPU).
    :raises ConfigError: CUDA asked for but not available.
    """
    if device is None or str(device) == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' asked for but CUDA is not available; use --device cpu")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev
