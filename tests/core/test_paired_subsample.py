"""The subsampling interval of ddsm_core.paired for fewer images than feature dimensions (N < D), and
the bootstrap left unchanged for N >= D. numpy only; ~8 CPU s in all, most of it the coverage simulation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from ddsm_core import paired
from ddsm_core.errors import StatsError
from ddsm_core.fid import FeatureStats, frechet_distance
from ddsm_core.paired import PairedDiff, interval_method, paired_fid_diff
from ddsm_core.report import _paired_lines

WIDE = 256  # the smallest dimension of the Gram path: the CIFAR-scale profile's path, cheaply
Pair = tuple[np.ndarray, np.ndarray]


def _world(dim: int = WIDE) -> tuple[FeatureStats, Callable[[int, int], Pair]]:
    """Exact Gaussian reference statistics (anisotropic, rotated) and a sampler of paired features:
    a ~ N(mu_a, 1.21 S_ref), b = 1.05 a + 0.01 + 0.1 noise, row i of both from seed i (the bench's
    collapsing case, bench/paired_bootstrap.md)."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    d = np.linspace(0.3, 2.0, dim)
    ref = FeatureStats(np.zeros(dim), (q * d) @ q.T, "synthetic", 10**9)
    root, mu_a = q * np.sqrt(d), 0.05 * rng.normal(size=dim)

    def draw(n: int, seed: int) -> Pair:
        r = np.random.default_rng(seed)
        a = 1.1 * r.normal(size=(n, dim)) @ root.T + mu_a
        return a, 1.05 * a + 0.01 + 0.1 * r.normal(size=(n, dim))

    return ref, draw


@pytest.fixture(scope="module")
def world() -> tuple[FeatureStats, Callable[[int, int], Pair]]:
    return _world()


def test_the_rule_subsamples_below_the_feature_dimension_only() -> None:
    assert interval_method(500, 2048) == "subsample"  # the cpu profile with Inception features
    assert interval_method(2047, 2048) == "subsample" and interval_method(30, 64) == "subsample"
    assert interval_method(2048, 2048) == "bootstrap" and interval_method(10_000, 2048) == "bootstrap"
    assert interval_method(8000, 64) == "bootstrap"  # the digits: unchanged
    assert interval_method(3, 64) == "bootstrap"  # too few to halve


def test_subsample_coverage_is_near_nominal_where_the_bootstrap_has_none(world) -> None:
    """Over 80 draws of N = 100 < D = 256 images, the 95% subsampling interval covers the expected
    paired difference at N images (the mean of the draws' estimates) near 95% of the time, at about
    the width the draws' own spread asks for, and so does its ratio interval (measured: 0.91 and 0.875
    with 50 replicates each, widths 0.91 and 0.95 of 2 x 1.96 sd; 0.90-0.98 with 100 replicates over
    100 draws in bench/paired_bootstrap.md). Broken variants fail: deviations taken from the estimate
    instead of the replicates' mean cover 0.50; the plain ratio of m-image FIDs 0.775 (width 0.67).
    The old bootstrap covers none of 12: its replicates sit ~3 FID above the estimate and its
    interval collapses (width 0.015 of the draws' spread)."""
    ref, draw = world
    n, draws = 100, 80
    runs = [paired_fid_diff(*draw(n, 100 + k), ref, n_boot=50, seed=k) for k in range(draws)]
    assert {r.method for r in runs} == {"subsample"}
    diffs, ratios = np.array([r.diff for r in runs]), np.array([r.ratio for r in runs])
    for truth, spread, low, high in (
        (diffs.mean(), diffs.std(), [r.low for r in runs], [r.high for r in runs]),
        (ratios.mean(), ratios.std(), [r.ratio_low for r in runs], [r.ratio_high for r in runs]),
    ):
        low, high = np.array(low), np.array(high)
        coverage = np.mean((low <= truth) & (truth <= high))
        # 95% +- 2.4% binomial sd over 80 draws; an interval 1.5x too narrow covers ~80%, one 1.5x
        # too wide ~99.7% and fails the width bound
        assert 0.85 <= coverage <= 1.0, coverage
        assert 0.75 <= np.mean(high - low) / (2 * 1.96 * spread) <= 1.35
    old = [paired_fid_diff(*draw(n, 100 + k), ref, n_boot=50, seed=k, method="bootstrap") for k in range(12)]
    assert np.mean([o.low <= diffs.mean() <= o.high for o in old]) <= 0.5
    assert np.mean([o.high - o.low for o in old]) < 0.2 * 2 * 1.96 * diffs.std()


