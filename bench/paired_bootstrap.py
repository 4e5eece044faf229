"""Seconds per paired-bootstrap replicate: the D-space path vs the image-space (Gram) path.

    nice -n 19 env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
        PYTHONPATH=. .venv/bin/python bench/paired_bootstrap.py [--reps 3] [--fixed]

One replicate of :func:`ddsm_core.paired.paired_fid_diff` is one joint index draw and two FIDs (a and b)
against fixed reference statistics. For each N in {300, 500, 2000} and D in {64, 2048} both paths run on
the SAME index draws of random correlated features (the work does not depend on the values) and the
table gives the thread's CPU seconds per replicate (one BLAS thread; CPU time, not wall time, because
the machine is shared and the load changes wall times by several times), the path ``paired_fid_diff``
chooses (:func:`ddsm_core.paired._use_gram`) and old / chosen. Also timed: the per-comparison fixed
costs (sqrt(S_ref), the Gram precomputation) and with ``--fixed`` (~1 CPU minute more) the full-sample
point FID via ``sqrtm``, one D-path FID at the ``paper`` profile's 10,000 final images, and one whole
1000-replicate comparison at N = 500, D = 2048 (the ``cpu`` profile's final images). Not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddsm_core.fid import FeatureStats, frechet_distance  # noqa: E402
from ddsm_core.paired import (  # noqa: E402
    _GramDistance,
    _moments,
    _multiset,
    _RefDistance,
    _use_gram,
    paired_fid_diff,
)


def _cpu(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """The thread's CPU seconds for ``fn(*args, **kwargs)``, and its result."""
    start = time.thread_time()
    out = fn(*args, **kwargs)
    return time.thread_time() - start, out


def _features(rng: np.random.Generator, n: int, dim: int, mix: np.ndarray) -> np.ndarray:
    return np.abs(rng.normal(size=(n, dim)) @ mix + 0.5)  # non-negative and correlated, like Inception's


def _ref(rng: np.random.Generator, dim: int, mix: np.ndarray) -> FeatureStats:
    x = _features(rng, 2 * dim + 100, dim, mix)
    return FeatureStats(x.mean(0), np.cov(x, rowvar=False), "bench", len(x))


def _d_path(dist: _RefDistance, a: np.ndarray, b: np.ndarray, draws: list[np.ndarray]) -> None:
    for index in draws:
        dist(*_moments(a, index)), dist(*_moments(b, index))


def _gram_path(ga: _GramDistance, gb: _GramDistance, n: int, draws: list[np.ndarray]) -> None:
    for index in draws:
        rows, counts = _multiset(index, n)
        ga(rows, counts), gb(rows, counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="replicates per cell and path")
    parser.add_argument(
        "--fixed",
        action="store_true",
        help="also time sqrtm, a 10k-image FID, a whole comparison",
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows, fixed = [], []
    for dim in (64, 2048):
        mix = np.eye(dim) + rng.normal(size=(dim, dim)) / np.sqrt(dim)
        ref = _ref(rng, dim, mix)
        seconds, dist = _cpu(_RefDistance, ref)
        fixed.append((f"sqrt(S_ref) (eigh), once per comparison, D = {dim}", seconds))
        for n in (300, 500, 2000):
            a, b = _features(rng, n, dim, mix), _features(rng, n, dim, mix) * 1.05
            draws = [rng.integers(0, n, size=n) for _ in range(args.reps)]
            seconds, ga = _cpu(_GramDistance, a, dist)
            gb = _GramDistance(b, dist)
            if dim == 2048:
                fixed.append((f"Gram precomputation, one strategy, N = {n}, D = {dim}", seconds))
            t_old = _cpu(_d_path, dist, a, b, draws)[0] / args.reps
            t_new = _cpu(_gram_path, ga, gb, n, draws)[0] / args.reps
            chosen = "gram" if _use_gram(n, dim) else "D"
            t_chosen = t_new if chosen == "gram" else t_old
            rows.append((n, dim, chosen, t_old, t_new, t_old / t_chosen))
            print(f"N={n} D={dim}: D path {t_old:.4f} s, Gram path {t_new:.4f} s ({chosen})", flush=True)
        if dim == 2048 and args.fixed:
            a = _features(rng, 500, dim, mix)
            seconds = _cpu(frechet_distance, *_moments(a, np.arange(500)), ref.mu, ref.sigma)[0]
            fixed.append(("full-sample point FID via sqrtm (the D path's, per strategy), D = 2048", seconds))
            big = _features(rng, 10_000, dim, mix)
            index = rng.integers(0, 10_000, size=10_000)
            seconds = _cpu(dist, *_moments(big, index))[0]
            fixed.append(("one strategy FID of one replicate, D path, N = 10000 (paper), D = 2048", seconds))
            del big
            seconds = _cpu(paired_fid_diff, a, a * 1.05 + 0.01, ref, n_boot=1000, seed=0)[0]
            fixed.append(("paired_fid_diff, 1000 replicates, N = 500, D = 2048 (Gram path)", seconds))
    print("\n| N | D | path chosen | D path (s/replicate) | Gram path (s/replicate) | old / chosen |")
    print("|---|---|---|---|---|---|")
    for n, dim, chosen, t_old, t_new, ratio in rows:
        print(f"| {n} | {dim} | {chosen} | {t_old:.4f} | {t_new:.4f} | {ratio:.1f}x |")
    print("\n| fixed cost | CPU s |\n|---|---|")
    for name, seconds in fixed:
        print(f"| {name} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
