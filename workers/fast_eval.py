"""A deliberately trivial evaluator for benchmarks and service tests (``DDSM_EVALUATOR=fast``).

It replaces sampling + FID by an analytic score, so the service's own overhead (queue, database,
controller) can be measured without the cost of a diffusion model. Never use its numbers as results:
the score is ``5 + sum_i (1 - w_i)^2 * (1 + 4 i / (steps - 1)) * 10`` (late steps, near the image, are
more sensitive to a narrow width), and GFLOPs come from the supernet's real cost table.

Below the search's ``n_images`` (a multi-fidelity rung) the score gets a small-sample bias
``b_g * (1 / n - 1 / n_images)`` with ``b_g`` in [0, 400) drawn from the genome's hash: positive and
different per genome, as a real FID's is, so a low rung may rank candidates differently from the top
rung, and deterministic per (genome, image count), so the service and a local search agree.

A low rung of a search ranked by ``paired`` also gets a stand-in ``paired_distance`` (not a feature
distance): the score's width term (0 for full width) plus its own small-sample noise
``c_g * 4 / n`` with ``c_g`` in [0, 1) from another part of the genome's hash, 0 for the full width
itself: deterministic, close to the top-rung order but not the rung FID's order. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ddsm_core.costs import CostTable
from ddsm_core.spec import SearchSpec

EXTRACTOR = "fast-analytic (benchmark only, not an FID)"
BIAS = 400.0
PAIRED_NOISE = 4.0


def _hash_unit(genome: Sequence[int], part: int) -> float:
    """A number in [0, 1) fixed by the genome (``part`` picks which 4 bytes of its sha256)."""
    digest = hashlib.sha256(json.dumps([int(g) for g in genome]).encode()).digest()
    return int.from_bytes(digest[4 * part : 4 * part + 4], "big") / 2**32


def small_sample_bias(genome: Sequence[int], n_images: int, top: int) -> float:
    """The score's bias at ``n_images`` when the search's top rung has ``top`` images (0 from ``top`` up)."""
    if n_images >= top:
        return 0.0
    return BIAS * _hash_unit(genome, 0) * (1.0 / n_images - 1.0 / top)


def _width_term(spec: SearchSpec, genome: Sequence[int]) -> float:
    steps = spec.steps
    return sum(
        (1.0 - spec.widths[g]) ** 2 * (1.0 + 4.0 * i / max(steps - 1, 1)) * 10.0 for i, g in enumerate(genome)
    )


def fast_paired_distance(spec: SearchSpec, genome: Sequence[int], n_images: int) -> float:
    """The stand-in paired distance of ``genome`` at ``n_images`` images (0 for the full width)."""
    if tuple(int(g) for g in genome) == spec.full_width_genome():
        return 0.0
    return _width_term(spec, genome) + PAIRED_NOISE * _hash_unit(genome, 1) / n_images


def fast_metrics(
    spec: SearchSpec,
    genome: Sequence[int],
    table: CostTable,
    sleep_s: float = 0.0,
    n_images: int | None = None,
) -> dict[str, Any]:
    """The fast score and GFLOPs of ``genome`` with ``n_images`` images (default: the spec's)."""
    if sleep_s > 0:
        time.sleep(sleep_s)
    n = n_images or spec.n_images
    score = 5.0 + _width_term(spec, genome) + small_sample_bias(genome, n, spec.n_images)
    out = {"fid": score, "gflops": spec.gflops(genome, table), "extractor": EXTRACTOR, "latency_s": sleep_s}
    if spec.paired_rung(n):
        out["paired_distance"] = fast_paired_distance(spec, genome, n)
    return out


def journal(path: Path, **fields: Any) -> None:
    """Append one JSON line (``fields`` and the time) to ``path``: the fault benchmark's evidence of
    which evaluations ran to the end, and where. One ``write`` on an O_APPEND file, so lines from
    several worker processes never interleave."""
    line = json.dumps({**fields, "t": time.time()}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
