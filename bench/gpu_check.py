"""A prepared check for a GPU box: the CUDA tests, per-width latency, sampling throughput -> bench/gpu.md.

Runs from the source tree with whatever torch is installed (no ``pip install -e .`` needed, no network):
it imports only torch and the ddsm_core modules it uses, and skips, saying so, each part whose
packages are missing (pytest for the tests; scipy, scikit-learn, pymoo for the worker test). Within
``--budget-s`` (default 480 s, the 8 minutes one H100 is lent for) it:

1. runs ``pytest -m gpu tests/gpu`` (samplers on CUDA against the CPU, a bf16 training step of the
   cifar10 preset, a class-conditional model through the prefix cache, a worker evaluating a
   candidate);
2. measures the preset's (cifar10, or ``--preset celeba64``) latency per width at batch 1 / 64 / 256
   in float32 and bfloat16, eager (``prepare_for_inference``: packed weights, channels_last where it
   helps), with CUDA graphs (``GraphedWidths``) and
   ``torch.compile``-d (as many widths as the budget allows), with the saving ratio
   (1 - latency ratio) / (1 - GFLOPs ratio) (target on an H100: >= 0.8 at batch 64);
3. measures sampling throughput (images/s, DDPM-20) for a few strategies;

and writes a markdown report (command, device, torch version, date, git commit, tables).

    python bench/gpu_check.py                                   # on the GPU box: writes bench/gpu.md
    python bench/gpu_check.py --device cpu --quick --out /tmp/gpu.md   # the same, tiny, on a CPU (< 60 s)
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ddsm_core.threads import passive_openmp  # noqa: E402

passive_openmp()  # before torch loads

import torch  # noqa: E402

from ddsm_core.config import UNetConfig  # noqa: E402
from ddsm_core.flops import cost_table  # noqa: E402
from ddsm_core.inference import GraphedWidths, prepare_for_inference  # noqa: E402
from ddsm_core.latency import LatencyTable, device_name, measure_latency  # noqa: E402
from ddsm_core.sampling import VPDenoiser, sample  # noqa: E402
from ddsm_core.schedules import NoiseSchedule  # noqa: E402
from ddsm_core.strategy import parse_strategy_spec  # noqa: E402
from ddsm_core.unet import SlimmableUNet  # noqa: E402
from ddsm_core.widths import format_width  # noqa: E402


class Budget:
    """Wall-clock budget of the whole check; later parts get what earlier ones left."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


# ------------------------------------------------------------------------------------------- tests
def run_tests(device: str, quick: bool, timeout: float) -> dict[str, Any]:
    """``pytest -m gpu tests/gpu`` in a subprocess, on ``device`` (tiny networks with ``quick``)."""
    if missing("pytest"):
        return {"status": "skipped", "summary": "pytest is not installed", "seconds": 0.0, "tail": ""}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env |= {"DDSM_GPU_TEST_DEVICE": device, "DDSM_GPU_TEST_QUICK": "1" if quick else "0"}
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q", "-rs", "-p", "no:cacheprovider"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(timeout, 1))
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return {"status": "timeout", "summary": f"stopped after {timeout:.0f} s", "seconds": timeout,
                "tail": "\n".join(out.splitlines()[-30:])}  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    summary = lines[-1].strip("= ") if lines else "(no output)"
    status = "passed" if proc.returncode == 0 else ("no tests" if proc.returncode == 5 else "FAILED")
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:]) if status == "FAILED" else ""
    skipped = [ln for ln in lines if ln.startswith("SKIPPED")]
    seconds = time.perf_counter() - start
    return {"status": status, "summary": summary, "seconds": seconds, "tail": tail, "skipped": skipped}


# ------------------------------------------------------------------------------------------- latency
def build(cfg: UNetConfig, device: torch.device, dtype: str) -> SlimmableUNet:
    model = SlimmableUNet(cfg).to(device=device, dtype=getattr(torch, dtype))
    return prepare_for_inference(model)  # type: ignore[return-value]


