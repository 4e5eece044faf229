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
    p.add_argument("--seeds", default="0,1,2", help="NSGA-II seeds of the cold/warm pairs (the source: 0)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    # pick_rule: as recorded in warm_start.md (made before the tolerance rule)
    common = dict(population=args.population, generations=args.generations, n_images=args.images,
                  final_images=args.final_images, weight=args.weight, pick_rule="weighted")  # fmt: skip
    seeds = [int(v) for v in args.seeds.split(",")]
    wall: dict[str, float] = {}

    def run(name: str, folder: Path, spec: SearchSpec, warm: tuple[Path, ...] = ()) -> dict:
        start = time.perf_counter()
        res = search_to_folder(args.checkpoint, folder, spec, stats=args.stats, progress=False,
                               warm_start=warm, n_sample_images=16)  # fmt: skip
        wall[name] = time.perf_counter() - start
        print(f"{name}: {wall[name]:.0f} s", flush=True)
        return res

    source_dir = args.out / "source_ddpm20"
    source = run("source ddpm/20", source_dir, SearchSpec(sampler="ddpm", steps=20, seed=0, **common))
    rows, finals, seed_line = [], [], ""
    for seed in seeds:
        spec = SearchSpec(sampler="ddim", steps=10, seed=seed, **common)
        cold_res = run(f"cold ddim/10 seed {seed}", args.out / f"cold_ddim10_s{seed}", spec)
        warm_res = run(f"warm ddim/10 seed {seed}", args.out / f"warm_ddim10_s{seed}", spec,
                       (source_dir / "pick.json",))  # fmt: skip
        cold = best_per_generation(cold_res, args.weight)
        warm = best_per_generation(warm_res, args.weight)
        reached = next((g + 1 for g, v in enumerate(warm) if v <= cold[-1]), None)
        rows.append(
            f"| {seed} | {' / '.join(f'{v:.2f}' for v in cold)} | {' / '.join(f'{v:.2f}' for v in warm)} | "
            f"{reached if reached else f'not within {len(warm)}'} |"
        )
        fc, fw = cold_res["final"]["pick"], warm_res["final"]["pick"]
        finals.append(
            f"| {seed} | {fc['strategy']} | {fc['fid']:.2f} | {fc['gflops']:.3f} | {fw['strategy']} | "
            f"{fw['fid']:.2f} | {fw['gflops']:.3f} |"
        )
        genes = warm_res["config"]["initial"][0]
        score = next(c["objectives"][0] + args.weight * c["objectives"][1]
                     for c in warm_res["candidates"] if c["genome"] == genes)  # fmt: skip
        seed_line = f"transferred genome {genes} (its score: {score:.2f})"
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
        f"images per candidate, weight {args.weight}; score = FID + {args.weight} x GFLOPs/image on the "
        "search's images (what the pick minimises); cold and warm share settings and NSGA-II seed",
        f"- seed: the DDPM-20 search's pick {source['final']['pick']['strategy']} -> {seed_line}",
        "",
        "Best score so far after each generation, and the first generation in which the warm search is at",
        "or below the cold search's final best score:",
        "",
        "| NSGA-II seed | cold ddim/10 | warm ddim/10 | warm reaches cold's final score in generation |",
        "|---|---|---|---|",
        *rows,
        "",
        f"Finalists (pick, {args.final_images} images):",
        "",
        "| seed | cold pick | FID | GFLOPs | warm pick | FID | GFLOPs |",
        "|---|---|---|---|---|---|---|",
        *finals,
        "",
        "Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in wall.items()) + ".",
        "",
    ]
    args.md.write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
