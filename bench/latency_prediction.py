"""How well does a latency table predict measured sampling time? (target: error <= 10%)

For a preset's network (weights do not change the time), each round measures a
:class:`~ddsm_core.latency.LatencyTable` at a few batch sizes, then times real sampling
(:func:`ddsm_core.sampling.sample`, the code path of ``ddsm sample`` and of every evaluation) for
several strategies, samplers and batch sizes, including a batch size the table did not measure
(interpolated). Rounds alternate tables and sampling; the medians over rounds are compared. With
``--clock thread`` (the default; one torch thread) both sides count the thread's CPU time, which other
jobs on a shared machine do not inflate; ``--clock wall`` is what a user waits on an idle machine.

    .venv/bin/python bench/latency_prediction.py                 # writes bench/latency_prediction.md
    .venv/bin/python bench/latency_prediction.py --rounds 1 --batches 1 --out -
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ddsm_core.threads import passive_openmp  # noqa: E402

passive_openmp()  # before torch loads

import torch  # noqa: E402

from ddsm_core.config import UNetConfig  # noqa: E402
from ddsm_core.inference import prepare_for_inference  # noqa: E402
from ddsm_core.latency import device_name, measure_latency  # noqa: E402
from ddsm_core.sampling import VPDenoiser, sample  # noqa: E402
from ddsm_core.schedules import NoiseSchedule  # noqa: E402
from ddsm_core.strategy import Strategy, parse_strategy_spec  # noqa: E402
from ddsm_core.unet import SlimmableUNet  # noqa: E402

STRATEGIES = ("uniform:2/8", "piecewise:2/8,8/8", "piecewise:2/8,4/8,6/8,8/8", "uniform:8/8")
SAMPLERS = (("ddpm", 20), ("edm", 10), ("dpmpp", 20))


CLOCKS = {"thread": time.thread_time, "wall": time.perf_counter}


def run(
    preset: str, table_batches: list[int], batches: list[int], rounds: int, repeats: int, clock_name: str
) -> list[dict]:
    clock = CLOCKS[clock_name]
    cfg = UNetConfig.from_preset(preset)
    model = prepare_for_inference(SlimmableUNet(cfg))
    schedule = NoiseSchedule.linear()
    denoiser = VPDenoiser(model, schedule)
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    cases = [
        (parse_strategy_spec(spec, sampler, steps, cfg.widths), b)
        for sampler, steps in SAMPLERS
        for spec in STRATEGIES
        for b in batches
    ]
    predicted: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    measured: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    for r in range(rounds):
        table = measure_latency(
            model, table_batches, schedule=schedule, repeats=repeats, warmup=2, clock=clock
        )
        with torch.inference_mode():
            for i, (strategy, b) in enumerate(cases):
                sample(denoiser, strategy, shape, range(b))  # warm: allocator sizes for this batch
                start = clock()
                sample(denoiser, strategy, shape, range(b))
                measured[i].append(clock() - start)
                predicted[i].append(table.predict(strategy, b))
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    rows = []
    for i, (strategy, b) in enumerate(cases):
        p, m = statistics.median(predicted[i]), statistics.median(measured[i])
        rows.append({"strategy": strategy, "batch": b, "predicted": p, "measured": m, "error": (p - m) / m,
                     "interpolated": b not in table_batches})  # fmt: skip
    return rows


def to_markdown(
    rows: list[dict], command: str, preset: str, table_batches: list[int], rounds: int, clock: str
) -> str:
    errors = [abs(r["error"]) for r in rows]
    within = sum(e <= 0.10 for e in errors)
    lines = [
        "# Latency prediction vs measured sampling time",
        "",
        f"- Command: `{command}`",
        f"- Machine: {device_name('cpu')}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}; git commit {_commit()}",
        f"- Preset {preset} (untrained weights: time does not depend on them), float32, channels_last,",
        f"  packed weights. Table measured at batch sizes {table_batches} (median of repeats after",
        "  warm-up); each sampling run timed once per round after one untimed run; medians over "
        f"{rounds} rounds,",
        "  tables and runs alternating. Predicted = sum over the strategy's network calls + steps x the",
        "  sampler's measured per-step overhead (`LatencyTable.predict`).",
        *(
            [
                "- Clock: CPU time of the sampling thread (one torch thread), for table and runs alike:",
                "  the machine's 2 cores were shared with 4-6 other jobs, whose load makes wall times vary",
                "  by 1x-4x; the thread's own CPU time is the work that an idle machine would wait for.",
            ]
            if clock == "thread"
            else ["- Clock: wall time (on a shared machine, single timings vary by tens of percent)."]
        ),
        "",
        f"**|error| <= 10% in {within} of {len(rows)} cases; median |error| "
        f"{100 * statistics.median(errors):.1f}%, largest {100 * max(errors):.1f}%.**",
        "",
        "| sampler | strategy | batch | predicted (ms) | measured (ms) | error |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        s: Strategy = r["strategy"]
        b = f"{r['batch']}{' (interpolated)' if r['interpolated'] else ''}"
        lines.append(
            f"| {s.sampler}-{s.steps} | {s.describe()} | {b} | {1e3 * r['predicted']:.1f} | "
            f"{1e3 * r['measured']:.1f} | {100 * r['error']:+.1f}% |"
        )
    return "\n".join(lines) + "\n"


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return out.stdout.strip() or "?"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits")
    parser.add_argument("--table-batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per width in a table")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="thread", help="thread needs --threads 1")
    parser.add_argument("--out", default=str(ROOT / "bench" / "latency_prediction.md"), help="'-': stdout")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.clock == "thread" and args.threads != 1:
        parser.error("--clock thread measures one thread: use --threads 1 or --clock wall")
    rows = run(args.preset, args.table_batches, args.batches, args.rounds, args.repeats, args.clock)
    command = "python bench/latency_prediction.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = to_markdown(rows, command.strip(), args.preset, args.table_batches, args.rounds, args.clock)
    print(report)
    if args.out != "-":
        Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
