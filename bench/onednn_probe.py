"""Would choosing the convolution kernel per width help the digits network? oneDNN on vs off.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python bench/onednn_probe.py [--repeats 20]

Times the committed benchmark supernet's frozen TorchScript graph (`ScriptedWidths`, after
`prepare_for_inference`) at every width, batch 1 and 64, with oneDNN convolutions enabled (PyTorch's
default) and disabled (`torch.backends.mkldnn.flags(enabled=False)`: PyTorch's native kernels), all
in one process, round-robin, best of ``--repeats`` by the calling thread's CPU time, one thread.
Prints each width's time under both and the saving ratio (share of saved conv/linear GFLOPs that is
saved time) under each and under the faster of the two per width. The numbers are in
bench/width_latency.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_width_latency import saving_ratio  # noqa: E402
from ddsm_core.checkpoint import load_checkpoint  # noqa: E402
from ddsm_core.flops import cost_table  # noqa: E402
from ddsm_core.inference import ScriptedWidths, prepare_for_inference  # noqa: E402
from ddsm_core.widths import format_width  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--checkpoint", type=Path, default=ROOT / "bench/digits-supernet")
    args = p.parse_args()
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
    torch.set_num_threads(1)
    model, _, _ = load_checkpoint(args.checkpoint)
    prepare_for_inference(model.eval())
    graphs = ScriptedWidths(model)
    widths = tuple(model.config.widths)
    g = cost_table(model).gflops_conv_linear
    ratio = [x / g[-1] for x in g]
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {torch.__version__}; one thread")
    for batch in (1, 64):
        x, t = torch.randn(batch, 1, 8, 8), torch.full((batch,), 500.0)
        best: dict[tuple[float, bool], float] = {}
        for w in widths:  # trace, then TorchScript's profiling runs, under both settings
            for on in (True, False):
                with torch.backends.mkldnn.flags(enabled=on):
                    for _ in range(3):
                        graphs(x, t, w)
        for _ in range(args.repeats):
            for w in widths:
                for on in (True, False):
                    with torch.backends.mkldnn.flags(enabled=on):
                        start = time.thread_time()
                        graphs(x, t, w)
                        took = time.thread_time() - start
                    best[w, on] = min(best.get((w, on), float("inf")), took)
        full_on, full_off = best[widths[-1], True], best[widths[-1], False]
        full_best = min(full_on, full_off)
        print(f"\nbatch {batch}\n| width | GFLOPs ratio | oneDNN (ms) | native (ms) | saving oneDNN | "
              "saving native | saving, faster per width |\n|---|---|---|---|---|---|---|")  # fmt: skip
        for i, w in enumerate(widths):
            on, off = best[w, True], best[w, False]
            savings = [saving_ratio(a / b, ratio[i]) for a, b in ((on, full_on), (off, full_off),
                                                                   (min(on, off), full_best))]  # fmt: skip
            cells = " | ".join("-" if v is None else f"{v:.2f}" for v in savings)
            print(f"| {format_width(w)} | {ratio[i]:.3f} | {1e3 * on:.2f} | {1e3 * off:.2f} | {cells} |")


if __name__ == "__main__":
    main()
