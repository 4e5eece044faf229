"""A deliberately trivial evaluator for benchmarks and service tests (``DDSM_EVALUATOR=fast``).

It replaces sampling + FID by an analytic score, so the service's own overhead (queue, database,
controller) can be measured without the cost of a diffusion model. Never use its numbers as results:
the score is ``5 + sum_i (1 - w_i)^2 * (1 + 4 i / (steps - 1)) * 10`` (late steps, near the image, are
more sensitive to a narrow width), and GFLOPs come from the supernet's real cost table. Torch-free.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ddsm_core.costs import CostTable
from ddsm_core.spec import SearchSpec

EXTRACTOR = "fast-analytic (benchmark only, not an FID)"


def fast_metrics(
    spec: SearchSpec, genome: Sequence[int], table: CostTable, sleep_s: float = 0.0
) -> dict[str, Any]:
    if sleep_s > 0:
        time.sleep(sleep_s)
    steps = spec.steps
    score = 5.0 + sum(
        (1.0 - spec.widths[g]) ** 2 * (1.0 + 4.0 * i / max(steps - 1, 1)) * 10.0 for i, g in enumerate(genome)
    )
    return {"fid": score, "gflops": spec.gflops(genome, table), "extractor": EXTRACTOR, "latency_s": sleep_s}
