"""Are the paired intervals calibrated on REAL features? Disjoint seed sets of the digits benchmark.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python bench/paired_calibration.py [--images 16000]

bench/paired_bootstrap.md measures coverage on synthetic Gaussian features, where the bootstrap
(resampling with replacement) is too narrow even at N >> D. This script asks the same of the digits
benchmark's own 64-d features: it samples full width and a few DPM-Solver++-10 strategies of
`bench/digits-supernet` on seeds 0..S-1 (one thread), cuts the seeds into disjoint sets of N images,
and on each set computes both intervals of FID(strategy) - FID(full) (``paired_fid_diff`` with
``method="bootstrap"`` and ``"subsample"``). The target is E[diff_N], the mean of the sets' own
differences; coverage is the share of sets whose interval holds it, and ``width / need`` compares the
mean interval width with 2 x 1.96 x the sets' standard deviation (1.0 = calibrated). With S / N sets
the coverage has a Monte Carlo sd of about sqrt(0.95 x 0.05 / sets).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.digits_seed_check import parse_sampler, strategy_of_runs  # noqa: E402
from ddsm_core.checkpoint import load_checkpoint  # noqa: E402
from ddsm_core.evaluate import evaluate  # noqa: E402
from ddsm_core.features import get_extractor  # noqa: E402
from ddsm_core.fid import FeatureStats  # noqa: E402
from ddsm_core.flops import cost_table  # noqa: E402
from ddsm_core.paired import paired_fid_diff  # noqa: E402
from ddsm_core.strategy import Strategy  # noqa: E402
from ddsm_core.threads import set_threads  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=16000, help="seeds 0..S-1 per strategy")
    p.add_argument("--sizes", type=int, nargs="+", default=[500, 2000], help="images per disjoint set")
    p.add_argument("--boot", type=int, default=500, help="replicates per interval")
    p.add_argument("--sampler", default="dpmpp:10")
    p.add_argument("runs", nargs="*", default=["7/8x10", "2/8x4 8/8x6", "2/8x5 8/8x5"])
    args = p.parse_args()
    set_threads(1)
    sampler, steps = parse_sampler(p, args.sampler)
    model, schedule, _ = load_checkpoint(ROOT / "bench/digits-supernet")
    widths, costs = tuple(model.config.widths), cost_table(model)
    ext = get_extractor("domain", dataset="digits")
    ref = FeatureStats.load(ROOT / "bench/digits_ref_stats.npz")
    strategies = {"full": Strategy.uniform(sampler, steps, len(widths) - 1, widths)}
    for text in args.runs:
        strategies[text] = strategy_of_runs(p, text, sampler, steps, widths)
    feats = {}
    for name, s in strategies.items():
        t = time.perf_counter()
        feats[name] = evaluate(
            model, schedule, s, ref, ext, args.images, 0, 250, costs=costs, keep_features=True
        ).features
        print(f"sampled {name}: {time.perf_counter() - t:.0f} s", flush=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    print(
        f"\n- Command: `python bench/paired_calibration.py --images {args.images} --boot {args.boot} "
        f"--sampler {args.sampler}`"
    )
    print(
        f"- Machine: {platform.machine()}, one thread; "
        f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; git {commit}"
    )
    print("\n| strategy | N | sets | E[diff_N] | sd of diff_N | method | coverage | width / need | CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        sets = args.images // size
        for name in [k for k in strategies if k != "full"]:
            parts = [slice(i * size, (i + 1) * size) for i in range(sets)]
            results = {m: [] for m in ("bootstrap", "subsample")}
            cpu = {}
            for m in results:
                t = time.process_time()
                for s in parts:
                    results[m].append(
                        paired_fid_diff(
                            feats["full"][s], feats[name][s], ref, n_boot=args.boot, seed=0, method=m
                        )
                    )
                cpu[m] = time.process_time() - t
            diffs = np.array([r.diff for r in results["bootstrap"]])
            target, sd = diffs.mean(), diffs.std(ddof=1)
            for m, rs in results.items():
                cover = np.mean([r.low <= target <= r.high for r in rs])
                width = np.mean([r.high - r.low for r in rs]) / (2 * 1.96 * sd)
                print(
                    f"| {name} | {size} | {sets} | {target:+.3f} | {sd:.3f} | {m} | {cover:.2f} "
                    f"| {width:.2f} | {cpu[m]:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
