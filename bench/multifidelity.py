"""Multi-fidelity search (the number of images is the fidelity): is a low rung's ranking right, and
what does a search with rungs cost and pick compared with the flat protocol?

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python bench/multifidelity.py \
        --checkpoint bench/digits-supernet --out /tmp/mf/bench --md bench/multifidelity.md

1. Ranking: ``--strategies`` held-out strategies (every uniform width, two-level "small early / large
   late" switches, seeded random genomes at several width levels; none comes from a search) are sampled
   with ``--images`` images from the same per-image seeds (common random numbers). Each low-rung metric
   at each rung (the first N of those seeds) is rank-correlated (Kendall tau) with the FID on all the
   images against the reference statistics:
   - ``fid``: plain FID on N images (biased upwards by ~1/N, by a per-candidate amount);
   - ``fid_inf``: FID extrapolated to N -> infinity, linear in 1/N over nested subsets N/4, N/2, N
     (Chong & Forsyth 2020);
   - ``kid``: unbiased KID (cubic polynomial kernel) on N images vs as many reference features;
   - ``paired``: mean squared feature distance to the full width's image of the same seed.
2. Search: the flat protocol (every candidate at ``--search-images``) against the multi-fidelity one
   (``--rungs`` below it, ``--promote`` promoted per rung, ranked by ``--rung-metric``, default the
   tool's) at equal population and generations, same NSGA-II seed: the picks re-evaluated on
   ``--final-images`` images from the same seeds, and the image-steps (images x network calls,
   prefix-cache reuse not subtracted) each search spent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddsm_core.checkpoint import load_checkpoint  # noqa: E402
from ddsm_core.evaluate import sample_images  # noqa: E402
from ddsm_core.features import get_extractor, reference_stats  # noqa: E402
from ddsm_core.fid import FeatureStats, extract_features, frechet_distance  # noqa: E402
from ddsm_core.search import RUNG_METRICS  # noqa: E402
from ddsm_core.spec import DEFAULTS, SearchSpec  # noqa: E402

METRICS = ("fid", "fid_inf", "kid", "paired")


def held_out_genomes(steps: int, n_widths: int, count: int, seed: int) -> list[tuple[int, ...]]:
    """Uniform widths, two-level switches, then seeded random genomes around several width levels; the
    first ``count``, full width always among them (the paired metric's reference)."""
    genomes: dict[tuple[int, ...], None] = dict.fromkeys((i,) * steps for i in range(n_widths))
    for lo, hi, switch in (
        (0, n_widths - 1, steps // 2),
        (0, n_widths - 1, steps // 4),
        (n_widths // 2, n_widths - 1, steps // 2),
        (n_widths - 1, 0, steps // 2),
    ):
        genomes.setdefault((lo,) * switch + (hi,) * (steps - switch))  # fmt: skip
    rng = np.random.default_rng(seed)
    while len(genomes) < count:
        level = rng.integers(0, n_widths)  # spread the costs: genes scattered around one width
        g = np.clip(level + rng.integers(-2, 3, steps), 0, n_widths - 1)
        genomes.setdefault(tuple(int(v) for v in g))
    out = list(genomes)[:count]
    full = (n_widths - 1,) * steps
    if full not in out:  # fewer than n_widths: the widest uniform replaces the last narrower one
        out[-1] = full
    return out


def kid(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased squared MMD with the kernel (x.y / d + 1)^3 (Binkowski et al. 2018)."""
    d = x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    m, n = len(x), len(y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2.0 * kxy.mean()
    )


def fid_of(feats: np.ndarray, ref: FeatureStats) -> float:
    mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
    return float(frechet_distance(mu, sigma, ref.mu, ref.sigma))


def low_rung(metric: str, feats: np.ndarray, full: np.ndarray, ref: FeatureStats, ref_feats: np.ndarray,
             n: int) -> float:  # fmt: skip
    f = feats[:n]
    if metric == "fid":
        return fid_of(f, ref)
    if metric == "fid_inf":  # least squares FID = a + b / k over nested subsets k = n/4, n/2, n
        ks = [max(n // 4, 8), max(n // 2, 8), n]
        A = np.array([[1.0, 1.0 / k] for k in ks])
        return float(np.linalg.lstsq(A, np.array([fid_of(feats[:k], ref) for k in ks]), rcond=None)[0][0])
    if metric == "kid":
        return kid(f, ref_feats[:n])
    if metric == "paired":
        return float(((f - full[:n]) ** 2).sum(1).mean())
    raise ValueError(metric)


def ranking(args: argparse.Namespace, model, schedule, ext, ref: FeatureStats) -> dict:
    spec = SearchSpec(sampler=args.sampler, steps=args.steps).bind(model.config.widths)
    genomes = held_out_genomes(spec.steps, len(spec.widths), args.strategies, args.seed)
    cache = args.out / f"features-{spec.sampler}-{spec.steps}.npz"
    stored = dict(np.load(cache)) if cache.exists() else {}
    seeds = list(range(args.eval_seed, args.eval_seed + args.images))
    feats = {}
    t0 = time.perf_counter()
    for i, g in enumerate(genomes):
        key = "g" + "-".join(map(str, g))
        if key not in stored or len(stored[key]) < args.images:
            images, _, _ = sample_images(model, schedule, spec.strategy(g), seeds, args.batch_size)
            stored[key] = extract_features(ext, images.clamp(-1, 1), args.batch_size)
            np.savez(cache, **stored)
            print(f"[{i + 1}/{len(genomes)}] sampled {spec.strategy(g).describe()}", flush=True)
        feats[g] = stored[key][: args.images]
    sample_s = time.perf_counter() - t0
    ref_feats = reference_features(args, ext)
    full = feats[spec.full_width_genome()]
    truth = [fid_of(feats[g], ref) for g in genomes]
    table = {}
    for n in args.rungs:
        for m in METRICS:
            scores = [low_rung(m, feats[g], full, ref, ref_feats, n) for g in genomes]
            keep = [i for i, g in enumerate(genomes) if not (m == "paired" and g == spec.full_width_genome())]
            tau = kendalltau([scores[i] for i in keep], [truth[i] for i in keep]).statistic
            table[f"{m}@{n}"] = float(tau)
    return {"genomes": [list(g) for g in genomes], "fid_full_images": truth, "tau": table,
            "sample_s": sample_s}  # fmt: skip


def reference_features(args: argparse.Namespace, ext) -> np.ndarray:
    """Training-split features in a seeded order (KID's reference sample)."""
    from ddsm_core.features import _dataset_tensors

    images, _ = _dataset_tensors(ext.config, "train")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))
    return extract_features(ext, images[order], args.batch_size)


def search(args: argparse.Namespace, rungs: tuple[int, ...]) -> dict:
    from ddsm_core.cli.search_cmd import search_to_folder

    spec = SearchSpec(
        sampler=args.sampler, steps=args.steps, population=args.population, generations=args.generations,
        n_images=args.search_images, final_images=args.final_images, weight=args.weight, seed=args.seed,
        eval_seed=args.eval_seed, batch_size=args.batch_size, rungs=rungs, promote=args.promote,
        pick_rule="weighted",  # as recorded in multifidelity.md (made before the tolerance rule)
        rung_metric=args.rung_metric,
    )  # fmt: skip
    out = args.out / ("multifidelity" if rungs else "flat")
    t0 = time.perf_counter()
    res = search_to_folder(args.checkpoint, out, spec, stats=args.out / "ref_stats.npz", progress=False)
    return {"wall_s": time.perf_counter() - t0, "pick": res["final"]["pick"], "full": res["final"]["full"],
            "cost": res["cost"], "seeds": res["seeds"]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("/tmp/mf/bench"))
    p.add_argument("--md", type=Path, default=Path("bench/multifidelity.md"))
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--strategies", type=int, default=32)
    p.add_argument("--images", type=int, default=2000, help="images of the reference ranking")
    p.add_argument("--rungs", type=lambda s: tuple(int(v) for v in s.split(",")), default=(64, 256))
    p.add_argument("--promote", type=float, default=0.25)
    p.add_argument("--rung-metric", choices=RUNG_METRICS, default=DEFAULTS.rung_metric,
                   help="what ranks a low rung in the search comparison (the tool's default)")  # fmt: skip
    p.add_argument("--search-images", type=int, default=1024)
    p.add_argument("--final-images", type=int, default=2000)
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--generations", type=int, default=5)
    p.add_argument("--weight", type=float, default=1.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-search", action="store_true")
    args = p.parse_args()
    if args.strategies < 3:  # kendalltau of the paired metric needs two strategies besides full width
        p.error(f"--strategies must be at least 3 (full width and two more to rank), not {args.strategies}")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    model, schedule, _ = load_checkpoint(args.checkpoint)
    ext = get_extractor("domain", dataset="digits")
    ref_path = args.out / "ref_stats.npz"
    ref = FeatureStats.load(ref_path) if ref_path.exists() else reference_stats("digits", ext)
    ref.save(ref_path)
    out = {"ranking": ranking(args, model, schedule, ext, ref)}
    if not args.skip_search:
        out["flat"] = search(args, ())
        out["multifidelity"] = search(args, args.rungs)
    (args.out / "bench.json").write_text(json.dumps(out, indent=1))
    write_md(args, out)


def ladder_cost(new: int, ladder: tuple[int, ...], promote: float) -> int:
    """Images one generation of ``new`` genomes costs on ``ladder`` (every genome has the same steps,
    so image-steps scale alike): successive halving's count, by construction."""
    total, alive = 0, new
    for level, n in enumerate(ladder):
        total += alive * n
        if level < len(ladder) - 1:
            alive = max(1, math.ceil(promote * alive))
    return total


def _final_seeds(seeds: dict) -> str:
    """Which seeds the finalists used (results.json's ``seeds``)."""
    (a, b), (c, d) = seeds["final"], seeds["search"]
    return f"seeds {a}..{b} ({'held out from' if seeds['held_out'] else 'overlapping'} the search's {c}..{d})"


def write_md(args: argparse.Namespace, out: dict) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    cmd = " ".join(["python", *[a if " " not in a else repr(a) for a in sys.argv]])
    rk = out["ranking"]
    lines = [
        "# Multi-fidelity search: low-rung ranking and cost",
        "",
        f"- command: `{cmd}`",
        f"- checkpoint: `{args.checkpoint}`; machine: {platform.machine()} {os.cpu_count()} CPUs (shared), "
        f"torch threads {args.threads}; date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"commit {commit.strip()}",
        f"- {args.sampler}-{args.steps}; {len(rk['genomes'])} held-out strategies, reference FID on "
        f"{args.images} images (seeds {args.eval_seed}..), domain:digits-cnn-v1 features",
        "",
        "## Kendall tau of the low-rung metric vs the FID on all images",
        "",
        "| metric | " + " | ".join(f"N = {n}" for n in args.rungs) + " |",
        "|---|" + "---|" * len(args.rungs),
    ]
    for m in METRICS:
        lines.append(f"| {m} | " + " | ".join(f"{rk['tau'][f'{m}@{n}']:.3f}" for n in args.rungs) + " |")
    ladder = (*args.rungs, args.search_images)
    share = {p: ladder_cost(p, ladder, args.promote) / (p * args.search_images) for p in (16, 50)}
    lines += ["", f"By construction (not measured): a generation of P new genomes on rungs {ladder} with "
              f"promote {args.promote} costs " + ", ".join(f"{100 * v:.1f}% (P = {p})" for p, v in
              share.items()) + " of the flat protocol's image-steps at " f"{args.search_images} images; "
              "genomes answered from the cache cost nothing in either protocol."]  # fmt: skip
    if "flat" in out:
        lines += ["", f"## Search: flat ({args.search_images} images per candidate) vs rungs "
                  f"{args.rungs} -> {args.search_images} (promote {args.promote}, rung metric "
                  f"{args.rung_metric})", "",
                  f"population {args.population} x {args.generations} generations, seed {args.seed}; "
                  f"finalists on {args.final_images} images, {_final_seeds(out['flat']['seeds'])}.", "",
                  "| protocol | pick FID | full-width FID | pick - full | pick GFLOPs | search image-steps |"
                  " evaluations per rung |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for name in ("flat", "multifidelity"):
            r = out[name]
            pf, ff = r["pick"].get("fid"), r["full"].get("fid")
            rungs = ", ".join(f"{x['n_images']}: {x['evaluations']}" for x in r["cost"].get("rungs", []))
            lines.append(
                f"| {name} | {pf:.3f} | {ff:.3f} | {pf - ff:+.3f} | {r['pick']['gflops']:.4f} | "
                f"{r['cost']['search_network_calls']} | {rungs or '-'} |"
            )
        calls = {k: out[k]["cost"]["search_network_calls"] for k in ("flat", "multifidelity")}
        ratio = calls["multifidelity"] / calls["flat"]
        lines += ["", f"Multi-fidelity image-steps: {100 * ratio:.1f}% of the flat protocol's."]
    text = "\n".join(lines) + "\n"
    args.md.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