def test_subsample_interval_holds_the_estimate_and_is_not_a_point(world) -> None:
    ref, draw = world
    a, b = draw(150, 1)
    old = paired_fid_diff(a, b, ref, n_boot=100, seed=0, method="bootstrap")
    assert not old.low < old.diff < old.high  # the defect: the estimate is outside (or on) the interval
    d = paired_fid_diff(a, b, ref, n_boot=100, seed=0)
    assert d.method == "subsample" and d.replicate_images == 75
    assert d.low < d.diff < d.high and d.ratio_low < d.ratio < d.ratio_high
    assert d.high - d.low > 0.05 * d.diff and d.low > 0  # b is worse, and the interval says so
    assert (d.fid_a, d.fid_b, d.diff) == (old.fid_a, old.fid_b, old.diff)  # same point estimates
    assert d.to_dict()["method"] == "subsample" and old.to_dict()["method"] == "bootstrap"
    assert "(95% subsample, 100 x 75 of 150 images)" in d.describe()
    assert d == paired_fid_diff(a, b, ref, n_boot=100, seed=0)  # the same for a seed
    other = paired_fid_diff(a, b, ref, n_boot=100, seed=1)
    assert (other.low, other.high) != (d.low, d.high) and other.diff == d.diff


def test_identical_sets_give_a_zero_subsample_interval(world) -> None:
    ref, draw = world
    a, _ = draw(40, 2)
    d = paired_fid_diff(a, a.copy(), ref, n_boot=20, seed=0)
    assert d.method == "subsample"
    assert (d.diff, d.low, d.high, d.ratio_low, d.ratio_high) == (0.0, 0.0, 0.0, 1.0, 1.0)


def test_subsample_on_the_gram_path_equals_the_d_space_path(world, monkeypatch) -> None:
    ref, draw = world
    a, b = draw(61, 3)  # odd N: 30 of 61 per replicate, scaled by sqrt(30 / 31)
    fast = paired_fid_diff(a, b, ref, n_boot=15, seed=3)
    monkeypatch.setattr(paired, "_use_gram", lambda n, dim: False)
    slow = paired_fid_diff(a, b, ref, n_boot=15, seed=3)
    assert fast.method == slow.method == "subsample"
    for key in ("fid_a", "fid_b", "diff", "low", "high", "ratio", "ratio_low", "ratio_high"):
        assert getattr(fast, key) == pytest.approx(getattr(slow, key), rel=1e-7, abs=1e-9), key


def test_bad_methods_raise_stats_error(world) -> None:
    ref, draw = world
    with pytest.raises(StatsError, match="unknown interval method 'jackknife'"):
        paired_fid_diff(*draw(10, 1), ref, method="jackknife")  # type: ignore[arg-type]
    with pytest.raises(StatsError, match="at least 4 images"):
        paired_fid_diff(*draw(3, 1), ref, method="subsample")
    assert paired_fid_diff(*draw(3, 1), ref, n_boot=5).method == "bootstrap"  # too few to halve


