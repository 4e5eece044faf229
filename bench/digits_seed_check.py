"""Is a 2000-image paired FID difference stable across seed sets? (bench/digits_search/notes.md)

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python bench/digits_seed_check.py 4000 ["2/8x11 8/8x9" ...]

Samples full width, uniform 7/8 and the DDPM-20 strategies given (default: ``2/8 x13, 8/8 x7``; each
as width x count runs) of the benchmark supernet on seeds 0..N-1 (one thread), prints each one's FID on
consecutive 1000- and 2000-image seed sets and on all N, and the paired interval vs full width on the
first 500, 1000, 2000, 4000 and 8000 images (those up to N). ``--checkpoint`` and ``--guidance`` run
the same on a class-conditional supernet's guided sampler (labels seed % 10). ``--sampler dpmpp:10``
runs another sampler and step count (default ``ddpm:20``; the strategies then give that many steps).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddsm_core.checkpoint import load_checkpoint  # noqa: E402
from ddsm_core.errors import DDSMError  # noqa: E402
from ddsm_core.evaluate import evaluate  # noqa: E402
from ddsm_core.features import get_extractor  # noqa: E402
from ddsm_core.fid import FeatureStats, frechet_distance  # noqa: E402
from ddsm_core.flops import cost_table  # noqa: E402
from ddsm_core.paired import paired_fid_diff  # noqa: E402
from ddsm_core.strategy import Strategy  # noqa: E402
from ddsm_core.threads import set_threads  # noqa: E402
from ddsm_core.widths import format_width  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse_sampler(p: argparse.ArgumentParser, text: str) -> tuple[str, int]:
    """``"dpmpp:10"`` -> ``("dpmpp", 10)``; a usage error otherwise."""
    sampler, _, steps = text.partition(":")
    if not sampler or not steps.isdigit():
        p.error(f"--sampler {text!r}: give SAMPLER:STEPS, e.g. dpmpp:10")
    return sampler, int(steps)


def strategy_of_runs(
    p: argparse.ArgumentParser, text: str, sampler: str, steps: int, widths: tuple[float, ...]
) -> Strategy:
    """``"2/8x13 8/8x7"`` (width x count, in sampling order) as a Strategy; a usage error otherwise."""
    names = [format_width(w) for w in widths]
    try:
        genes = [names.index(w) for run in text.split() for w, k in [run.split("x")] for _ in range(int(k))]
    except ValueError:
        example = '"2/8x11 8/8x9"'
        p.error(f"{text!r}: give WIDTHxCOUNT runs, e.g. {example}, widths from {', '.join(names)}")
    if len(genes) != steps:
        p.error(f"{text!r} gives {len(genes)} steps, the sampler runs {steps}")
    return Strategy(sampler, steps, widths, tuple(genes))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("n", type=int, nargs="?", default=4000, help="images (seeds 0..N-1)")
    p.add_argument("runs", nargs="*", default=["2/8x13 8/8x7"], help='strategies, e.g. "2/8x11 8/8x9"')
    p.add_argument("--checkpoint", type=Path, default=ROOT / "bench/digits-supernet")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance weight")
    p.add_argument("--sampler", default="ddpm:20", help="SAMPLER:STEPS, e.g. dpmpp:10 (default ddpm:20)")
    args = p.parse_args()
    n, runs = args.n, args.runs
    sampler, steps = parse_sampler(p, args.sampler)
    set_threads(1)
    try:
        model, schedule, _ = load_checkpoint(args.checkpoint)
    except DDSMError as e:
        p.error(str(e))
    widths, costs = tuple(model.config.widths), cost_table(model)
    ext = get_extractor("domain", dataset="digits")
    ref = FeatureStats.load(ROOT / "bench/digits_ref_stats.npz")
    top = len(widths) - 1
    strategies = {
        "full": Strategy.uniform(sampler, steps, top, widths),
        "7/8": Strategy.uniform(sampler, steps, top - 1, widths),
    }
    for text in runs:
        strategies[text] = strategy_of_runs(p, text, sampler, steps, widths)
    feats = {}
    for name, s in strategies.items():
        t = time.perf_counter()
        r = evaluate(
            model, schedule, s, ref, ext, n, 0, 250, costs=costs, keep_features=True, guidance=args.guidance
        )
        feats[name] = r.features
        print(
            f"{name} {s.describe()}: FID@{n} {r.fid:.2f}, {r.gflops:.4f} GFLOPs, "
            f"{time.perf_counter() - t:.0f} s"
        )

    def fid(x: np.ndarray) -> float:
        return frechet_distance(x.mean(0), np.cov(x, rowvar=False), ref.mu, ref.sigma)

    for name, x in feats.items():
        for size in (1000, 2000):
            sets = [f"{fid(x[i : i + size]):.2f}" for i in range(0, n - size + 1, size)]
            print(f"{name}: FID on consecutive {size}-image seed sets {', '.join(sets)}")
    for size in (500, 1000, 2000, 4000, 8000):
        if size > n:
            break
        for name in [k for k in strategies if k != "full"]:
            d = paired_fid_diff(feats["full"][:size], feats[name][:size], ref, seed=0)
            print(f"{size} images, {name} - full: {d.describe()}")


if __name__ == "__main__":
    main()