def _compile(model: torch.nn.Module, device: torch.device) -> Callable[..., Any]:
    dynamo = torch._dynamo.config  # type: ignore[attr-defined]
    for name in ("cache_size_limit", "recompile_limit"):  # one graph per (width, batch): allow them all
        if hasattr(dynamo, name):
            setattr(dynamo, name, 256)
    # On a CPU the quick check traces with dynamo only (inductor's C++ build would take minutes).
    backend = "inductor" if device.type == "cuda" else "eager"
    return torch.compile(model, backend=backend, dynamic=False)


def latency_part(
    cfg: UNetConfig, device: torch.device, quick: bool, budget: Budget, no_compile: bool = False
) -> list[dict[str, Any]]:
    """Eager and compiled latency tables per dtype; compiled widths as the budget allows."""
    batches = [1, 2] if quick else [1, 64, 256]
    repeats, warmup = (1, 1) if quick else (10, 3)
    eager_widths = [cfg.widths[0], cfg.widths[-1]] if quick else list(cfg.widths)
    out = []
    for dtype in ("float32", "bfloat16"):
        if budget.left() < 30:
            out.append({"dtype": dtype, "mode": "eager", "skipped": "out of time"})
            continue
        model = build(cfg, device, dtype)
        start = time.perf_counter()
        # the sampler's own per-step time too, so that sampling time can be predicted from the table
        table = measure_latency(
            model, batches, schedule=NoiseSchedule.linear(), widths=eager_widths, samplers=("ddpm",),
            repeats=repeats, warmup=warmup, device=device, dtype=dtype,
        )  # fmt: skip
        out.append({"dtype": dtype, "mode": "eager", "table": table, "seconds": time.perf_counter() - start})
        if device.type == "cuda":  # one CUDA graph per width and batch: no launch overhead
            graphed = GraphedWidths(model)
            start = time.perf_counter()
            table = measure_latency(
                graphed, batches, schedule=NoiseSchedule.linear(), widths=eager_widths, samplers=("ddpm",),
                repeats=repeats, warmup=warmup, device=device, dtype=dtype,
            )  # fmt: skip
            entry = {
                "dtype": dtype,
                "mode": "cuda-graphs",
                "table": table,
                "seconds": time.perf_counter() - start,
            }
            if graphed.fallback_reason:
                entry = {"dtype": dtype, "mode": "cuda-graphs", "skipped": graphed.fallback_reason}
            out.append(entry)
    # compiling is the slow part (one graph per width and batch size): a few widths, as time allows
    widths = [cfg.widths[-1]] if quick else [cfg.widths[0], cfg.widths[len(cfg.widths) // 2], cfg.widths[-1]]
    batches = batches[:1] if quick else batches
    for dtype in () if no_compile else ("float32",) if quick else ("bfloat16", "float32"):
        per_width = 0.0
        done: list[LatencyTable] = []
        for w in widths:
            if budget.left() < max(60.0, 1.5 * per_width):
                break
            start = time.perf_counter()
            compiled = _compile(build(cfg, device, dtype), device)
            compiled.config = cfg  # type: ignore[attr-defined]
            done.append(measure_latency(compiled, batches, widths=[w], repeats=repeats, warmup=warmup,
                                        device=device, dtype=dtype))  # fmt: skip
            per_width = time.perf_counter() - start
        if done:
            out.append({"dtype": dtype, "mode": "compiled", "table": _merge(done), "seconds": None})
        skipped = [format_width(w) for w in widths[len(done) :]]
        if skipped:
            out.append(
                {"dtype": dtype, "mode": "compiled", "skipped": f"out of time for {', '.join(skipped)}"}
            )
    return out


def _merge(tables: list[LatencyTable]) -> LatencyTable:
    first = tables[0]
    return LatencyTable(
        device=first.device, dtype=first.dtype, threads=first.threads,
        widths=tuple(t.widths[0] for t in tables), batch_sizes=first.batch_sizes,
        seconds=tuple(t.seconds[0] for t in tables), model=first.model, method=first.method,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------- throughput
def throughput_part(
    cfg: UNetConfig,
    device: torch.device,
    quick: bool,
    budget: Budget,
    tables: dict[tuple[str, str], LatencyTable],
) -> list[dict[str, Any]]:
    """Images/s per strategy, and the eager latency table's prediction of the same run."""
    n, steps = (2, 3) if quick else (256 if cfg.image_size <= 32 else 64, 20)
    schedule = NoiseSchedule.linear()
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    rows = []
    modes = ("eager", "cuda-graphs") if device.type == "cuda" else ("eager",)
    for dtype, mode in ((d, m) for d in ("float32", "bfloat16") for m in modes):
        model = build(cfg, device, dtype)
        denoiser = VPDenoiser(GraphedWidths(model) if mode == "cuda-graphs" else model, schedule)
        for spec in (
            ("uniform:8/8", "uniform:2/8") if quick else ("uniform:8/8", "piecewise:2/8,8/8", "uniform:2/8")
        ):
            if budget.left() < 20:
                rows.append({"dtype": dtype, "mode": mode, "strategy": spec, "skipped": "out of time"})
                continue
            strategy = parse_strategy_spec(spec, "ddpm", steps, cfg.widths)
            with torch.inference_mode():
                sample(denoiser, strategy, shape, range(min(n, 8)), device=device, dtype=model_dtype(model))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                sample(denoiser, strategy, shape, range(n), device=device, dtype=model_dtype(model))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds = time.perf_counter() - start
            row = {"dtype": dtype, "mode": mode, "strategy": strategy.describe(), "images": n,
                   "seconds": seconds, "images_per_s": n / seconds}  # fmt: skip
            table = tables.get((dtype, mode))
            if table is not None and all(w in table.widths for w in strategy.network_calls()):
                row["predicted_s"] = table.predict(strategy, n, n)
            rows.append(row)
    return rows


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


# ------------------------------------------------------------------------------------------- report
def report(args: argparse.Namespace, device: torch.device, cfg: UNetConfig, parts: dict[str, Any]) -> str:
    costs = cost_table(cfg)
    lines = [
        "# GPU check",
        "",
        f"- Command: `{args.command}`",
        f"- Device: {device_name(device)}" + _cuda_details(device),
        f"- torch {torch.__version__} (CUDA {torch.version.cuda}), Python {platform.python_version()}, "
        f"{platform.platform()}",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}; git commit {_commit()}",
        f"- Preset {args.preset_used} (untrained weights: time does not depend on them)"
        + (" -- QUICK mode: a tiny smoke run, not a measurement" if args.quick else ""),
        f"- Wall time of the check: {parts['wall_s']:.0f} s (budget {args.budget_s:.0f} s)",
        "",
        "## CUDA tests (`pytest -m gpu tests/gpu`)",
        "",
    ]
    t = parts["tests"]
    lines += [f"- {t['status']}: {t['summary']} ({t['seconds']:.0f} s)"]
    lines += [f"  - {s}" for s in t.get("skipped", [])]
    if t.get("tail"):
        lines += ["", "```", t["tail"], "```"]
    lines += ["", "## Latency per network call", "",
              "Median of repeats after warm-up, per width; saving ratio = (1 - latency ratio) / "
              "(1 - GFLOPs ratio), the share of the saved GFLOPs that is saved time (target on an H100: "
              ">= 0.8 at batch 64).", ""]  # fmt: skip
    for entry in parts["latency"]:
        lines += _latency_section(entry, costs)
    lines += ["## Sampling throughput (DDPM, images/s)", "",
              "Predicted: the same mode's latency table: per-call medians summed over the strategy's calls, "
              "plus the measured per-step sampler overhead (one batch of all the images).", "",
              "| dtype | mode | strategy | images | s | images/s | predicted s | prediction error |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in parts["throughput"]:
        if "skipped" in r:
            lines.append(
                f"| {r['dtype']} | {r['mode']} | {r['strategy']} | - | - | skipped: {r['skipped']} | - | - |"
            )
        else:
            pred = r.get("predicted_s")
            err = None if pred is None else 100 * (pred / r["seconds"] - 1)
            cells = ("-", "-") if pred is None else (f"{pred:.2f}", f"{err:+.1f}%")
            head = f"| {r['dtype']} | {r['mode']} | {r['strategy']} | {r['images']} | "
            lines.append(head + f"{r['seconds']:.2f} | {r['images_per_s']:.1f} | {cells[0]} | {cells[1]} |")
    if parts.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in parts["notes"]]
    return "\n".join(lines) + "\n"


def _latency_section(entry: dict[str, Any], costs: Any) -> list[str]:
    title = f"### {entry['dtype']}, {entry['mode']}"
    if "skipped" in entry:
        return [title, "", f"- skipped: {entry['skipped']}", ""]
    table: LatencyTable = entry["table"]
    head = "| width | GFLOPs ratio |" + "".join(
        f" batch {b} (ms) | saving ratio |" for b in table.batch_sizes
    )
    lines = [title, "", head, "|---|---|" + "---|---|" * len(table.batch_sizes)]
    full = costs.per_call(1.0, conv_linear=True)
    for w, row in zip(table.widths, table.seconds, strict=True):
        g = costs.per_call(w, conv_linear=True) / full
        cells = [format_width(w), f"{g:.3f}"]
        for b_index, s in enumerate(row):
            t_full = table.seconds[-1][b_index] if table.widths[-1] == 1.0 else None
            ratio = "-" if t_full is None or g >= 1.0 else f"{(1 - s / t_full) / (1 - g):.2f}"
            cells += [f"{1e3 * s:.3f}", ratio]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _cuda_details(device: torch.device) -> str:
    if device.type != "cuda":
        return ""
    p = torch.cuda.get_device_properties(device)
    return (
        f" ({p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, capability {p.major}.{p.minor})"
    )


def _commit() -> str:
    if os.environ.get("DDSM_GIT_COMMIT"):  # a copied tree without .git (a lent GPU box) is told its commit
        return os.environ["DDSM_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        )
        return out.stdout.strip() or "unknown (not a git checkout)"
    except OSError:
        return "unknown (no git)"


# ------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny networks and batches (a smoke run)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget of the whole check")
    parser.add_argument("--tests-timeout-s", type=float, default=200.0)
    parser.add_argument("--preset", default="cifar10", choices=("cifar10", "celeba64"), help="the network")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile rows (slow to build)"
    )
    parser.add_argument("--tables-dir", default="", help="also save the eager latency tables there (JSON)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "gpu.md"), help="the report; '-' for stdout")
    args = parser.parse_args(argv)
    args.command = "python bench/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "error: no CUDA device here (torch.cuda.is_available() is False); use --device cpu",
            file=sys.stderr,
        )
        return 2
    torch.set_num_threads(1 if device.type == "cpu" else torch.get_num_threads())
    budget = Budget(args.budget_s)
    start = time.perf_counter()
    args.preset_used = "digits (quick)" if args.quick else args.preset
    cfg = UNetConfig.digits() if args.quick else getattr(UNetConfig, args.preset)()
    parts: dict[str, Any] = {"notes": []}
    if args.skip_tests:
        parts["tests"] = {"status": "skipped", "summary": "--skip-tests", "seconds": 0.0, "tail": ""}
    else:
        parts["tests"] = run_tests(args.device, args.quick, min(args.tests_timeout_s, budget.left() - 60))
    print(f"tests: {parts['tests']['status']} ({parts['tests']['summary']})", file=sys.stderr)
    parts["latency"] = latency_part(cfg, device, args.quick, budget, args.no_compile)
    print(f"latency done at {time.perf_counter() - start:.0f} s", file=sys.stderr)
    tables = {
        (e["dtype"], e["mode"]): e["table"]
        for e in parts["latency"]
        if e["mode"] != "compiled" and "table" in e
    }
    parts["throughput"] = throughput_part(cfg, device, args.quick, budget, tables)
    if args.tables_dir:  # the measured tables, loadable with LatencyTable.load
        folder = Path(args.tables_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for (dtype, mode), table in tables.items():
            table.save(folder / f"latency-{args.preset_used.split()[0]}-{device.type}-{dtype}-{mode}.json")
    if device.type == "cpu":
        parts["notes"].append("compiled rows on a CPU use torch.compile(backend='eager'): dynamo only.")
    parts["wall_s"] = time.perf_counter() - start
    text = report(args, device, cfg, parts)
    if args.out == "-":
        print(text)
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 1 if parts["tests"]["status"] in ("FAILED", "timeout") else 0


if __name__ == "__main__":
    sys.exit(main())
