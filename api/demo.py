"""``ddsm demo``: the README's main job over the embedded service (filled in below)."""

from __future__ import annotations


def demo() -> None:
    """Train (or reuse) a digits supernet, compute reference statistics, search over REST, report."""
    raise NotImplementedError
