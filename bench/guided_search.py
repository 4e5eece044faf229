"""Digits benchmark, guided row: a class-conditional supernet with label dropout, guidance 2, DDPM-20.

    .venv/bin/python bench/guided_search.py --out bench/guided_search --md bench/guided_search.md

1. train (or resume) a class-conditional digits supernet with label dropout 0.1 (the digits recipe,
   ``ddsm train --class-cond --label-dropout 0.1``) unless ``--checkpoint`` names one;
2. reference statistics of the digits training split with the domain extractor (domain:digits-cnn-v1);
3. uniform full and smallest width at guidance 1 (the conditional model) and at ``--guidance``, over
   the same seed sets (labels ``seed % 10``: every class alike, as the reference statistics);
4. a local NSGA-II search on the guided sampler (``ddsm search --guidance``'s code path) and its
   pick over the same seed sets. GFLOPs count both passes of every guided call.

``--smoke`` shrinks everything (training steps, images, population) to check the pipeline; its numbers
say nothing about quality and the markdown says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddsm_core.checkpoint import load_checkpoint  # noqa: E402
from ddsm_core.cli.search_cmd import search_to_folder  # noqa: E402
from ddsm_core.evaluate import evaluate  # noqa: E402
from ddsm_core.features import get_extractor, reference_stats  # noqa: E402
from ddsm_core.flops import cost_table  # noqa: E402
from ddsm_core.recipes import resolve_recipe  # noqa: E402
from ddsm_core.spec import SearchSpec  # noqa: E402
from ddsm_core.strategy import Strategy  # noqa: E402
from ddsm_core.trainer import train  # noqa: E402
from ddsm_core.widths import format_width  # noqa: E402

FULL = {"train_steps": None, "images": 500, "seed_sets": (0, 100_000, 200_000), "search_images": 200,
        "final_images": 500, "population": 20, "generations": 6}  # fmt: skip
SMOKE = {"train_steps": 40, "images": 24, "seed_sets": (0, 100_000), "search_images": 16,
         "final_images": 24, "population": 8, "generations": 1}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", type=Path, help="a class-conditional supernet with a null label")
    p.add_argument("--out", type=Path, default=Path("bench/guided_search"))
    p.add_argument("--md", type=Path, default=Path("bench/guided_search.md"))
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--label-dropout", type=float, default=0.1)
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--weight", type=float, default=1.5)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the pipeline, not quality")
    args = p.parse_args()
    size = SMOKE if args.smoke else FULL
    args.command = " ".join([Path(sys.executable).name, *sys.argv])
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)

    checkpoint = args.checkpoint or train_supernet(args, size["train_steps"])
    t_train = time.perf_counter() - t_start
    model, schedule, manifest = load_checkpoint(checkpoint)
    if model.config.null_class is None:
        sys.exit(f"error: {checkpoint} has no null label: train it with --class-cond --label-dropout")
    widths, costs = tuple(model.config.widths), cost_table(model)
    ext = get_extractor("domain", dataset="digits")
    ref = reference_stats("digits", ext)
    ref.save(args.out / "ref_stats.npz")

    def run(strategy: Strategy, guidance: float | None) -> dict:
        rs = [
            evaluate(model, schedule, strategy, ref, ext, size["images"], s, args.batch_size, costs=costs,
                     guidance=guidance)
            for s in size["seed_sets"]
        ]  # fmt: skip
        fids = [r.fid for r in rs if r.ok]
        return {
            "strategy": strategy.describe(), "guidance": guidance, "fids": fids,
            "fid": statistics.mean(fids) if fids else None,
            "fid_range": (max(fids) - min(fids)) if fids else None,
            "gflops": rs[0].gflops, "latency_s": statistics.median(r.latency_s for r in rs),
            "failed": [r.reason for r in rs if not r.ok],
        }  # fmt: skip

    rows: dict[str, dict] = {}
    for label, index in (("full width", len(widths) - 1), ("smallest width", 0)):
        strategy = Strategy.uniform(args.sampler, args.steps, index, widths)
        name = format_width(widths[index])
        rows[f"{label} {name}, conditional (guidance 1)"] = run(strategy, 1.0)
        rows[f"{label} {name}, guidance {args.guidance:g}"] = run(strategy, args.guidance)
        print(f"{label}: {rows[f'{label} {name}, guidance {args.guidance:g}']['fid']}", flush=True)
    t_baselines = time.perf_counter() - t_start - t_train

    spec = SearchSpec(
        sampler=args.sampler, steps=args.steps, population=size["population"],
        generations=size["generations"], n_images=size["search_images"], final_images=size["final_images"],
        weight=args.weight, batch_size=args.batch_size, guidance=args.guidance,
        pick_rule="weighted",  # as recorded in guided_search.md (made before the tolerance rule)
    )  # fmt: skip
    res = search_to_folder(checkpoint, args.out, spec, stats=args.out / "ref_stats.npz", progress=False)
    pick = Strategy(args.sampler, args.steps, widths, tuple(res["pick"]["genome"]))
    rows[f"searched pick, guidance {args.guidance:g}"] = run(pick, args.guidance)
    timings = {"train": t_train, "baselines": t_baselines, "search": res["cost"]["total_wall_s"],
               "total": time.perf_counter() - t_start}  # fmt: skip
    (args.out / "bench.json").write_text(json.dumps({"rows": rows, "timings": timings}, indent=1))
    write_markdown(args, size, checkpoint, manifest, rows, timings)


def train_supernet(args: argparse.Namespace, steps: int | None) -> Path:
    """The digits recipe, class-conditional with label dropout; resumes a run left in OUT/supernet."""
    overrides = {"label_dropout": args.label_dropout, "sample_every": 0}
    if steps is not None:
        overrides |= {"steps": steps, "warmup_steps": min(50, steps // 4), "checkpoint_every": steps,
                      "eval_images": 0}  # fmt: skip
    model_config, config = resolve_recipe("digits", overrides, class_cond=True)
    result = train(model_config, config, args.out / "supernet", resume=True, device="cpu", progress=False)
    if result.checkpoint is None:
        sys.exit("error: training ended without a checkpoint")
    return result.checkpoint


def _f(v: float | None, d: int = 3) -> str:
    return "-" if v is None else f"{v:.{d}f}"


def write_markdown(args, size, checkpoint, manifest, rows, timings) -> None:
    full = next(r for k, r in rows.items() if k.startswith("full width") and r["guidance"] == 1.0)
    recipe = manifest.get("train_config") or {}
    lines = [
        "# Digits benchmark, guided row: classifier-free guidance on a step-aware search",
        "",
        *(
            [
                "**SMOKE RUN** (`--smoke`: a supernet trained for "
                f"{recipe.get('steps')} steps, {size['images']} images per row): the numbers check that the "
                "pipeline runs; they say nothing about quality.",
                "",
            ]
            if args.smoke
            else []
        ),
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with other "
        f"jobs), torch {torch.__version__}, {args.threads} threads",
        f"- command: `{args.command}`",
        f"- git: {_git()}",
        f"- supernet: `{checkpoint}` (step {manifest.get('step')}, class-conditional, label dropout "
        f"{recipe.get('label_dropout')}), sampler {args.sampler}, {args.steps} steps; labels seed % 10",
        f"- every row: {size['images']} images x {len(size['seed_sets'])} seed sets {size['seed_sets']}; "
        "FID (domain:digits-cnn-v1) against the 1500 training digits, mean over the sets, range = max-min",
        "- GFLOPs/image count both passes of a guided call (conditional + unconditional), also at guidance 1",
        "",
        "| row | strategy | FID mean | range | GFLOPs/image | vs conditional full width | CPU ms/image |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | `{r['strategy']}` | {_f(r['fid'])} | {_f(r['fid_range'])} | {_f(r['gflops'], 4)} | "
            f"{r['gflops'] / full['gflops']:.2f}x | {_f(1000 * r['latency_s'], 2)} |"
        )
    lines += ["", "Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), ""]
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text("\n".join(lines))
    print("\n".join(lines))


def _git() -> str:
    try:
        cmd = ["git", "rev-parse", "--short", "HEAD"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
