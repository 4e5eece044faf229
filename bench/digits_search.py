"""Digits benchmark on the committed benchmark supernet: uniform widths vs ``ddsm search``, paired.

    .venv/bin/python bench/digits_search.py --threads 1
    .venv/bin/python bench/digits_search.py --render-only   # rewrite the markdown from OUT/bench.json

For each sampler (DDPM-20, DPM-Solver++-10, optionally DDIM-10), in this order, saving OUT/bench.json
after every stage so an interrupted run still renders what it measured:

1. every uniform width at ``--images`` images (image i uses seed i, the same for every strategy), each
   paired with full width on those seeds (bootstrap interval of the FID difference, ddsm_core.paired),
   next to the real-data floor recorded in the reference statistics;
2. ``ddsm search`` (its ``search_to_folder`` code path, ``cpu`` profile) for each search seed, into
   OUT/<sampler><steps>_s<seed>/: the pick's GFLOPs saving and its paired interval vs full width
   (results.json ``paired``, the search's ``final_images`` on seeds 0..);
3. dominance: for every uniform width cheaper than full, the front member (first search seed) with the
   best search FID at <= its GFLOPs, re-measured on the same ``--images`` seeds and paired with it.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddsm_core.checkpoint import load_checkpoint  # noqa: E402
from ddsm_core.cli.search_cmd import search_to_folder  # noqa: E402
from ddsm_core.evaluate import evaluate  # noqa: E402
from ddsm_core.features import get_extractor  # noqa: E402
from ddsm_core.fid import FeatureStats  # noqa: E402
from ddsm_core.floor import floor_of  # noqa: E402
from ddsm_core.flops import cost_table  # noqa: E402
from ddsm_core.paired import DEFAULT_REL_TOLERANCE, paired_fid_diff  # noqa: E402
from ddsm_core.spec import profile  # noqa: E402
from ddsm_core.strategy import Strategy  # noqa: E402
from ddsm_core.threads import set_threads  # noqa: E402
from ddsm_core.widths import format_width  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"ddpm": "DDPM", "dpmpp": "DPM-Solver++(2M)", "ddim": "DDIM"}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", type=Path, default=ROOT / "bench/digits-supernet")
    p.add_argument("--stats", type=Path, default=ROOT / "bench/digits_ref_stats.npz")
    p.add_argument("--out", type=Path, default=ROOT / "bench/digits_search")
    p.add_argument("--md", type=Path, default=ROOT / "bench/digits_search.md")
    p.add_argument(
        "--samplers", default="ddpm:20,dpmpp:10", help="sampler:steps[:seed+seed...], comma separated"
    )
    p.add_argument("--search-seeds", default="0,1,2")
    p.add_argument("--images", type=int, default=297, help="images per uniform / dominance evaluation")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--render-only", action="store_true")
    p.add_argument(
        "--smoke", action="store_true", help="a tiny search (8 x 1, 16 images) to check the script"
    )
    args = p.parse_args()
    bench_path = args.out / "bench.json"
    if args.render_only:
        write_markdown(json.loads(bench_path.read_text()), args.md)
        return
    set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    model, schedule, manifest = load_checkpoint(args.checkpoint)
    widths, costs = tuple(model.config.widths), cost_table(model)
    ext = get_extractor("domain", dataset="digits")
    ref = FeatureStats.load(args.stats)
    floor = floor_of(ref, args.images)
    base_spec = profile(args.profile)
    if args.smoke:
        base_spec = base_spec.replace(population=8, generations=1, n_images=16, final_images=20)
    bench: dict[str, Any] = {
        "command": " ".join(
            ["python", *[os.path.relpath(a, ROOT) if a.startswith("/") else a for a in sys.argv]]
        ),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "git": _git(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs (loaded by other "
        f"helpers' jobs), one torch thread",
        "checkpoint": os.path.relpath(args.checkpoint, ROOT),
        "manifest": {k: manifest.get(k) for k in ("step", "created", "train_config")},
        "images": args.images,
        "floor": floor.to_dict() if floor else None,
        "profile": {"name": args.profile, **base_spec.to_dict()},
        "rel_tolerance": DEFAULT_REL_TOLERANCE,
        "samplers": {},
    }
    start = time.perf_counter()

    def save() -> None:
        bench["wall_s"] = time.perf_counter() - start
        bench_path.write_text(json.dumps(bench, indent=1, default=str))
        write_markdown(bench, args.md, quiet=True)

    feats: dict[tuple[int, ...], Any] = {}  # per-image features by genes (cleared per sampler)
    for item in args.samplers.split(","):
        feats.clear()
        sampler, steps, *own_seeds = item.split(":")  # "dpmpp:10" or "dpmpp:10:0+1" (own search seeds)
        steps = int(steps)
        seeds = own_seeds[0].replace("+", ",") if own_seeds else args.search_seeds
        key = f"{sampler}{steps}"
        entry: dict[str, Any] = {
            "sampler": sampler,
            "steps": steps,
            "uniform": {},
            "searches": {},
            "dominance": {},
        }
        bench["samplers"][key] = entry

        def measure(strategy: Strategy) -> dict[str, Any]:
            r = evaluate(
                model, schedule, strategy, ref, ext, args.images, 0, 250, costs=costs, keep_features=True
            )
            feats[strategy.genes] = r.features
            return {
                "strategy": strategy.describe(),
                "genes": list(strategy.genes),
                "fid": r.fid,
                "gflops": r.gflops,
                "latency_ms": 1000 * r.latency_s,
            }

        t0 = time.perf_counter()
        full_genes = Strategy.uniform(sampler, steps, len(widths) - 1, widths).genes
        for i in reversed(range(len(widths))):  # full width first: every other row pairs with it
            s = Strategy.uniform(sampler, steps, i, widths)
            row = measure(s)
            if s.genes != full_genes:
                d = paired_fid_diff(feats[full_genes], feats[s.genes], ref, seed=0)
                row["paired"] = {**d.to_dict(), "ratio_excludes_1.4": d.ratio_low > 1.4}
            entry["uniform"][format_width(widths[i])] = row
            print(f"{key} uniform {format_width(widths[i])}: FID {row['fid']:.2f}", flush=True)
        entry["uniform_wall_s"] = time.perf_counter() - t0
        save()

        for seed in [int(s) for s in seeds.split(",") if s]:
            spec = base_spec.replace(sampler=sampler, steps=steps, seed=seed)
            folder = args.out / f"{key}_s{seed}"
            if (folder / "results.json").exists() and not (folder / "search_state.json").exists():
                res = json.loads((folder / "results.json").read_text())  # finished on an earlier run
            else:
                res = search_to_folder(
                    args.checkpoint, folder, spec, stats=args.stats, progress=False, resume=True
                )
                (folder / "search_state.json").unlink(missing_ok=True)  # resume file: not committed
            fin, full = res["final"], res["final"]["full"]
            pick = fin["pick"]
            entry["searches"][str(seed)] = {
                "pick": pick.get("strategy"),
                "pick_genome": pick.get("genome"),
                "pick_fid": pick.get("fid"),
                "pick_gflops": pick.get("gflops"),
                "full_fid": full.get("fid"),
                "full_gflops": full.get("gflops"),
                "saved": 1 - pick["gflops"] / full["gflops"],
                "paired": res["paired"].get("pick"),
                "knee": fin.get("knee", {}).get("strategy"),
                "paired_knee": res["paired"].get("knee"),
                "evaluations": res["cost"]["evaluations"],
                "wall_s": res["cost"]["total_wall_s"],
                "front": [(c["objectives"][1], c["objectives"][0], c["genome"]) for c in res["front"]],
                "final_images": spec.final_images,
            }
            print(
                f"{key} search seed {seed}: pick {pick.get('strategy')} saved "
                f"{100 * entry['searches'][str(seed)]['saved']:.0f}% in {res['cost']['total_wall_s']:.0f} s",
                flush=True,
            )
            save()

        # dominance on the first search's front, re-measured on the uniform rows' seeds
        first = next(iter(entry["searches"].values()), None)
        rows = {tuple(r["genes"]): r for r in entry["uniform"].values()}  # measured, by genes
        if first is None:
            continue
        for label, u in entry["uniform"].items():
            if tuple(u["genes"]) == full_genes:
                continue
            below = [f for f in first["front"] if f[0] <= u["gflops"] + 1e-12]
            if not below:
                entry["dominance"][label] = {"member": None}
                continue
            genes = tuple(min(below, key=lambda f: f[1])[2])
            if genes not in rows:
                rows[genes] = measure(Strategy(sampler, steps, widths, genes))
            row = rows[genes]
            d = paired_fid_diff(feats[tuple(u["genes"])], feats[genes], ref, seed=0)
            entry["dominance"][label] = {"member": row, "paired": d.to_dict()}
            save()
    save()
    print(args.md.read_text())


def _f(v: float | None, d: int = 2) -> str:
    return "-" if v is None else f"{v:.{d}f}"


def _iv(d: dict | None, d_digits: int = 2) -> str:
    if not d:
        return "-"
    return f"{d['diff']:+.{d_digits}f} [{d['low']:+.{d_digits}f}, {d['high']:+.{d_digits}f}]"


def write_markdown(bench: dict[str, Any], md: Path, quiet: bool = False) -> None:
    floor = bench.get("floor") or {}
    ffid = floor.get("fid")
    tc = (bench["manifest"] or {}).get("train_config") or {}
    prof = bench["profile"]
    lines = [
        "# Digits benchmark: uniform widths vs step-aware search, paired with full width",
        "",
        f"- date: {bench['date']} (whole run {bench.get('wall_s', 0) / 60:.0f} min)",
        f"- machine: {bench['machine']}",
        f"- command: `{bench['command']}` (`--render-only` rewrites this file from "
        "`bench/digits_search/bench.json`)",
        f"- git: {bench['git']}",
        f"- supernet: `{bench['checkpoint']}` (step {bench['manifest'].get('step')}, recipe: "
        + ", ".join(f"{k} {tc[k]}" for k in ("dataset", "steps", "batch_size", "lr", "ema_decay") if k in tc)
        + "); FID with domain:digits-cnn-v1 against `bench/digits_ref_stats.npz` (1500 training digits)",
        f"- real-data floor: {_f(ffid)} ({floor.get('n_images')} held-out {floor.get('split')} digits); "
        f"uniform rows use {bench['images']} images, image i from seed i for every strategy",
        "- paired: bootstrap 95% interval (1000 replicates, image indices resampled jointly) of FID(row) - "
        "FID(full width) on the same seeds; ratio = FID(row) / FID(full width) with its interval; equal "
        f"quality: the interval's upper end <= tolerance = {100 * bench['rel_tolerance']:.0f}% of full "
        "width's FID",
        f"- search: `ddsm search` code path (`search_to_folder`), profile `{prof['name']}` (population "
        f"{prof['population']}, {prof['generations']} generations, {prof['n_images']} images per candidate, "
        f"finalists re-measured on {prof['final_images']} images, weight {prof['weight']})",
        "",
    ]
    targets: list[tuple[str, str, str]] = []
    for key, e in bench["samplers"].items():
        title = f"{LABELS.get(e['sampler'], e['sampler'])}-{e['steps']}"
        uni = e["uniform"]
        full = uni.get(format_width(1.0))
        lines += [
            f"## {title}",
            "",
            "### Uniform widths",
            "",
            "| width | FID | x floor | GFLOPs/image | saved | FID - full [95%] | ratio [95%] | ms/image |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for label in sorted(uni, key=lambda w: uni[w]["gflops"]):
            r = uni[label]
            pd = r.get("paired")
            ratio = f"{pd['ratio']:.3f} [{pd['ratio_low']:.3f}, {pd['ratio_high']:.3f}]" if pd else "1"
            saved = 1 - r["gflops"] / full["gflops"] if full else 0
            lines.append(
                f"| {label} | {_f(r['fid'])} | {_f(r['fid'] / ffid if ffid else None)} | "
                f"{_f(r['gflops'], 4)} | {100 * saved:.0f}% | {_iv(pd)} | {ratio} | "
                f"{_f(r['latency_ms'], 1)} |"
            )
        lines += ["", f"Uniform rows: {e.get('uniform_wall_s', 0):.0f} s.", ""]
        smallest = uni.get(format_width(min(float(w.split("/")[0]) / 8 for w in uni)) if uni else None)
        if full and ffid:
            targets.append(
                (
                    f"{title}: full width <= 1.5x floor",
                    _yes(full["fid"] <= 1.5 * ffid),
                    f"{full['fid']:.2f} / {ffid:.2f} = {full['fid'] / ffid:.2f}x",
                )
            )
        if smallest and smallest.get("paired"):
            pd = smallest["paired"]
            targets.append(
                (
                    f"{title}: uniform 2/8 >= 1.5x full width, interval excludes 1.4x",
                    _yes(pd["ratio"] >= 1.5 and pd["ratio_low"] > 1.4),
                    f"{pd['ratio']:.3f}x [{pd['ratio_low']:.3f}, {pd['ratio_high']:.3f}]",
                )
            )
        s = e["searches"]
        if s:
            lines += [
                "### Searches (one per search seed)",
                "",
                "| seed | pick | GFLOPs/image | saved | pick FID | full FID | pick - full [95%] | tolerance "
                "| equal quality | knee | wall s |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for seed, r in s.items():
                pd = r.get("paired") or {}
                lines.append(
                    f"| {seed} | `{r['pick']}` | {_f(r['pick_gflops'], 4)} | {100 * r['saved']:.0f}% | "
                    f"{_f(r['pick_fid'])} | {_f(r['full_fid'])} | {_iv(pd)} | {_f(pd.get('tolerance'))} | "
                    f"{'yes' if pd.get('equal_quality') else '**no**'} | `{r['knee']}` | {r['wall_s']:.0f} |"
                )
            savings = [r["saved"] for r in s.values()]
            highs = [(r.get("paired") or {}).get("high") for r in s.values()]
            highs = [h for h in highs if h is not None]
            first = next(iter(s.values()))
            lines += [
                "",
                f"Spread over {len(s)} seeds: saving {100 * min(savings):.0f}-{100 * max(savings):.0f}% "
                f"(mean {100 * statistics.mean(savings):.0f}%); pick - full upper end "
                f"{_f(min(highs) if highs else None)} to {_f(max(highs) if highs else None)}. "
                f"Pick and full width measured on {first['final_images']} images (seeds 0..), per search "
                f"folder `bench/digits_search/{key}_s<seed>/` (results.json, report.md, plots).",
                "",
            ]
            ok = all(r["saved"] >= 0.6 and (r.get("paired") or {}).get("equal_quality") for r in s.values())
            targets.append(
                (
                    f"{title}: pick saves >= 60% GFLOPs, upper end within tolerance, every seed "
                    f"({len(s)} seeds)",
                    _yes(ok and len(s) >= 3) + ("" if len(s) >= 3 else " (fewer than 3 seeds run)"),
                    "; ".join(
                        f"seed {k}: {100 * r['saved']:.0f}%, upper {_f((r.get('paired') or {}).get('high'))} "
                        f"vs {_f((r.get('paired') or {}).get('tolerance'))}"
                        for k, r in s.items()
                    ),
                )
            )
        dom = e.get("dominance") or {}
        if dom:
            lines += [
                "### Does the front dominate uniform widths? (first search seed's front)",
                "",
                "For each uniform width: the front member with the best search FID at <= its GFLOPs, "
                f"re-measured on the uniform rows' {bench['images']} seeds, paired with that uniform width "
                "(member - uniform; better: upper end < 0; not worse: lower end < 0 < upper end).",
                "",
                "| uniform | its FID / GFLOPs | front member | member FID / GFLOPs | member - uniform [95%] "
                "| verdict |",
                "|---|---|---|---|---|---|",
            ]
            verdicts = []
            for label, d in dom.items():
                u = uni[label]
                if d.get("member") is None:
                    lines.append(
                        f"| {label} | {_f(u['fid'])} / {_f(u['gflops'], 4)} | none at <= its GFLOPs | - "
                        "| - | **no member** |"
                    )
                    verdicts.append(False)
                    continue
                m, pd = d["member"], d["paired"]
                v = "better" if pd["high"] < 0 else ("**worse**" if pd["low"] > 0 else "not distinguishable")
                if m["genes"] == u["genes"]:
                    v = "same strategy (the uniform width is on the front)"
                verdicts.append(pd["high"] < 0)
                lines.append(
                    f"| {label} | {_f(u['fid'])} / {_f(u['gflops'], 4)} | `{m['strategy']}` | "
                    f"{_f(m['fid'])} / {_f(m['gflops'], 4)} | {_iv(pd)} | {v} |"
                )
            lines.append("")
            targets.append(
                (
                    f"{title}: front dominates every uniform width at <= its GFLOPs (paired, upper end < 0)",
                    _yes(all(verdicts)) + ("" if len(verdicts) == len(uni) - 1 else " (not all measured)"),
                    f"{sum(verdicts)} of {len(verdicts)} uniform widths measured ({len(uni) - 1} below full)",
                )
            )
    lines += ["## Targets (issue 9, Measure)", "", "| target | met | numbers |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {n} |" for t, m, n in targets]
    lines.append("")
    md.write_text("\n".join(lines))
    if not quiet:
        print("\n".join(lines))


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _git() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True, cwd=ROOT).strip()
    except Exception:
        return "?"


if __name__ == "__main__":
    main()
