"""Does a candidate benchmark supernet leave room for step-aware savings? (bench/train_digits_bench.md)

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python bench/supernet_probe.py CKPT [CKPT ...] \
        [--images 2000] [--sampler ddpm --steps 20] [--out probe.json]

For each checkpoint (a run directory or an exported one), samples a fixed set of strategies from the
same seeds (image i from seed i) and prints, per strategy, its FID on the first 297 images against the
real-data floor, its FID on all images, and the paired bootstrap interval vs full width on all images
with the "equal quality" verdict at 5% of full width's FID (bench/digits_search.md's protocol). The
strategies are the uniform widths 2/8, 4/8, 6/8, 7/8 and full, and small-early / full-late schedules
that save about 60% of full width's GFLOPs, which is what the search needs to find at equal quality.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddsm_core.checkpoint import load_checkpoint  # noqa: E402
from ddsm_core.evaluate import evaluate  # noqa: E402
from ddsm_core.features import get_extractor  # noqa: E402
from ddsm_core.fid import FeatureStats, frechet_distance  # noqa: E402
from ddsm_core.floor import floor_of  # noqa: E402
from ddsm_core.flops import cost_table  # noqa: E402
from ddsm_core.paired import DEFAULT_REL_TOLERANCE, paired_fid_diff  # noqa: E402
from ddsm_core.strategy import Strategy  # noqa: E402
from ddsm_core.threads import set_threads  # noqa: E402


def strategies(sampler: str, steps: int, widths: tuple[float, ...]) -> dict[str, Strategy]:
    top = len(widths) - 1
    out = {"8/8": Strategy.uniform(sampler, steps, top, widths)}
    for i, name in ((5, "7/8"), (4, "6/8"), (2, "4/8"), (0, "2/8")):
        out[name] = Strategy.uniform(sampler, steps, i, widths)

    def early_late(early: int, n_early: int, late: int = top) -> Strategy:
        return Strategy(sampler, steps, widths, (early,) * n_early + (late,) * (steps - n_early))

    k = round(steps * 0.65)  # 13 of 20: 2/8 early then full width saves ~61%
    out[f"2/8x{k} 8/8x{steps - k}"] = early_late(0, k)
    out[f"4/8x{k} 8/8x{steps - k}"] = early_late(2, k)
    half = steps // 2
    out[f"2/8x{half} 4/8x{steps - half - 3} 8/8x3"] = Strategy(
        sampler, steps, widths, (0,) * half + (2,) * (steps - half - 3) + (top,) * 3
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--sampler", default="ddpm")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--stats", type=Path, default=ROOT / "bench" / "digits_ref_stats.npz")
    parser.add_argument("--out", type=Path, default=None, help="append the rows to this JSON file")
    args = parser.parse_args()
    set_threads(1)
    ref = FeatureStats.load(args.stats)
    ext = get_extractor(ref.extractor, dataset="digits")
    floor = floor_of(ref, 297)
    rows = []
    for ckpt in args.checkpoints:
        model, schedule, manifest = load_checkpoint(ckpt)
        widths, costs = tuple(model.config.widths), cost_table(model)
        feats, res = {}, {}
        print(f"== {ckpt} (step {manifest['step']}), {args.sampler}-{args.steps}, {args.images} images")
        for name, s in strategies(args.sampler, args.steps, widths).items():
            t = time.perf_counter()
            r = evaluate(model, schedule, s, ref, ext, args.images, 0, 250, costs=costs, keep_features=True)
            feats[name], res[name] = r.features, r
            x = r.features[:297]
            f297 = frechet_distance(x.mean(0), np.cov(x, rowvar=False), ref.mu, ref.sigma)
            res[name] = (r, f297, time.perf_counter() - t)
        full = res["8/8"][0]
        tol = DEFAULT_REL_TOLERANCE * full.fid
        print(
            f"floor {floor.fid:.2f} at 297; tolerance {tol:.2f} "
            f"({DEFAULT_REL_TOLERANCE:.0%} of {full.fid:.2f})"
        )
        print("| strategy | saved | FID@297 | x floor | FID@all | - full [95%] | equal | s |")
        for name, (r, f297, sec) in res.items():
            d = paired_fid_diff(feats["8/8"], feats[name], ref, seed=0) if name != "8/8" else None
            saved = 1 - r.gflops / full.gflops
            cell = "-" if d is None else f"{d.diff:+.2f} [{d.low:+.2f}, {d.high:+.2f}]"
            eq = "-" if d is None else ("yes" if d.high <= tol else "no")
            print(
                f"| {name} | {saved:.0%} | {f297:.2f} | {f297 / floor.fid:.2f} | {r.fid:.2f} | {cell} "
                f"| {eq} | {sec:.0f} |"
            )
            rows.append({
                "checkpoint": str(ckpt), "step": manifest["step"], "strategy": name, "saved": saved,
                "fid297": f297, "fid": r.fid, "images": args.images,
                "paired": None if d is None else d.to_dict(), "tolerance": tol,
            })  # fmt: skip
        sys.stdout.flush()
    if args.out:
        old = json.loads(args.out.read_text()) if args.out.is_file() else []
        args.out.write_text(json.dumps(old + rows, indent=1))


if __name__ == "__main__":
    main()
