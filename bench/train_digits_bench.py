"""The benchmark digits supernet: train the ``digits-bench`` recipe, measure FID per width against the
real-data floor with paired intervals, export the EMA weights, and record bench/train_digits_bench.md.

    .venv/bin/python bench/train_digits_bench.py [--out runs/digits-bench-supernet] [--threads 1]
    .venv/bin/python bench/train_digits_bench.py --checkpoint bench/digits-supernet   # evaluate only

Training is ``ddsm train --preset digits-bench --out OUT --threads 1``. Every width is then sampled with
DDPM-20 from the same seeds (image i uses seed i), scored with FID (domain:digits-cnn-v1) against the
1500 training digits, and compared with the real-data floor (the 297 held-out test digits against the
same statistics) and, paired on the seeds, with full width (bootstrap over images).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

PRESET = "digits-bench"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def export_ema(run_or_ckpt: Path, dst: Path, note: str) -> Path:
    """A sampling-only copy: the EMA weights (as the model weights) and the manifest, a few MB."""
    from safetensors.torch import load_file

    from ddsm_core import checkpoint as ckpt_io
    from ddsm_core.config import UNetConfig

    manifest = ckpt_io.read_manifest(run_or_ckpt)
    src = Path(manifest["path"])
    ema_file = manifest["weights"].get("ema") or manifest["weights"]["model"]
    ema = load_file(str(src / ema_file))
    extra = {"exported": note, "source_ema_sha256": manifest["files"][ema_file]["sha256"]}
    return ckpt_io.write_checkpoint(  # replaces dst atomically
        dst, step=manifest["step"], model_config=UNetConfig.from_dict(manifest["model_config"]),
        schedule=manifest["schedule"], model_state=ema, train_config=manifest.get("train_config"),
        extra=extra,
    )  # fmt: skip


def evaluate_widths(ckpt: Path, stats_path: Path, n_images: int, seed: int, n_boot: int) -> dict:
    """FID of every uniform width (DDPM-20, same seeds), floor, and paired intervals vs full width."""
    import torch

    from ddsm_core.checkpoint import load_checkpoint
    from ddsm_core.evaluate import evaluate
    from ddsm_core.features import get_extractor, reference_stats
    from ddsm_core.fid import FeatureStats
    from ddsm_core.floor import floor_of
    from ddsm_core.flops import cost_table
    from ddsm_core.paired import paired_fid_diff
    from ddsm_core.strategy import Strategy
    from ddsm_core.widths import format_width

    if stats_path.is_file():
        ref = FeatureStats.load(stats_path)
    else:
        ref = reference_stats("digits", "domain")
        ref.save(stats_path)
    ext = get_extractor(ref.extractor, dataset="digits")
    model, schedule, manifest = load_checkpoint(ckpt)
    costs = cost_table(model)
    widths = model.config.widths
    rows = {}
    for i in reversed(range(len(widths))):
        strat = Strategy.uniform("ddpm", 20, i, widths)
        t0 = time.process_time()
        r = evaluate(model, schedule, strat, ref, ext, n_images, seed, 250, costs=costs, keep_features=True)
        rows[format_width(widths[i])] = {"result": r, "cpu_s": time.process_time() - t0}
    full = rows[format_width(widths[-1])]["result"]
    floor = floor_of(ref, n_images)
    out = {"floor": floor.to_dict() if floor else None, "n_images": n_images, "seed": seed, "widths": {}}
    for name, row in rows.items():
        r = row["result"]
        d = paired_fid_diff(full.features, r.features, ref, n_boot=n_boot, seed=seed)
        out["widths"][name] = {
            "fid": r.fid, "gflops": r.gflops, "x_floor": r.fid / floor.fid if floor else None,
            "paired_vs_full": d.to_dict(), "eval_cpu_s": row["cpu_s"],
        }  # fmt: skip
    # the same two widths on other seed sets: is the seed-0 picture typical?
    out["other_seeds"] = {}
    for base in (100_000, 200_000):
        pair = [
            evaluate(model, schedule, Strategy.uniform("ddpm", 20, i, widths), ref, ext, n_images, base, 250,
                     costs=costs, keep_features=True)
            for i in (len(widths) - 1, 0)
        ]  # fmt: skip
        d = paired_fid_diff(pair[0].features, pair[1].features, ref, n_boot=n_boot, seed=base)
        out["other_seeds"][base] = {"full": pair[0].fid, "2/8": pair[1].fid, "paired": d.to_dict()}
    del torch
    out["checkpoint_step"] = manifest["step"]
    return out


def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def markdown(ev: dict, header: list[str]) -> str:
    floor = ev["floor"]
    full = ev["widths"]["8/8"]
    small = ev["widths"]["2/8"]
    lines = [
        *header,
        "",
        f"## FID per uniform width (DDPM-20, {ev['n_images']} images, seeds {ev['seed']}..."
        f"{ev['seed'] + ev['n_images'] - 1}, domain:digits-cnn-v1 vs the 1500 training digits)",
        "",
        f"Real-data floor: FID **{floor['fid']:.2f}** ({floor['n_images']} held-out {floor['split']} digits "
        "against the same statistics). Paired = the same seeds for both widths; 95% bootstrap interval over "
        f"images ({full['paired_vs_full']['n_boot']} replicates, indices resampled jointly).",
        "",
        "| width | FID | x floor | GFLOPs/image | minus full width [95%] | / full width [95%] |",
        "|---|---|---|---|---|---|",
    ]
    for name, w in sorted(ev["widths"].items(), key=lambda kv: kv[1]["gflops"]):
        d = w["paired_vs_full"]
        lines.append(
            f"| {name} | {w['fid']:.2f} | {w['x_floor']:.2f} | {w['gflops']:.4f} | {d['diff']:+.2f} "
            f"[{d['low']:+.2f}, {d['high']:+.2f}] | {d['ratio']:.3f} "
            f"[{d['ratio_low']:.3f}, {d['ratio_high']:.3f}] |"
        )
    lines += [
        "",
        "Other seed sets (same widths, paired per set):",
        "",
        "| seeds from | full width | x floor | 2/8 | 2/8 / full [95%] |",
        "|---|---|---|---|---|",
    ]
    for base, o in ev["other_seeds"].items():
        d = o["paired"]
        lines.append(
            f"| {base} | {o['full']:.2f} | {o['full'] / floor['fid']:.2f} | {o['2/8']:.2f} | "
            f"{d['ratio']:.3f} [{d['ratio_low']:.3f}, {d['ratio_high']:.3f}] |"
        )
    sd = small["paired_vs_full"]
    ratios = [sd["ratio"], *(o["paired"]["ratio"] for o in ev["other_seeds"].values())]
    fulls = [full["fid"], *(o["full"] for o in ev["other_seeds"].values())]
    lines += [
        "",
        "## Targets",
        "",
        "| target | met | numbers |",
        "|---|---|---|",
        f"| full width <= 1.5x floor | {'yes' if full['x_floor'] <= 1.5 else '**no**'} | "
        f"{full['fid']:.2f} vs floor {floor['fid']:.2f}: {full['x_floor']:.2f}x |",
        f"| uniform 2/8 >= 1.5x full width, paired interval above 1.4x | "
        f"{'yes' if sd['ratio'] >= 1.5 and sd['ratio_low'] > 1.4 else '**no**'} | "
        f"{small['fid']:.2f} vs {full['fid']:.2f}: {sd['ratio']:.3f}x "
        f"[{sd['ratio_low']:.3f}, {sd['ratio_high']:.3f}] |",
        f"| the same over {len(ratios)} seed sets | full {yes(max(fulls) <= 1.5 * floor['fid'])}, "
        f"2/8 {yes(min(ratios) >= 1.5)} | full width "
        + " / ".join(f"{f / floor['fid']:.2f}x" for f in fulls)
        + " floor; 2/8 / full "
        + " / ".join(f"{r:.2f}" for r in ratios)
        + f" (mean {sum(ratios) / len(ratios):.2f}) |",
        "",
        "Intervals: Efron's bias-corrected percentile bootstrap (`ddsm_core/paired.py`). A resample",
        "repeats images, which adds finite-sample bias to both FIDs and pulls replicated ratios towards 1;",
        "BC removes that median bias, but where the estimate sits above almost every replicate the",
        "interval's lower end is pinned at the estimate: read those intervals as approximate.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "digits-bench-supernet")
    parser.add_argument("--checkpoint", type=Path, default=None, help="evaluate this one, no training")
    parser.add_argument("--export-from", type=Path, default=None, help="export this checkpoint, evaluate it")
    parser.add_argument("--train-cpu-s", type=float, default=None, help="its training CPU time")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--export", type=Path, default=HERE / "digits-supernet")
    parser.add_argument("--stats", type=Path, default=HERE / "digits_ref_stats.npz")
    parser.add_argument("--images", type=int, default=297)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--md", type=Path, default=HERE / "train_digits_bench.md")
    args = parser.parse_args()

    import torch

    from ddsm_core.checkpoint import sha256_file
    from ddsm_core.train import TrainConfig

    torch.set_num_threads(args.threads)
    cfg = TrainConfig.for_preset(PRESET)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    header = [
        "# Benchmark digits supernet (`digits-bench` recipe)",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; git {git.stdout.strip()}",
        f"- machine: {cpu_name()}, {os.cpu_count()} cores (shared with other jobs), "
        f"torch {torch.__version__}, {args.threads} thread(s)",
        f"- recipe (`TrainConfig.for_preset('{PRESET}')`, UNet preset `{PRESET}`): "
        + ", ".join(f"{k} {v}" for k, v in cfg.to_dict().items() if k in RECIPE_KEYS),
    ]
    if args.checkpoint is None and args.export_from is None:
        from ddsm_core.cli.train_cmd import main_train

        if args.out.exists():
            shutil.rmtree(args.out)
        cpu0, wall0 = time.process_time(), time.time()
        result = main_train(preset=PRESET, out_dir=args.out, overrides={}, progress=True)
        cpu, wall = time.process_time() - cpu0, time.time() - wall0
        assert result.checkpoint is not None
        header.append(
            f"- training: **{cpu / 60:.1f} CPU-minutes** (process time, 1 thread), {wall / 60:.1f} min wall"
        )
        ckpt = export_ema(result.checkpoint, args.export, f"EMA weights of `ddsm train --preset {PRESET}`")
    elif args.export_from is not None:
        if args.train_cpu_s is not None:
            header.append(f"- training: **{args.train_cpu_s / 60:.1f} CPU-minutes** (process time, 1 thread)")
        ckpt = export_ema(args.export_from, args.export, f"EMA weights of {args.export_from}")
    else:
        ckpt = args.checkpoint
    header.append(
        f"- checkpoint: `{ckpt.relative_to(ROOT) if ckpt.is_relative_to(ROOT) else ckpt}` "
        f"(model.safetensors sha256 {sha256_file(Path(ckpt) / 'model.safetensors')[:16]}...)"
    )
    ev = evaluate_widths(Path(ckpt), args.stats, args.images, args.seed, args.boot)
    text = markdown(ev, header)
    args.md.write_text(text)
    (args.md.with_suffix(".json")).write_text(json.dumps(ev, indent=1))
    print(text)


RECIPE_KEYS = (
    "steps", "batch_size", "lr", "warmup_steps", "lr_schedule", "ema_decay", "ema_warmup", "dropout",
    "n_middle", "grad_clip",
)  # fmt: skip


if __name__ == "__main__":
    main()
