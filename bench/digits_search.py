"""Digits benchmark on the committed benchmark supernet: uniform widths vs ``ddsm search``, paired.

    .venv/bin/python bench/digits_search.py --threads 1 --samplers ddpm:20:0+1+2
    .venv/bin/python bench/digits_search.py --threads 1 --samplers dpmpp:10:0+1+2,ddim:10:0 \
        --transfer-from ddpm:20:0 --transfer-to dpmpp:10,ddim:10 --warm dpmpp:10:0
    .venv/bin/python bench/digits_search.py --render-only   # rewrite the markdown from OUT/bench.json

Each run updates the sampler entries it names in OUT/bench.json (the others are kept) and rewrites
the markdown after every stage, so runs can be split and an interrupted run still renders what it
measured. Every comparison is paired: image i of every strategy comes from seed i, and differences
carry a bootstrap 95% interval (ddsm_core.paired). Per sampler, in this order:

1. every uniform width on ``--final-images`` seeds (0..N-1); the floor / ratio rows use the first
   ``--images`` of them (the real-data floor is measured on 297 held-out digits);
2. ``ddsm search`` (its ``search_to_folder`` code path, ``cpu`` profile) per search seed, into
   OUT/<sampler><steps>_s<seed>/, then the finalist protocol (below) on its front;
3. dominance: for every uniform width below full, the first search's front member with the best
   search FID at <= its GFLOPs, paired with that uniform width on the ``--final-images`` seeds.

Finalist protocol (the pick): "equal quality" is the paired interval's upper end of FID(member) -
FID(full width) <= ``--tolerance`` x FID(full width), on ``--final-images`` images. The pick is the
cheapest front member that is equal quality, found by bisection over the front sorted by GFLOPs
(quality assumed to fall with cost along the front, which the 200-image search FIDs say it does;
full width is the top end and passes by definition): about log2(front size) members measured. The
search's own weighted pick and knee are measured the same way for comparison.

Then, across samplers: ``--transfer-from`` (a search's protocol pick and knee) are mapped to each
``--transfer-to`` sampler with ``ddsm strategy transfer`` and paired with that sampler's full width
and its own (search from scratch) pick and knee; ``--warm`` reruns that search seed warm-started
(``--warm-start``) with the transferred strategies, and counts the generations each search needs to
hold a candidate at least as good (search FID on the same 200 seeds) at no more GFLOPs than the cold
search's knee and pick. Per-image features are cached under OUT/cache/ (not committed).
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddsm_core.checkpoint import load_checkpoint  # noqa: E402
from ddsm_core.cli.search_cmd import search_to_folder  # noqa: E402
from ddsm_core.evaluate import evaluate  # noqa: E402
from ddsm_core.features import get_extractor  # noqa: E402
from ddsm_core.fid import FeatureStats, frechet_distance  # noqa: E402
from ddsm_core.floor import floor_of  # noqa: E402
from ddsm_core.flops import cost_table  # noqa: E402
from ddsm_core.paired import DEFAULT_REL_TOLERANCE, paired_fid_diff  # noqa: E402
from ddsm_core.spec import profile  # noqa: E402
from ddsm_core.strategy import Strategy  # noqa: E402
from ddsm_core.threads import set_threads  # noqa: E402
from ddsm_core.widths import format_width  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"ddpm": "DDPM", "dpmpp": "DPM-Solver++(2M)", "ddim": "DDIM"}
NOTES = "notes.md"  # OUT/notes.md: hand-written reading of the numbers, appended to the markdown


def _items(text: str) -> list[tuple[str, int, list[int]]]:
    """``ddpm:20:0+1,dpmpp:10`` -> [("ddpm", 20, [0, 1]), ("dpmpp", 10, [])]."""
    out = []
    for item in filter(None, text.split(",")):
        sampler, steps, *seeds = item.split(":")
        out.append((sampler, int(steps), [int(s) for s in seeds[0].split("+")] if seeds else []))
    return out


class Bench:
    """The loaded supernet, reference statistics and a per-image feature cache (memory and disk)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model, self.schedule, self.manifest = load_checkpoint(args.checkpoint)
        self.widths = tuple(self.model.config.widths)
        self.costs = cost_table(self.model)
        self.ext = get_extractor("domain", dataset="digits")
        self.ref = FeatureStats.load(args.stats)
        self.guidance: float | None = args.guidance
        if self.guidance is not None and self.model.config.null_class is None:
            sys.exit(f"error: {args.checkpoint} has no null label: train with --class-cond --label-dropout")
        self.cache = args.out / "cache"
        if self.guidance is not None:  # another supernet: its features must not meet the default one's
            self.cache = self.cache / f"{args.checkpoint.name}-step{self.manifest.get('step')}"
        self.cache.mkdir(parents=True, exist_ok=True)
        self.mem: dict[tuple[Any, ...], tuple[np.ndarray, dict[str, Any]]] = {}

    def measure(self, s: Strategy, guidance: float | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Per-image features of ``s`` on seeds 0..N-1 (N = --final-images) and its record, at
        ``guidance`` (default --guidance; labels seed % 10 on a class-conditional supernet)."""
        n = self.args.final_images
        g = self.guidance if guidance is None else guidance
        key = (s.sampler, s.steps, s.genes, g)
        if key in self.mem:
            return self.mem[key]
        suffix = "" if g is None else f"_g{g:g}"
        path = self.cache / f"{s.sampler}{s.steps}_{'-'.join(map(str, s.genes))}_{n}{suffix}.npz"
        if path.exists():
            z = np.load(path)
            rec = json.loads(str(z["record"]))
        else:
            r = evaluate(
                self.model, self.schedule, s, self.ref, self.ext, n, 0, 250, costs=self.costs,
                keep_features=True, guidance=g,
            )  # fmt: skip
            rec = {
                "strategy": s.describe(),
                "genes": list(s.genes),
                "gflops": r.gflops,
                "latency_ms": 1000 * r.latency_s,
                "seconds": r.seconds,
                "guidance": g,
            }
            np.savez(path, features=r.features, record=json.dumps(rec))
            print(f"  measured {s.describe()} on {n} images in {r.seconds:.0f} s", flush=True)
            z = {"features": r.features}
        self.mem[key] = (np.asarray(z["features"]), rec)
        return self.mem[key]

    def fid(self, feats: np.ndarray, n: int) -> float:
        x = feats[:n]
        return frechet_distance(x.mean(axis=0), np.cov(x, rowvar=False), self.ref.mu, self.ref.sigma)

    def row(self, s: Strategy, base: Strategy | None = None) -> dict[str, Any]:
        """``s`` on N images, paired with ``base`` (default: full width) on the same seeds."""
        base = base or Strategy.uniform(s.sampler, s.steps, len(self.widths) - 1, self.widths)
        feats, rec = self.measure(s)
        n = self.args.final_images
        out = {**rec, "fid": self.fid(feats, n), "n_images": n}
        if base.genes != s.genes:
            d = paired_fid_diff(self.measure(base)[0], feats, self.ref, seed=0)
            tol = self.args.tolerance * d.fid_a
            out["paired"] = {**d.to_dict(), "tolerance": tol, "equal_quality": d.equal_quality(tol)}
        return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", type=Path, default=ROOT / "bench/digits-supernet")
    p.add_argument("--stats", type=Path, default=ROOT / "bench/digits_ref_stats.npz")
    p.add_argument("--out", type=Path, default=ROOT / "bench/digits_search")
    p.add_argument("--md", type=Path, default=ROOT / "bench/digits_search.md")
    p.add_argument(
        "--samplers", default="ddpm:20,dpmpp:10", help="sampler:steps[:seed+seed...], comma separated"
    )
    p.add_argument("--search-seeds", default="0,1,2", help="search seeds of samplers that name none")
    p.add_argument("--images", type=int, default=297, help="images of the floor / ratio rows")
    p.add_argument("--final-images", type=int, default=2000, help="images of every paired comparison")
    p.add_argument("--tolerance", type=float, default=DEFAULT_REL_TOLERANCE, help="x full width's FID")
    p.add_argument("--transfer-from", default="", help="sampler:steps:seed whose pick and knee transfer")
    p.add_argument("--transfer-to", default="", help="sampler:steps, comma separated")
    p.add_argument("--warm", default="", help="sampler:steps:seed searches to rerun warm-started")
    p.add_argument("--profile", default="cpu")
    p.add_argument(
        "--set", action="append", default=[], metavar="FIELD=JSON",
        help="override a field of the profile's search spec, e.g. --set rungs=[200] --set population=32",
    )  # fmt: skip
    p.add_argument(
        "--guidance", type=float, default=None,
        help="classifier-free guidance weight (a --class-cond supernet with label dropout as --checkpoint)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--render-only", action="store_true")
    p.add_argument(
        "--smoke", action="store_true", help="tiny searches (8 x 2, 16 images) to check the script"
    )
    args = p.parse_args()
    bench_path = args.out / "bench.json"
    if args.render_only:
        write_markdown(json.loads(bench_path.read_text()), args.md, args.out / NOTES)
        return
    set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    b = Bench(args)
    floor = floor_of(b.ref, args.images)
    # the search's own pick stays the weighted one (the "weighted pick" column): this benchmark runs the
    # tolerance protocol itself on 2000 images, as recorded; ``ddsm search``'s default measures 500
    spec0 = profile(args.profile).replace(pick_rule="weighted")
    if args.smoke:
        spec0 = spec0.replace(population=8, generations=2, n_images=16, final_images=20)
    if args.guidance is not None:
        spec0 = spec0.replace(guidance=args.guidance)
    overrides = {k: json.loads(v) for k, _, v in (item.partition("=") for item in args.set)}
    spec0 = spec0.replace(**overrides)  # at once: rungs and n_images are checked against each other
    old = json.loads(bench_path.read_text()) if bench_path.exists() else {}
    if old.get("final_images") != args.final_images or old.get("tolerance") != args.tolerance:
        old = {}  # another protocol: nothing of it is comparable
    command = " ".join(["python", *[os.path.relpath(a, ROOT) if a.startswith("/") else a for a in sys.argv]])
    bench: dict[str, Any] = {
        "runs": [*old.get("runs", []), {"command": command, "date": _now(), "git": _git()}],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs, one torch thread",
        # a guided run adds its sections beside the default supernet's: the header keeps that one
        "checkpoint": old.get("checkpoint") if args.guidance is not None and old else _rel(args.checkpoint),
        "manifest": old.get("manifest") if args.guidance is not None and old else _manifest(b),
        "images": args.images,
        "final_images": args.final_images,
        "tolerance": args.tolerance,
        "floor": floor.to_dict() if floor else None,
        "profile": {"name": args.profile, **spec0.to_dict()},
        "samplers": old.get("samplers", {}),
        "transfer": old.get("transfer", {}),
        "warm": old.get("warm", {}),
    }
    start = time.perf_counter()

    def save() -> None:
        bench["runs"][-1]["wall_s"] = time.perf_counter() - start
        bench["runs"][-1]["load_end"] = os.getloadavg()
        bench_path.write_text(json.dumps(bench, indent=1, default=str))
        write_markdown(bench, args.md, args.out / NOTES, quiet=True)

    bench["runs"][-1]["load_start"] = os.getloadavg()
    n_w = len(b.widths)
    for sampler, steps, own in _items(args.samplers):
        seeds = own or [int(s) for s in args.search_seeds.split(",") if s]
        key = f"{sampler}{steps}" + ("" if args.guidance is None else f"_g{args.guidance:g}")
        entry = bench["samplers"].setdefault(key, {"sampler": sampler, "steps": steps})
        entry.update(uniform={}, dominance={}, load_start=os.getloadavg())
        if args.guidance is not None:
            entry.update(guidance=args.guidance, checkpoint=_rel(args.checkpoint), manifest=_manifest(b))
        entry.setdefault("searches", {})
        t0 = time.perf_counter()
        full = Strategy.uniform(sampler, steps, n_w - 1, b.widths)
        full_feats = b.measure(full)[0]
        for i in reversed(range(n_w)):  # full width first: every other row pairs with it
            s = Strategy.uniform(sampler, steps, i, b.widths)
            row = b.row(s)
            feats = b.measure(s)[0]
            row["fid_small"] = b.fid(feats, args.images)
            if i < n_w - 1:
                d = paired_fid_diff(full_feats[: args.images], feats[: args.images], b.ref, seed=0)
                row["paired_small"] = d.to_dict()
            entry["uniform"][format_width(b.widths[i])] = row
            print(f"{key} uniform {format_width(b.widths[i])}: FID {row['fid']:.2f}", flush=True)
        if args.guidance is not None:  # the same supernet without guidance: conditional and unconditional
            entry["unguided"] = {}
            for g, label in ((1.0, "guidance 1 (conditional)"), (0.0, "guidance 0 (unconditional)")):
                feats, rec = b.measure(full, guidance=g)
                entry["unguided"][label] = {
                    **rec, "fid": b.fid(feats, args.final_images), "fid_small": b.fid(feats, args.images),
                    "paired": paired_fid_diff(full_feats, feats, b.ref, seed=0).to_dict(),
                }  # fmt: skip
        entry["uniform_wall_s"] = time.perf_counter() - t0
        save()

        for seed in seeds:
            folder = args.out / f"{key}_s{seed}"
            res = _search(args, spec0.replace(sampler=sampler, steps=steps, seed=seed), folder)
            entry["searches"][str(seed)] = _protocol(b, res, full)
            r = entry["searches"][str(seed)]
            print(
                f"{key} seed {seed}: pick {r['pick']['strategy']} saved {100 * r['saved']:.0f}%", flush=True
            )
            save()

        first = entry["searches"].get(str(seeds[0])) if seeds else None
        if first is not None:
            for label, u in entry["uniform"].items():
                if tuple(u["genes"]) == full.genes:
                    continue
                below = [f for f in first["front"] if f[0] <= u["gflops"] + 1e-12]
                if not below:
                    entry["dominance"][label] = {"member": None}
                    continue
                member = Strategy(sampler, steps, b.widths, tuple(min(below, key=lambda f: f[1])[2]))
                uni = Strategy(sampler, steps, b.widths, tuple(u["genes"]))
                entry["dominance"][label] = {"member": b.row(member), "vs_uniform": b.row(member, uni)}
                save()
        entry["load_end"] = os.getloadavg()
        save()

    if args.transfer_from:
        (src_s, src_n, (src_seed,)) = _items(args.transfer_from)[0]
        src_key = f"{src_s}{src_n}"
        src = bench["samplers"][src_key]["searches"][str(src_seed)]
        for sampler, steps, _ in _items(args.transfer_to):
            key = f"{sampler}{steps}"
            bench["transfer"][key] = _transfer(b, args, src, src_key, src_seed, sampler, steps, bench)
            save()
    for sampler, steps, (seed,) in _items(args.warm):
        key = f"{sampler}{steps}"
        if args.transfer_from:  # the source search's results.json: its pick, knee and front, transferred
            src_s, src_n, (src_seed,) = _items(args.transfer_from)[0]
            files = [args.out / f"{src_s}{src_n}_s{src_seed}" / "results.json"]
        else:
            files = [Path(v["file"]) for v in bench["transfer"][key]["strategies"].values()]
        res = _search(
            args,
            spec0.replace(sampler=sampler, steps=steps, seed=seed),
            args.out / f"{key}_s{seed}_warm",
            files,
        )
        cold = json.loads((args.out / f"{key}_s{seed}" / "results.json").read_text())
        full = Strategy.uniform(sampler, steps, n_w - 1, b.widths)
        warm = {"seed": seed, "files": [os.path.relpath(f, ROOT) for f in files], **_protocol(b, res, full)}
        cold_entry = bench["samplers"][key]["searches"][str(seed)]
        targets = {"knee": cold["knee"]}
        pick = cold_entry["pick"]
        if pick.get("search_fid") is not None:
            targets["pick"] = {"objectives": [pick["search_fid"], pick["gflops"]]}
        warm["reach"] = {
            name: {"target": t["objectives"], "cold": _reached(cold, t), "warm": _reached(res, t)}
            for name, t in targets.items()
        }
        warm["seeded"] = [
            c["genome"]
            for c in res["candidates"]
            if c["generation"] == 1 and c["genome"] in res["config"]["initial"]
        ]
        bench["warm"][key] = warm
        save()
    save()
    print(args.md.read_text())


def _search(
    args: argparse.Namespace, spec: Any, folder: Path, warm: list[Path] | None = None
) -> dict[str, Any]:
    """``ddsm search`` into ``folder``, or its results.json when an earlier run finished it."""
    if (folder / "results.json").exists() and not (folder / "search_state.json").exists():
        return json.loads((folder / "results.json").read_text())
    res = search_to_folder(
        args.checkpoint, folder, spec, stats=args.stats, progress=False, resume=True, warm_start=warm or ()
    )
    (folder / "search_state.json").unlink(missing_ok=True)  # resume file: not committed
    return res


def _protocol(b: Bench, res: dict[str, Any], full: Strategy) -> dict[str, Any]:
    """The finalist protocol on one search's front (see the module docstring)."""
    cfg = res["config"]
    widths = tuple(cfg["widths"])
    front = sorted(
        ((c["objectives"][1], c["objectives"][0], c["genome"]) for c in res["front"]), key=lambda f: f[0]
    )
    members = [f for f in front if tuple(f[2]) != full.genes]
    full_row = b.row(full)

    def strat(genome: list[int]) -> Strategy:
        return Strategy(cfg["sampler"], cfg["steps"], widths, tuple(genome))

    measured: dict[str, dict[str, Any]] = {}

    def passes(i: int) -> bool:
        row = b.row(strat(members[i][2]))
        row["search_fid"] = members[i][1]
        measured[row["strategy"]] = row
        return bool(row["paired"]["equal_quality"])

    lo, hi = 0, len(members)  # hi: full width, equal quality by definition
    while lo < hi:
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid + 1
    if lo < len(members):
        pick = measured[strat(members[lo][2]).describe()]
    else:
        pick = {**full_row, "search_fid": None}
    extra = {}
    for name in ("pick", "knee"):
        s = strat(res[name]["genome"])
        row = b.row(s)
        row["search_fid"] = res[name]["objectives"][0]
        extra[name] = row
    return {
        "sampler": cfg["sampler"],
        "steps": cfg["steps"],
        "pick": pick,
        "saved": 1 - pick["gflops"] / full_row["gflops"],
        "full": full_row,
        "bisection": list(measured.values()),
        "weighted_pick": extra["pick"],
        "knee": extra["knee"],
        "search_paired": {k: res["paired"].get(k) for k in ("pick", "knee")},
        "evaluations": res["cost"]["evaluations"],
        "wall_s": res["cost"]["total_wall_s"],
        "front": front,
    }


def _reached(res: dict[str, Any], target: dict[str, Any]) -> int | None:
    """First generation holding a candidate with search FID <= the target's at <= its GFLOPs."""
    fid, gflops = target["objectives"]
    gens = [
        c["generation"]
        for c in res["candidates"]
        if c.get("objectives") and c["objectives"][0] <= fid + 1e-9 and c["objectives"][1] <= gflops + 1e-12
    ]
    return min(gens) if gens else None


def _transfer(
    b: Bench, args: argparse.Namespace, src: dict[str, Any], src_key: str, src_seed: int, sampler: str,
    steps: int, bench: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """Transfer the source search's protocol pick and knee with ``ddsm strategy transfer``, pair them
    with full width and with this sampler's own search (same seed) pick and knee."""
    folder = args.out / "transfer" / f"{src_key}_s{src_seed}_to_{sampler}{steps}"
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"source": f"{src_key} seed {src_seed}", "strategies": {}}
    own = bench["samplers"].get(f"{sampler}{steps}", {}).get("searches", {}).get(str(src_seed))
    for name in ("pick", "knee"):
        s_src = Strategy(src["sampler"], src["steps"], b.widths, tuple(src[name]["genes"]))
        src_file = folder / f"{name}_source.json"
        src_file.write_text(s_src.file_text())
        dst_file = folder / f"{name}.json"
        subprocess.run(
            [sys.executable, "-m", "api.cli", "strategy", "transfer", "--strategy", str(src_file),
             "--sampler", sampler, "--steps", str(steps), "--out", str(dst_file),
             "--plot", str(folder / f"{name}.png"), "--checkpoint", str(args.checkpoint)],
            check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        moved = Strategy.from_dict(json.loads(dst_file.read_text()))
        row = b.row(moved)
        item: dict[str, Any] = {"file": str(dst_file), "source": s_src.describe(), "row": row}
        if own is not None:
            for mine in ("pick", "knee"):
                theirs = own[mine]
                s_own = Strategy(sampler, steps, b.widths, tuple(theirs["genes"]))
                item[f"vs_own_{mine}"] = {"own": theirs, "paired": b.row(moved, s_own).get("paired")}
        out["strategies"][name] = item
    return out


def _rel(path: Path) -> str:
    return os.path.relpath(path, ROOT)


def _manifest(b: Bench) -> dict[str, Any]:
    return {k: b.manifest.get(k) for k in ("step", "created", "train_config")}


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def _f(v: float | None, d: int = 2) -> str:
    return "-" if v is None else f"{v:.{d}f}"


def _iv(d: dict | None, d_digits: int = 2) -> str:
    if not d:
        return "-"
    return f"{d['diff']:+.{d_digits}f} [{d['low']:+.{d_digits}f}, {d['high']:+.{d_digits}f}]"


def _pct(d: dict | None) -> str:
    """The interval's upper end as a percentage of full width's FID."""
    return "-" if not d else f"{100 * d['high'] / d['fid_a']:+.1f}%"


def _eq(d: dict | None) -> str:
    if not d:
        return "(full width)"
    return "yes" if d.get("equal_quality") else "**no**"


def write_markdown(bench: dict[str, Any], md: Path, notes: Path | None = None, quiet: bool = False) -> None:
    floor = bench.get("floor") or {}
    out = os.path.relpath(notes.parent, ROOT) if notes is not None else "bench/digits_search"
    ffid = floor.get("fid")
    tc = (bench["manifest"] or {}).get("train_config") or {}
    prof = bench["profile"]
    n, tol = bench["final_images"], bench["tolerance"]
    lines = [
        "# Digits benchmark: uniform widths vs step-aware search, paired with full width",
        "",
        "Generated by `bench/digits_search.py` (`--render-only` rewrites it from "
        f"`{out}/bench.json`; the hand-written notes at the end are `{out}/notes.md`).",
        "",
        "- runs (command, date, git commit, wall time, load average at start -> end):",
    ]
    for r in bench["runs"]:
        ls, le = r.get("load_start") or [0, 0, 0], r.get("load_end") or [0, 0, 0]
        lines.append(
            f"  - `{r['command']}`: {r['date']}, git {r['git']}, {r.get('wall_s', 0) / 60:.0f} min, "
            f"load {ls[0]:.1f} -> {le[0]:.1f}"
        )
    lines += [
        f"- machine: {bench['machine']}",
        f"- supernet: `{bench['checkpoint']}` (step {bench['manifest'].get('step')}, recipe: "
        + ", ".join(f"{k} {tc[k]}" for k in ("dataset", "steps", "batch_size", "lr", "ema_decay") if k in tc)
        + "); FID with domain:digits-cnn-v1 against `bench/digits_ref_stats.npz` (1500 training digits)",
        f"- real-data floor: {_f(ffid)} ({floor.get('n_images')} held-out {floor.get('split')} digits); the "
        f"floor and ratio columns use the first {bench['images']} images (image i from seed i, every "
        "strategy)",
        f"- paired: every other comparison uses {n} images (seeds 0..{n - 1}, the same for every strategy); "
        "bootstrap 95% interval (1000 replicates, image indices resampled jointly, bias-corrected) of "
        "FID(row) - FID(full width)",
        f"- **equal quality**: the interval's upper end <= tolerance = {100 * tol:.0f}% of full width's FID "
        f'at {n} images. The paper\'s own "same quality" results lose at most 2.4% (CelebA-HQ 128 transfer '
        "7.53 -> 7.71; CIFAR-10 guided +1.6%, EDM-100 +2.3%; /work/shared/PAPER.md section 3), so 5% is "
        "twice the paper's largest accepted loss, and it must hold at the interval's upper end, not the "
        "point estimate.",
        "- **pick** (finalist protocol of this benchmark): the cheapest front member that is equal quality, "
        "found by bisection over the search's front sorted by GFLOPs (about log2(front size) members "
        f"measured on {n} images; full width is the top end). The search's own weighted pick (argmin FID + "
        f"{prof['weight']} x GFLOPs on {prof['n_images']}-image FIDs) and knee are measured the same way "
        "beside it.",
        f"- search: `ddsm search` code path (`search_to_folder`), profile `{prof['name']}` (population "
        f"{prof['population']}, {prof['generations']} generations, {prof['n_images']} images per candidate, "
        f"its own finalists re-measured on {prof['final_images']} images: results.json in each folder)"
        + (
            f"; multi-fidelity: every new candidate first on {', '.join(map(str, prof['rungs']))} images "
            f"ranked by the {prof.get('rung_metric', 'fid')} rung metric, the best {prof['promote']:g} "
            f"promoted to {prof['n_images']}"
            if prof.get("rungs")
            else ""
        ),
        "",
    ]
    targets: list[tuple[str, str, str]] = []
    t13: list[tuple[str, str, str]] = []
    for key, e in bench["samplers"].items():
        title = f"{LABELS.get(e['sampler'], e['sampler'])}-{e['steps']}"
        if e.get("guidance") is not None:
            title += f", guidance {e['guidance']:g}"
        uni = e["uniform"]
        full = uni.get(format_width(1.0))
        ls, le = e.get("load_start") or [0], e.get("load_end") or [0]
        lines += [f"## {title}", ""]
        if e.get("guidance") is not None:
            etc = (e.get("manifest") or {}).get("train_config") or {}
            lines += [
                f"Classifier-free guidance {e['guidance']:g} (issue 13): supernet `{e['checkpoint']}` (step "
                f"{e['manifest'].get('step')}, the same recipe class-conditional, label dropout "
                f"{etc.get('label_dropout')}); image i has label i % 10, as many of each digit as the "
                "reference statistics. Every call runs the conditional and the unconditional pass at the "
                "step's width (batched); GFLOPs count both. Searches run on the guided sampler "
                "(`ddsm search --guidance`).",
                "",
            ]
        lines += [
            f"### Uniform widths (load average {ls[0]:.1f} -> {le[0]:.1f})",
            "",
            f"| width | FID@{bench['images']} | x floor | ratio@{bench['images']} [95%] | GFLOPs/image "
            f"| saved | FID@{n} | FID - full @{n} [95%] | upper end | ms/image |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for label in sorted(uni, key=lambda w: uni[w]["gflops"]):
            r = uni[label]
            ps = r.get("paired_small")
            ratio = f"{ps['ratio']:.3f} [{ps['ratio_low']:.3f}, {ps['ratio_high']:.3f}]" if ps else "1"
            saved = 1 - r["gflops"] / full["gflops"] if full else 0
            lines.append(
                f"| {label} | {_f(r['fid_small'])} | {_f(r['fid_small'] / ffid if ffid else None)} | "
                f"{ratio} | {_f(r['gflops'], 4)} | {100 * saved:.0f}% | {_f(r['fid'])} | "
                f"{_iv(r.get('paired'))} | {_pct(r.get('paired'))} | {_f(r['latency_ms'], 1)} |"
            )
        lines += ["", f"Uniform rows: {e.get('uniform_wall_s', 0):.0f} s (features cached between runs).", ""]
        if e.get("unguided") and full:
            lines += [
                f"The same supernet at full width and other guidance weights, paired with guidance "
                f"{e['guidance']:g} full width on the same seeds (W = 1 is the conditional model, W = 0 the "
                "unconditional one, the null label):",
                "",
                f"| full width at | FID@{bench['images']} | x floor | FID@{n} | - guided full @{n} [95%] |",
                "|---|---|---|---|---|",
            ]
            for label, r in e["unguided"].items():
                lines.append(
                    f"| {label} | {_f(r['fid_small'])} | {_f(r['fid_small'] / ffid if ffid else None)} | "
                    f"{_f(r['fid'])} | {_iv(r.get('paired'))} |"
                )
            lines.append("")
        smallest = uni.get(format_width(min(float(w.split("/")[0]) / 8 for w in uni))) if uni else None
        if full and ffid:
            targets.append(
                (
                    f"{title}: full width <= 1.5x floor",
                    _yes(full["fid_small"] <= 1.5 * ffid),
                    f"{full['fid_small']:.2f} / {ffid:.2f} = {full['fid_small'] / ffid:.2f}x",
                )
            )
        if smallest and smallest.get("paired_small"):
            pd = smallest["paired_small"]
            targets.append(
                (
                    f"{title}: uniform 2/8 >= 1.5x full width, interval excludes 1.4x",
                    _yes(pd["ratio"] >= 1.5 and pd["ratio_low"] > 1.4),
                    f"{pd['ratio']:.3f}x [{pd['ratio_low']:.3f}, {pd['ratio_high']:.3f}]",
                )
            )
        s = e.get("searches") or {}
        if s:
            lines += [
                f"### Searches (one per search seed; every FID on {n} images, paired with full width)",
                "",
                "| seed | pick (protocol) | GFLOPs | saved | pick - full [95%] | upper end | equal quality "
                "| measured | weighted pick: saved, - full [95%] | knee: saved, - full [95%] | wall s |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for seed, r in s.items():
                pk, wp, kn, fg = r["pick"], r["weighted_pick"], r["knee"], r["full"]["gflops"]
                lines.append(
                    f"| {seed} | `{pk['strategy']}` | {_f(pk['gflops'], 4)} | {100 * r['saved']:.0f}% | "
                    f"{_iv(pk.get('paired'))} | {_pct(pk.get('paired'))} | {_eq(pk.get('paired'))} | "
                    f"{len(r['bisection'])} | `{wp['strategy']}`: {100 * (1 - wp['gflops'] / fg):.0f}%, "
                    f"{_iv(wp.get('paired'))} | `{kn['strategy']}`: {100 * (1 - kn['gflops'] / fg):.0f}%, "
                    f"{_iv(kn.get('paired'))} | {r['wall_s']:.0f} |"
                )
            savings = [r["saved"] for r in s.values()]
            knees = [1 - r["knee"]["gflops"] / r["full"]["gflops"] for r in s.values()]
            lines += [
                "",
                f"Spread over {len(s)} seeds: pick saves {100 * min(savings):.0f}-{100 * max(savings):.0f}% "
                f"(mean {100 * statistics.mean(savings):.0f}%); knees save {100 * min(knees):.0f}-"
                f"{100 * max(knees):.0f}%. Search folders `{out}/{key}_s<seed>/` "
                "(results.json, report.md, plots). Bisection steps (member: FID - full [95%], upper end "
                "as % of full FID):",
                "",
            ]
            for seed, r in s.items():
                steps_txt = "; ".join(
                    f"`{m['strategy']}` ({100 * (1 - m['gflops'] / r['full']['gflops']):.0f}% saved): "
                    f"{_iv(m.get('paired'))} {_pct(m.get('paired'))}"
                    for m in r["bisection"]
                )
                lines.append(f"- seed {seed}: {steps_txt or 'front has no member below full width'}")
            lines.append("")
            ok = all(r["saved"] >= 0.6 for r in s.values())
            if e.get("guidance") is not None:
                t13.append(
                    (
                        f"guided row: {title}, {len(s)} search seeds",
                        "measured",
                        "; ".join(
                            f"seed {k}: pick `{r['pick']['strategy']}` {100 * r['saved']:.0f}% saved, "
                            f"{_iv(r['pick'].get('paired'))} ({_eq(r['pick'].get('paired'))})"
                            for k, r in s.items()
                        ),
                    )
                )
            targets.append(
                (
                    f"{title}: pick saves >= 60% GFLOPs at equal quality ({100 * tol:.0f}%), every seed "
                    f"({len(s)} seeds)",
                    _yes(ok and len(s) >= 3) + ("" if len(s) >= 3 else " (fewer than 3 seeds run)"),
                    "; ".join(
                        f"seed {k}: {100 * r['saved']:.0f}% (knee "
                        f"{100 * (1 - r['knee']['gflops'] / r['full']['gflops']):.0f}% at "
                        f"{_pct(r['knee'].get('paired'))})"
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
                f"paired with that uniform width on {n} images (member - uniform; better: upper end < 0).",
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
                m, pd = d["member"], d["vs_uniform"].get("paired")
                if pd is None:
                    v, ok = "same strategy (the uniform width is on the front)", False
                else:
                    ok = pd["high"] < 0
                    v = "better" if ok else ("**worse**" if pd["low"] > 0 else "not distinguishable")
                verdicts.append(ok)
                lines.append(
                    f"| {label} | {_f(u['fid'])} / {_f(u['gflops'], 4)} | `{m['strategy']}` | "
                    f"{_f(m['fid'])} / {_f(m['gflops'], 4)} | {_iv(pd)} | {v} |"
                )
            lines.append("")
            targets.append(
                (
                    f"{title}: front dominates every uniform width at <= its GFLOPs (paired, upper end < 0)",
                    _yes(all(verdicts)) + ("" if len(verdicts) == len(uni) - 1 else " (not all measured)"),
                    f"better than {sum(verdicts)} of {len(verdicts)} uniform widths "
                    f"({len(uni) - 1} below full)",
                )
            )
    if bench.get("transfer"):
        lines += [
            "## Strategy transfer (issue 13): a search's pick and knee mapped by log-SNR "
            "(`ddsm strategy transfer`)",
            "",
            f"Paired on {n} images with the target's full width, and with the target's own search (same "
            "search seed, searched from scratch): transferred - own.",
            "",
            "| target | transferred | from | GFLOPs | saved | - full [95%] | upper end | vs own pick [95%] "
            "| vs own knee [95%] |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for key, t in bench["transfer"].items():
            full = bench["samplers"].get(key, {}).get("uniform", {}).get(format_width(1.0))
            for name, item in t["strategies"].items():
                r = item["row"]
                saved = f"{100 * (1 - r['gflops'] / full['gflops']):.0f}%" if full else "-"
                vp, vk = item.get("vs_own_pick") or {}, item.get("vs_own_knee") or {}
                lines.append(
                    f"| {key} | `{r['strategy']}` | {t['source']} {name} `{item['source']}` | "
                    f"{_f(r['gflops'], 4)} | {saved} | {_iv(r.get('paired'))} | {_pct(r.get('paired'))} | "
                    f"{_iv(vp.get('paired')) if vp else '-'} | {_iv(vk.get('paired')) if vk else '-'} |"
                )
                if vp:
                    t13.append(
                        (
                            f"transfer {t['source']} {name} -> {key} vs its own search (same seed)",
                            "measured",
                            f"transferred `{r['strategy']}` {saved} saved, - full {_iv(r.get('paired'))}; "
                            + "; ".join(
                                f"- own {mine} `{v['own']['strategy']}` "
                                + (_iv(v.get("paired")) if v.get("paired") else "(same strategy)")
                                for mine, v in (("pick", vp), ("knee", vk))
                                if v
                            ),
                        )
                    )
        lines.append("")
    if bench.get("warm"):
        lines += [
            "## Warm start (issue 13): the search rerun with `--warm-start` (another search's results)",
            "",
            "`--warm-start` takes the files below (a results.json: its pick, knee and front, each "
            "transferred by log-SNR to this sampler and step count; uniform and repeated seeds dropped). "
            "Generations until "
            f"the search holds a candidate with search FID ({prof['n_images']} images, same seeds) <= the "
            "cold search's target at <= its GFLOPs (generation 1 = the first; none = never).",
            "",
            "| search | seeds (files) | target | target search FID / GFLOPs | cold: generation "
            "| warm: generation | warm pick (protocol): saved, - full [95%] | warm knee: saved, - full [95%] "
            "| cold knee: saved, - full [95%] |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for key, w in bench["warm"].items():
            for name, r in w["reach"].items():
                lines.append(
                    f"| {key} seed {w['seed']} | {len(w['seeded'])} ({', '.join(w['files'])}) | "
                    f"cold {name} | "
                    f"{_f(r['target'][0])} / "
                    f"{_f(r['target'][1], 4)} | {r['cold'] or 'none'} | {r['warm'] or 'none'} | "
                    f"`{w['pick']['strategy']}`: {100 * w['saved']:.0f}%, {_iv(w['pick'].get('paired'))} | "
                    + " | ".join(
                        f"`{k['strategy']}`: {100 * (1 - k['gflops'] / w['full']['gflops']):.0f}%, "
                        f"{_iv(k.get('paired'))}"
                        for k in (w["knee"], bench["samplers"][key]["searches"][str(w["seed"])]["knee"])
                    )
                    + " |"
                )
                t13.append(
                    (
                        f"warm start {key}: generations to reach the cold {name}",
                        "measured",
                        f"cold {r['cold'] or 'none'}, warm {r['warm'] or 'none'}",
                    )
                )
        lines.append("")
    lines += ["## Targets (issue 9, Measure)", "", "| target | met | numbers |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {x} |" for t, m, x in targets]
    if t13:
        lines += ["", "## Rows (issue 13)", "", "| row | status | numbers |", "|---|---|---|"]
        lines += [f"| {t} | {m} | {x} |" for t, m, x in t13]
    lines.append("")
    if notes is not None and notes.exists():
        lines += [notes.read_text()]
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
