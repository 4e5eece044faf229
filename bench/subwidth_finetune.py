"""Do the supernet's sub-widths, not the search, bound the step-aware saving? A fine-tuning probe.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python bench/subwidth_finetune.py --arm decay --steps 800
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python bench/subwidth_finetune.py --arm all-widths --steps 800

Uniform 7/8 of the benchmark supernet is 14-17% worse than full width at 8000 paired images (DDPM-20
and DPM-Solver++-10, bench/digits_search/notes.md), although its eval loss is only 0.7% higher: a
strategy can then use narrow widths only where any width will do. This script fine-tunes the committed
EMA weights (`bench/digits-supernet`, step 4000) for ``--steps`` more sandwich-rule steps with a fresh
Adam and a cosine LR from ``--lr`` to 0, and measures full width, uniform 7/8 and the DDPM-20
schedules given against full width on the same ``--images`` seeds (paired 95% intervals):

- ``decay``: the recipe's sandwich rule (largest, 2 random middle widths, smallest): what an LR decay
  alone does to every width;
- ``all-widths``: every width every step (``n_middle`` = all middle widths): more training for the
  sub-widths at the same number of steps.

The weights go to ``--out`` (not committed). One thread; about 10-20 CPU-minutes per arm plus the
evaluation.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddsm_core.checkpoint import load_checkpoint  # noqa: E402
from ddsm_core.data import load_dataset  # noqa: E402
from ddsm_core.evaluate import evaluate  # noqa: E402
from ddsm_core.features import get_extractor  # noqa: E402
from ddsm_core.fid import FeatureStats  # noqa: E402
from ddsm_core.flops import cost_table  # noqa: E402
from ddsm_core.paired import paired_fid_diff  # noqa: E402
from ddsm_core.strategy import Strategy  # noqa: E402
from ddsm_core.threads import set_threads  # noqa: E402
from ddsm_core.train_step import ema_update, sandwich_widths, train_step  # noqa: E402
from ddsm_core.widths import format_width  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def finetune(model, schedule, arm: str, steps: int, lr: float, batch: int, seed: int, log) -> torch.nn.Module:
    """``steps`` sandwich-rule steps from ``model``'s weights; returns the EMA (decay 0.995, started at
    the loaded weights)."""
    data = load_dataset("digits", split="train")
    xs = torch.stack([data[i][0] for i in range(len(data))])
    widths = tuple(model.config.widths)
    n_middle = len(widths) - 2 if arm == "all-widths" else 2
    net = copy.deepcopy(model).train()
    ema = copy.deepcopy(model).eval()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    warmup = min(50, steps // 10)
    started = time.process_time()
    for step in range(steps):
        f = (
            (step + 1) / warmup
            if step < warmup
            else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))
        )
        for g in opt.param_groups:
            g["lr"] = lr * f
        idx = torch.randint(0, len(xs), (batch,), generator=gen)
        t = torch.randint(0, schedule.T, (batch,), generator=gen)
        noise = torch.randn((batch, *xs.shape[1:]), generator=gen)
        w = sandwich_widths(widths, n_middle, gen)
        opt.zero_grad(set_to_none=True)
        losses = train_step(net, schedule, xs[idx], None, t, noise, w)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema_update(ema, net, 0.995)
        if step % 100 == 0 or step == steps - 1:
            loss = " ".join(f"{format_width(k)} {v.item():.4f}" for k, v in sorted(losses.items()))
            log(f"step {step}: lr {lr * f:.2e}, {loss}, {time.process_time() - started:.0f} CPU-s")
    return ema


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arm", choices=("decay", "all-widths", "none"), required=True)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=4000, help="paired images (seeds 0..N-1)")
    p.add_argument("--out", type=Path, default=Path("runs/subwidth_finetune"))
    p.add_argument("runs", nargs="*", default=["2/8x11 8/8x9", "2/8x13 8/8x7"], help="DDPM-20 schedules")
    args = p.parse_args()
    set_threads(1)
    torch.manual_seed(args.seed)

    def log(msg: str) -> None:
        print(msg, flush=True)

    model, schedule, _ = load_checkpoint(ROOT / "bench/digits-supernet")
    if args.arm != "none":
        model = finetune(model, schedule, args.arm, args.steps, args.lr, args.batch, args.seed, log)
        args.out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.out / f"{args.arm}_{args.steps}.pt")
    widths, costs = tuple(model.config.widths), cost_table(model)
    names = [format_width(w) for w in widths]
    top = len(widths) - 1
    strategies = {
        "full": Strategy.uniform("ddpm", 20, top, widths),
        "7/8": Strategy.uniform("ddpm", 20, top - 1, widths),
    }
    for text in args.runs:
        genes = [names.index(w) for run in text.split() for w, k in [run.split("x")] for _ in range(int(k))]
        strategies[text] = Strategy("ddpm", 20, widths, tuple(genes))
    ext = get_extractor("domain", dataset="digits")
    ref = FeatureStats.load(ROOT / "bench/digits_ref_stats.npz")
    feats = {}
    for name, s in strategies.items():
        r = evaluate(model, schedule, s, ref, ext, args.images, 0, 250, costs=costs, keep_features=True)
        feats[name] = r.features
        log(f"{args.arm}: {name}: FID@{args.images} {r.fid:.2f}, {r.gflops:.4f} GFLOPs")
    for name in [k for k in strategies if k != "full"]:
        d = paired_fid_diff(feats["full"], feats[name], ref, seed=0)
        log(f"{args.arm}: {args.images} images, {name} - full: {d.describe(0.05 * d.fid_a)}")


if __name__ == "__main__":
    main()
