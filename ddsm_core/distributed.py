"""Process-group setup for DDP training under torchrun (NCCL on GPUs, gloo on CPU).

A single process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) gets a :class:`DistEnv` whose collectives are
no-ops, so the trainer has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class DistEnv:
    """This process's place in the group: ``rank`` of ``world``, its GPU ``local_rank``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @classmethod
    def from_env(cls, device_type: str) -> DistEnv:
        """Join the process group torchrun describes in the environment (if any)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        owns = False
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
            owns = True
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def any_flag(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is set on any (so all ranks stop at the same step)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        # NCCL reduces CUDA tensors only (the trainer has set this process's current device)
        dev = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor([1.0 if flag else 0.0], device=dev)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def mean(self, t: Tensor) -> Tensor:
        """The mean of ``t`` over the ranks (each rank's losses cover its share of the global batch)."""
        if self.world == 1:
            return t
        import torch.distributed as dist

        t = t.clone()
        dist.all_reduce(t)
        return t / self.world

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Leave the group if this process created it."""
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
