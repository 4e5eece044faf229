"""Coverage of the paired FID interval by simulation: the bootstrap vs the subsampling interval.

    nice -n 19 env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
        PYTHONPATH=. .venv/bin/python bench/paired_coverage.py [--draws 100] [--boot 100] [--cifar]

For each row, ``--draws`` independent sets of N paired images are drawn from known distributions (the
same generator seeds for both methods), and :func:`ddsm_core.paired.paired_fid_diff` makes a 95%
interval of FID(b) - FID(a) (and of FID(b) / FID(a)) with ``method="bootstrap"`` (with replacement,
bias-corrected percentiles) and ``"subsample"`` (N // 2 without replacement). Coverage is the share of
draws whose interval holds the target:

- ``E[diff_N]``: the expected paired difference at N images, estimated by the mean of the draws'
  point estimates (its Monte Carlo error, sd / sqrt(draws), is given). Both intervals are centred on
  the N-image estimate, so this is what they claim to cover: the difference another seed set of N
  images would show on average.
- ``diff_inf``: the exact Frechet distances of the generating Gaussians against the reference (the
  infinite-N difference), for the Gaussian rows. At N < D FID's small-sample bias is large and
  unequal for the two strategies, so no interval centred on the N-image estimate covers it; the column
  says how far apart the two targets are, not which method is right.

Also given: the mean interval width over 2 x 1.96 x the draws' sd of the estimate (1 = calibrated).
Scenarios (features of a ~ N(mu_a, 1.21 S_ref), row i of a and b from the same seed):
``scale``: b = 1.05 a + 0.01 + 0.1 noise (the bench's collapsing case); ``mix``: b another linear map
of the same noise (another covariance, a better FID); ``nonneg``: both of ``scale`` through abs()
(non-negative, skewed, like Inception's pool features). ``--cifar`` also runs the collapsing
example of bench/paired_bootstrap.md once with each method: N = 500 (the ``cpu`` profile's final
images) of 2048-d features from that bench's generator, b = 1.05 a + 0.01, 200 replicates (~1 CPU
minute). Not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddsm_core.fid import FeatureStats, frechet_distance  # noqa: E402
from ddsm_core.paired import interval_method, paired_fid_diff  # noqa: E402

Pair = tuple[np.ndarray, np.ndarray]
# (D, N, scenario): N < D where the rule subsamples, then N >= D where it keeps the bootstrap
ROWS = [
    (256, 150, "scale"), (256, 150, "mix"), (256, 150, "nonneg"), (256, 64, "scale"),
    (64, 64, "scale"), (64, 128, "scale"), (64, 512, "scale"), (64, 2000, "scale"), (64, 2000, "mix"),
]  # fmt: skip


def world(dim: int, scenario: str) -> tuple[FeatureStats, Callable[[int, int], Pair], float | None]:
    """Exact reference statistics, a sampler of paired features, and the exact FID(b) - FID(a) of the
    generating Gaussians (None where the features are not Gaussian)."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    d = np.linspace(0.3, 2.0, dim)
    sigma_ref = (q * d) @ q.T
    ref = FeatureStats(np.zeros(dim), sigma_ref, "synthetic", 10**9)
    root, mu_a = q * np.sqrt(d), 0.05 * rng.normal(size=dim)
    mixer = np.eye(dim) + 0.3 * rng.normal(size=(dim, dim)) / np.sqrt(dim)

    def draw(n: int, seed: int) -> Pair:
        r = np.random.default_rng(seed)
        z = r.normal(size=(n, dim))
        a = 1.1 * z @ root.T + mu_a
        if scenario == "mix":
            return a, z @ mixer @ root.T + mu_a + 0.1
        b = 1.05 * a + 0.01 + 0.1 * r.normal(size=(n, dim))
        return (np.abs(a), np.abs(b)) if scenario == "nonneg" else (a, b)

    if scenario == "nonneg":
        return ref, draw, None
    cov_a = 1.21 * sigma_ref
    if scenario == "mix":
        mu_b, cov_b = mu_a + 0.1, root @ mixer.T @ mixer @ root.T
    else:
        mu_b, cov_b = 1.05 * mu_a + 0.01, 1.05**2 * cov_a + 0.01 * np.eye(dim)
    fid_a = frechet_distance(mu_a, cov_a, ref.mu, ref.sigma)
    return ref, draw, frechet_distance(mu_b, cov_b, ref.mu, ref.sigma) - fid_a


