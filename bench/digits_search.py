"""Digits benchmark end to end on CPU: uniform widths vs the searched step-aware strategy.

    .venv/bin/python bench/digits_search.py --checkpoint /work/artifacts/digits-supernet \
        --out bench/digits_search --md bench/digits_search.md

1. reference statistics of the digits training split with the domain extractor (domain:digits-cnn-v1);
2. every uniform width, the two-level "small early / large late" strategy and its reverse, over 3 seed
   sets (FID mean and spread, GFLOPs, CPU latency);
3. a local NSGA-II search (``ddsm search``'s code path) writing the report folder;
4. the pick and the knee over the same 3 seed sets; targets checked and written to the markdown.
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
from ddsm_core.spec import SearchSpec  # noqa: E402
from ddsm_core.strategy import Strategy  # noqa: E402
from ddsm_core.widths import format_width  # noqa: E402

SEED_SETS = (0, 100_000, 200_000)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("bench/digits_search"))
    p.add_argument("--md", type=Path, default=Path("bench/digits_search.md"))
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--images", type=int, default=500, help="images per baseline evaluation (x3 seed sets)")
    p.add_argument("--search-images", type=int, default=200)
    p.add_argument("--final-images", type=int, default=500)
    p.add_argument("--population", type=int, default=20)
    p.add_argument("--generations", type=int, default=6)
    p.add_argument("--weight", type=float, default=1.5)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--render-only", action="store_true", help="rewrite the markdown from OUT/bench.json")
    args = p.parse_args()
    if args.render_only:
        saved = json.loads((args.out / "bench.json").read_text())
        res = json.loads((args.out / "results.json").read_text())
        t = saved["timings"]
        args.command, args.date, args.git = saved.get("command", ""), saved.get("date"), saved.get("git")
        write_markdown(args, saved["rows"], res, saved["manifest"], t["baselines"], t["search"], t["total"])
        return
    args.command = " ".join([Path(sys.executable).name, *sys.argv])
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)

    model, schedule, manifest = load_checkpoint(args.checkpoint)
    widths, steps, costs = tuple(model.config.widths), args.steps, cost_table(model)
    ext = get_extractor("domain", dataset="digits")
    ref = reference_stats("digits", ext)
    ref.save(args.out / "ref_stats.npz")
    n_w = len(widths)

    memo: dict[tuple[int, ...], dict] = {}

    def run(strategy: Strategy) -> dict:
        if strategy.genes in memo:
            return memo[strategy.genes]
        rs = [
            evaluate(model, schedule, strategy, ref, ext, args.images, s, args.batch_size, costs=costs)
            for s in SEED_SETS
        ]
        fids = [r.fid for r in rs if r.ok]
        memo[strategy.genes] = {
            "strategy": strategy.describe(),
            "genes": list(strategy.genes),
            "fids": fids,
            "fid": statistics.mean(fids) if fids else None,
            "fid_sd": statistics.stdev(fids) if len(fids) > 1 else None,
            "fid_range": (max(fids) - min(fids)) if fids else None,
            "gflops": rs[0].gflops,
            "gflops_per_call": rs[0].gflops_per_call,
            "latency_s": statistics.median(r.latency_s for r in rs),
            "n_images": args.images,
            "failed": [r.reason for r in rs if not r.ok],
        }
        return memo[strategy.genes]

    rows: dict[str, dict] = {}
    for i, w in enumerate(widths):
        rows[f"uniform {format_width(w)}"] = run(Strategy.uniform(args.sampler, steps, i, widths))
        print(f"uniform {format_width(w)}: {rows[f'uniform {format_width(w)}']['fid']}", flush=True)
    half = steps // 2
    early_small = Strategy(args.sampler, steps, widths, (0,) * half + (n_w - 1,) * (steps - half))
    early_large = Strategy(args.sampler, steps, widths, (n_w - 1,) * half + (0,) * (steps - half))
    rows["2/8 early, 8/8 late"] = run(early_small)
    rows["8/8 early, 2/8 late (reverse)"] = run(early_large)
    t_baselines = time.perf_counter() - t_start

    spec = SearchSpec(
        sampler=args.sampler, steps=steps, population=args.population, generations=args.generations,
        n_images=args.search_images, final_images=args.final_images, weight=args.weight,
        batch_size=args.batch_size,
    )  # fmt: skip
    res = search_to_folder(
        args.checkpoint, args.out, spec, stats=args.out / "ref_stats.npz", progress=True, resume=True
    )
    t_search = res["cost"]["total_wall_s"]
    for name in ("pick", "knee"):
        genes = res[name]["genome"]
        rows[f"searched {name}"] = run(Strategy(args.sampler, steps, widths, tuple(genes)))
    # the front's best FID at (or below) the cost of uniform 5/8 and 6/8, from the search's candidates
    front = [(c["objectives"][1], c["objectives"][0], c["genome"]) for c in res["front"]]
    at_cost = {}
    for label in ("5/8", "6/8"):
        u = rows.get(f"uniform {label}")
        if u is None:
            continue
        below = [f for f in front if f[0] <= u["gflops"] + 1e-12]
        if below:
            best = min(below, key=lambda f: f[1])
            rows[f"front at <= uniform {label} cost"] = run(
                Strategy(args.sampler, steps, widths, tuple(best[2]))
            )
            at_cost[label] = rows[f"front at <= uniform {label} cost"]
    (args.out / "bench.json").write_text(
        json.dumps({"rows": rows, "args": vars(args)}, default=str, indent=1)
    )
    write_markdown(args, rows, res, manifest, t_baselines, t_search, time.perf_counter() - t_start)


def _f(v: float | None, d: int = 3) -> str:
    return "-" if v is None else f"{v:.{d}f}"


def write_markdown(args, rows, res, manifest, t_base: float, t_search: float, t_total: float) -> None:
    full = rows[f"uniform {format_width(1.0)}"]
    small = rows[f"uniform {format_width(min(res['config']['widths']))}"]
    pick = rows["searched pick"]
    spread = full["fid_range"] or 0.0
    se, rev = rows["2/8 early, 8/8 late"], rows["8/8 early, 2/8 late (reverse)"]
    lines = [
        "# Digits benchmark: step-aware width search on CPU",
        "",
        f"- date: {getattr(args, 'date', None) or time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with other "
        f"jobs), torch {torch.__version__}, {args.threads} threads",
        f"- command: `{args.command}`",
        f"- git: {getattr(args, 'git', None) or _git()}",
        f"- supernet: `{args.checkpoint}` (step {manifest.get('step')}, written {manifest.get('created')}; "
        f"recipe {_recipe(manifest)}), sampler {args.sampler}, "
        f"{args.steps} steps; FID (domain:digits-cnn-v1) against the 1500 training digits",
        f"- every row: {args.images} images x 3 seed sets {SEED_SETS} (image i of a set uses seed base+i, "
        "the same for every strategy); FID = mean over the sets, +- = standard deviation, range = max-min",
        "",
        "| strategy | FID mean | sd | range | GFLOPs/image | GFLOPs/call | saved | CPU ms/image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        saved = 1 - r["gflops"] / full["gflops"]
        lines.append(
            f"| {name}: `{r['strategy']}` | {_f(r['fid'])} | {_f(r['fid_sd'])} | {_f(r['fid_range'])} | "
            f"{_f(r['gflops'], 4)} | {_f(r['gflops_per_call'], 4)} | {100 * saved:.0f}% | "
            f"{_f(1000 * r['latency_s'], 2)} |"
        )
    checks = [
        ("smallest uniform width >= 1.5x full width's FID", small["fid"] >= 1.5 * full["fid"],
         f"{_f(small['fid'])} vs {_f(full['fid'])} ({small['fid'] / full['fid']:.2f}x)"),
        ("pick saves >= 50% GFLOPs", 1 - pick["gflops"] / full["gflops"] >= 0.5,
         f"{100 * (1 - pick['gflops'] / full['gflops']):.0f}%"),
        ("pick FID within full width's seed spread", pick["fid"] <= full["fid"] + spread,
         f"{_f(pick['fid'])} vs {_f(full['fid'])} + range {_f(spread)}"),
        ("small-early/large-late beats its reverse by far (gap > 3x the larger seed range)",
         rev["fid"] - se["fid"] > 3 * max(se["fid_range"], rev["fid_range"]),
         f"{_f(se['fid'])} vs {_f(rev['fid'])}: gap {_f(rev['fid'] - se['fid'])}, ranges "
         f"{_f(se['fid_range'])} / {_f(rev['fid_range'])}"),
    ]  # fmt: skip
    for label in ("5/8", "6/8"):
        key = f"front at <= uniform {label} cost"
        if key in rows:
            u = rows[f"uniform {label}"]
            r = rows[key]
            numbers = f"{_f(r['fid'])} at {_f(r['gflops'], 4)} vs {_f(u['fid'])} at {_f(u['gflops'], 4)}"
            checks.append((f"front beats uniform {label} at its GFLOPs", r["fid"] < u["fid"], numbers))
    lines += ["", "## Targets", "", "| target | met | numbers |", "|---|---|---|"]
    lines += [f"| {t} | {'yes' if ok else '**no**'} | {n} |" for t, ok, n in checks]
    cost = res["cost"]
    cfg = res["config"]
    lines += [
        "",
        "## Search",
        "",
        f"NSGA-II population {cfg['population']}, generations {cfg['generations']}, mutation "
        f"{cfg['mutation_rate']} per gene, {cfg['crossover']} crossover, {cfg['n_images']} images per "
        f"candidate, weight {cfg['weight']};"
        f" pick `{res['final']['pick']['strategy']}`, knee `{res['final']['knee']['strategy']}`.",
        "",
        f"- candidates evaluated: {cost['evaluations']}",
        f"- images sampled: {cost['search_images_sampled']} (search) + {cost['final_images_sampled']} "
        "(finalists)",
        f"- network calls (image x step): {cost['search_network_calls']} in the search, of which "
        f"{cost['search_network_calls_run']} were run (the rest reused from the prefix cache); "
        f"{cost['final_network_calls']} for the finalists",
        f"- wall time: search {cost['search_wall_s']:.0f} s, whole `ddsm search` {t_search:.0f} s; baselines "
        f"{t_base:.0f} s; this whole benchmark {t_total:.0f} s",
        "",
        "![pareto](digits_search/pareto.png) ![strategy](digits_search/strategy.png)",
        "",
        "![samples](digits_search/samples.png)",
        "",
    ]
    args.md.write_text("\n".join(lines))
    print("\n".join(lines))


def _recipe(manifest: dict) -> str:
    tc = manifest.get("train_config") or {}
    keys = ("steps", "batch_size", "lr", "lr_schedule", "ema_decay")
    return ", ".join(f"{k} {tc[k]}" for k in keys if k in tc)


def _git() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except Exception:
        return "?"


if __name__ == "__main__":
    main()
