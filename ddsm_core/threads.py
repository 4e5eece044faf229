"""CPU threads of a compute process: one helper for every command and worker.

torch's default, one intra-op thread per core whose OpenMP threads spin while they wait, is fast on an
idle machine and collapses on a busy one: on a 2-core machine shared with other jobs, ``ddsm train``
took 17 CPU-seconds per step with the default against 0.75 with one thread, and ``ddsm sample`` 22.9 s
against 5.1 s. So every compute process here runs ONE torch thread unless told otherwise (``--threads
N``, or ``DDSM_TORCH_THREADS``; 0 means torch's default: all cores), and, where the process is ours,
OpenMP waits passively (``OMP_WAIT_POLICY=PASSIVE``: idle threads sleep instead of burning the cores
other processes need). Scale a CPU service with more worker processes, not more threads per process.
"""

from __future__ import annotations

import os
import sys

ENV = "DDSM_TORCH_THREADS"
DEFAULT_THREADS = 1


def passive_openmp() -> bool:
    """Ask OpenMP to wait passively, unless the user chose a policy; True if the setting is in effect.

    OpenMP reads ``OMP_WAIT_POLICY`` once, when torch loads it, so this only works before ``import
    torch``: entry points (the ``ddsm`` command, worker processes) call it first thing.
    """
    if "torch" in sys.modules:
        return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ["OMP_WAIT_POLICY"].upper() == "PASSIVE"


def resolve_threads(threads: int | None) -> int:
    """The thread count to use: ``threads`` if given, else ``$DDSM_TORCH_THREADS``, else 1. 0 = all cores."""
    from ddsm_core.errors import ConfigError

    if threads is None:
        raw = os.environ.get(ENV, "").strip()
        if not raw:
            return DEFAULT_THREADS
        try:
            threads = int(raw)
        except ValueError:
            raise ConfigError(
                f"{ENV}={raw!r} is not an integer (threads per process; 0 = all cores)"
            ) from None
    if threads < 0:
        raise ConfigError(f"threads must be >= 0 (0 = all cores), got {threads}")
    return threads


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), not all the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads from :func:`resolve_threads`; returns the number now in use."""
    import torch

    n = resolve_threads(threads) or available_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
