"""Warm start on CPU: generations a DDIM-10 search seeded with a transferred DDPM-20 pick needs to reach
the score a cold DDIM-10 search ends with.

    PYTHONPATH=. python bench/warm_start.py --checkpoint CKPT --stats STATS.npz --out /tmp/ws

1. a DDPM-20 search (the source) writes its pick (``pick.json``);
2. a cold DDIM-10 search and a warm one (``--warm-start pick.json``: the pick transferred to DDIM-10 by
   log-SNR) run with the same settings and NSGA-II seed;
3. per generation, the best pick score so far (FID + weight x GFLOPs/image on the search's images, the
   criterion the pick minimises) of each; the warm search "reaches" the cold one at the first generation
   whose best score is at most the cold search's final one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddsm_core.cli.search_cmd import search_to_folder  # noqa: E402
from ddsm_core.spec import SearchSpec  # noqa: E402


def best_per_generation(results: dict, weight: float) -> list[float]:
    """Best FID + weight x GFLOPs over the candidates of generations 1..g, for each g."""
    gens = max(c["generation"] for c in results["candidates"])
    out, best = [], float("inf")
    for g in range(1, gens + 1):
        for c in results["candidates"]:
            if c["generation"] == g and c["objectives"] is not None:
                fid, gflops = c["objectives"]
                best = min(best, fid + weight * gflops)
        out.append(best)
    return out


def _git() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--stats", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("/tmp/warm_start"))
    p.add_argument("--md", type=Path, default=Path("bench/warm_start.md"))
    p.add_argument("--population", type=int, default=12)
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--final-images", type=int, default=128)
    p.add_argument("--weight", type=float, default=1.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    common = dict(population=args.population, generations=args.generations, n_images=args.images,
                  final_images=args.final_images, weight=args.weight, seed=args.seed)  # fmt: skip
    runs: dict[str, dict] = {}
    wall: dict[str, float] = {}
    plan = [
        ("source ddpm/20", args.out / "source_ddpm20", SearchSpec(sampler="ddpm", steps=20, **common), ()),
        ("cold ddim/10", args.out / "cold_ddim10", SearchSpec(sampler="ddim", steps=10, **common), ()),
        ("warm ddim/10", args.out / "warm_ddim10", SearchSpec(sampler="ddim", steps=10, **common),
         (args.out / "source_ddpm20" / "pick.json",)),
    ]  # fmt: skip
    for name, folder, spec, warm in plan:
        start = time.perf_counter()
        runs[name] = search_to_folder(
            args.checkpoint,
            folder,
            spec,
            stats=args.stats,
            progress=False,
            warm_start=warm,
            n_sample_images=16,
        )
        wall[name] = time.perf_counter() - start
        print(f"{name}: {wall[name]:.0f} s", flush=True)
    cold = best_per_generation(runs["cold ddim/10"], args.weight)
    warm = best_per_generation(runs["warm ddim/10"], args.weight)
    target = cold[-1]
    reached = next((g + 1 for g, v in enumerate(warm) if v <= target), None)
    seed_genes = runs["warm ddim/10"]["config"]["initial"]
    seed_score = next(
        c["objectives"][0] + args.weight * c["objectives"][1]
        for c in runs["warm ddim/10"]["candidates"] if c["genome"] == seed_genes[0]
    )  # fmt: skip
    rows = [f"| {g + 1} | {c:.2f} | {w:.2f} |" for g, (c, w) in enumerate(zip(cold, warm, strict=True))]
    final = {k: runs[k]["final"]["pick"] for k in ("cold ddim/10", "warm ddim/10")}
    command = " ".join(["python", *sys.argv])
    md = [
        "# Warm start: a DDPM-20 pick transferred to DDIM-10 seeds a DDIM-10 search",
        "",
        f"- command: `PYTHONPATH=. {command}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs, torch threads "
        f"{args.threads}, CPU; date {time.strftime('%Y-%m-%d', time.gmtime())}; git {_git()}",
        "- supernet: `ddsm train --preset digits --dataset digits --steps 60 --threads 1` (a 60-step "
        "supernet: FIDs are large and serve the comparison only); FID is domain:digits-cnn-v1",
        f"- every search: population {args.population}, {args.generations} generations, {args.images} "
        f"images per candidate, NSGA-II seed {args.seed}, weight {args.weight}; score = FID + "
        f"{args.weight} x GFLOPs/image on the search's images (what the pick minimises)",
        f"- seed: the source pick {runs['source ddpm/20']['final']['pick']['strategy']} -> transferred "
        f"genome {seed_genes[0]} (score {seed_score:.2f} in the warm search's first generation)",
        "",
        "| generation | cold ddim/10: best score so far | warm ddim/10: best score so far |",
        "|---|---|---|",
        *rows,
        "",
        f"The cold search ends at {target:.2f}. The warm search reaches it "
        + (
            f"in generation {reached} of {len(warm)}."
            if reached
            else f"in none of its {len(warm)} generations."
        ),
        "",
        f"Finalists ({args.final_images} images): cold pick {final['cold ddim/10']['strategy']} FID "
        f"{final['cold ddim/10']['fid']:.2f}, {final['cold ddim/10']['gflops']:.3f} GFLOPs; warm pick "
        f"{final['warm ddim/10']['strategy']} FID {final['warm ddim/10']['fid']:.2f}, "
        f"{final['warm ddim/10']['gflops']:.3f} GFLOPs.",
        "",
        "Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in wall.items()) + ".",
        "",
    ]
    args.md.write_text("\n".join(md))
    (args.out / "bench.json").write_text(json.dumps({"cold": cold, "warm": warm, "wall": wall}, indent=1))
    print("\n".join(md))


if __name__ == "__main__":
    main()