def cifar_example() -> None:
    """Both methods once on the bench's 2048-d features, N = 500: the collapse and its fix."""
    from paired_bootstrap import _features, _ref  # the timing bench's feature generator (same folder)

    rng = np.random.default_rng(0)
    dim = 2048
    mix = np.eye(dim) + rng.normal(size=(dim, dim)) / np.sqrt(dim)
    ref = _ref(rng, dim, mix)
    a = _features(rng, 500, dim, mix)
    for method in ("bootstrap", "subsample"):
        start = time.process_time()
        d = paired_fid_diff(a, 1.05 * a + 0.01, ref, n_boot=200, seed=0, method=method)
        print(
            f"N = 500, D = 2048, b = 1.05 a + 0.01, {method}: {d.describe()}, ratio {d.ratio:.4f} "
            f"[{d.ratio_low:.4f}, {d.ratio_high:.4f}] ({time.process_time() - start:.1f} CPU s)",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=100, help="independent image sets per row")
    parser.add_argument("--boot", type=int, default=100, help="replicates per interval")
    parser.add_argument("--rows", default="", help="comma-separated row numbers (0-based); default all")
    parser.add_argument("--cifar", action="store_true", help="also N = 500, D = 2048, both methods")
    args = parser.parse_args()
    if args.cifar:
        cifar_example()
    rows = [ROWS[int(i)] for i in args.rows.split(",")] if args.rows else ROWS
    out = [
        "| D | N | scenario | rule | E[diff_N] (+- MC) | diff_inf | method | coverage of E[diff_N] | "
        "of E[ratio_N] | of diff_inf | width / (2 x 1.96 sd) | CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dim, n, scenario in rows:
        ref, draw, exact = world(dim, scenario)
        runs: dict[str, list] = {}
        seconds: dict[str, float] = {}
        for method in ("bootstrap", "subsample"):
            start = time.process_time()
            runs[method] = [
                paired_fid_diff(*draw(n, 1000 + k), ref, n_boot=args.boot, seed=k, method=method)
                for k in range(args.draws)
            ]
            seconds[method] = time.process_time() - start
        diffs = np.array([r.diff for r in runs["bootstrap"]])
        ratios = np.array([r.ratio for r in runs["bootstrap"]])
        target, ratio_target, sd = diffs.mean(), ratios.mean(), diffs.std()
        mc = sd / np.sqrt(len(diffs))
        for method, rs in runs.items():
            low, high = np.array([r.low for r in rs]), np.array([r.high for r in rs])
            cover = np.mean((low <= target) & (target <= high))
            r_cover = np.mean([r.ratio_low <= ratio_target <= r.ratio_high for r in rs])
            inf = "-" if exact is None else f"{np.mean((low <= exact) & (exact <= high)):.2f}"
            width = np.mean(high - low) / (2 * 1.96 * sd)
            row = (
                f"| {dim} | {n} | {scenario} | {interval_method(n, dim)} | {target:+.3f} (+-{mc:.3f}) | "
                f"{'-' if exact is None else f'{exact:+.3f}'} | {method} | {cover:.2f} | {r_cover:.2f} | "
                f"{inf} | {width:.2f} | {seconds[method]:.0f} |"
            )
            out.append(row)
            print(row, flush=True)
    print("\n" + "\n".join(out))


if __name__ == "__main__":
    main()