# ------------------------------------------------------------ N >= D: the bootstrap, bit for bit
def _digits_like(n: int, dim: int = 64) -> tuple[FeatureStats, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    ref = FeatureStats.from_features(rng.normal(size=(3 * dim, dim)), "test-extractor")
    a = np.abs(rng.normal(size=(n, dim)) + 0.2)
    return ref, a, 1.05 * a + 0.1 * rng.normal(size=(n, dim))


def _committed_bootstrap(a: np.ndarray, b: np.ndarray, ref: FeatureStats, n_boot: int, seed: int) -> dict:
    """paired_fid_diff's D path and interval as committed before the subsampling interval (b3fdc75)."""
    dist, n = paired._RefDistance(ref), len(a)
    fid_a = frechet_distance(*paired._moments(a, np.arange(n)), ref.mu, ref.sigma)
    fid_b = frechet_distance(*paired._moments(b, np.arange(n)), ref.mu, ref.sigma)
    rng = np.random.default_rng(seed)
    diffs, ratios = np.empty(n_boot), np.empty(n_boot)
    for k in range(n_boot):
        index = rng.integers(0, n, size=n)
        fa, fb = dist(*paired._moments(a, index)), dist(*paired._moments(b, index))
        diffs[k], ratios[k] = fb - fa, fb / fa if fa > 0 else np.inf
    low, high = paired._bias_corrected(diffs, fid_b - fid_a, 0.95)
    r_low, r_high = paired._bias_corrected(ratios, fid_b / fid_a, 0.95)
    return {"fid_a": fid_a, "fid_b": fid_b, "diff": fid_b - fid_a, "low": low, "high": high,
            "ratio": fid_b / fid_a, "ratio_low": r_low, "ratio_high": r_high}  # fmt: skip


# What b3fdc75 printed for _digits_like(200) and (64), n_boot=50, seed=5 (float.hex of each field).
GOLDEN = {
    200: {"fid_a": "0x1.d3f830d89f320p+5", "fid_b": "0x1.eae1c47c0786cp+5", "diff": "0x1.6e993a36854c0p+1",
          "low": "0x1.58ae983c6aa66p+1", "high": "0x1.77725eed511b7p+1", "ratio": "0x1.0c88bad069627p+0",
          "ratio_low": "0x1.0b4f641a31d4cp+0", "ratio_high": "0x1.0d56751493fc5p+0"},
    64: {"fid_a": "0x1.0c358a04699f2p+6", "fid_b": "0x1.195d03614a499p+6", "diff": "0x1.a4ef2b9c154e0p+1",
         "low": "0x1.c7d5133e1b1c1p+1", "high": "0x1.c7e0b47e8cd08p+1", "ratio": "0x1.0c8e2ef4d172ep+0",
         "ratio_low": "0x1.0c296ad8562b3p+0", "ratio_high": "0x1.0d088bf44d994p+0"},
}  # fmt: skip


@pytest.mark.parametrize("n", [200, 64])  # digits-like N > D, and the boundary N = D
def test_n_at_or_above_d_keeps_the_committed_bootstrap_bit_for_bit(n) -> None:
    ref, a, b = _digits_like(n)
    d = paired_fid_diff(a, b, ref, n_boot=50, seed=5)
    assert d.method == "bootstrap" and "(95% bootstrap, 50 x" in d.describe()
    committed = _committed_bootstrap(a, b, ref, 50, 5)
    for key, value in committed.items():
        assert getattr(d, key) == value, key  # exactly: the same operations in the same order
        # and the numbers themselves, to rounding across BLAS builds (exact on the machine that made them;
        # at N = D the covariance is near-singular and sqrtm turns rounding into 2e-10 relative on an
        # AVX-512 Xeon); another interval or resampling moves them by far more than 1e-7
        assert getattr(d, key) == pytest.approx(float.fromhex(GOLDEN[n][key]), rel=1e-7, abs=0), key


def test_the_report_says_which_interval_it_shows() -> None:
    fields = dict(fid_a=10.0, fid_b=10.5, diff=0.5, low=0.1, high=0.9, ratio=1.05, ratio_low=1.01,
                  ratio_high=1.09, n_images=500, n_boot=1000, level=0.95, seed=0)  # fmt: skip

    def report(d: dict) -> str:
        return "\n".join(_paired_lines({"pick": {**d, "tolerance": 1.0, "equal_quality": True}}))

    for method, words in (("subsample", "250 of 500 images drawn without replacement"),
                          ("bootstrap", "indices resampled jointly")):  # fmt: skip
        text = report(PairedDiff(**fields, method=method).to_dict())
        assert words in text and f"| {method} |" in text, text
    legacy = {k: v for k, v in PairedDiff(**fields).to_dict().items() if k != "method"}  # an old results.json
    assert "| bootstrap |" in report(legacy)
