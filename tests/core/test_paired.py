"""Paired bootstrap intervals of FID differences (ddsm_core.paired): numpy only."""

from __future__ import annotations

import numpy as np
import pytest

from ddsm_core.errors import StatsError
from ddsm_core.fid import FeatureStats, frechet_distance
from ddsm_core.paired import _RefDistance, paired_fid_diff

DIM = 8


def _ref(seed: int = 0) -> FeatureStats:
    x = np.random.default_rng(seed).normal(size=(2000, DIM))
    return FeatureStats.from_features(x, "test-extractor")


def _draw(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)) + shift


def test_fast_distance_equals_pytorch_fid_formula():
    ref = _ref()
    x = _draw(300, 1, shift=0.3) * 1.2
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    assert _RefDistance(ref)(mu, sigma) == pytest.approx(
        frechet_distance(mu, sigma, ref.mu, ref.sigma), rel=1e-9
    )


def test_identical_sets_give_a_zero_interval():
    ref = _ref()
    x = _draw(200, 1)
    d = paired_fid_diff(x, x.copy(), ref, n_boot=200, seed=0)
    assert d.diff == 0.0 and d.low == 0.0 and d.high == 0.0
    assert d.equal_quality(0.0) and not d.excludes(0.0)


def test_same_distribution_interval_covers_zero():
    # b is a small perturbation of a (like a strategy close to full width): no real difference
    ref = _ref()
    a = _draw(400, 1)
    b = a + 0.05 * _draw(400, 2)
    d = paired_fid_diff(a, b, ref, n_boot=300, seed=0)
    assert d.low < 0.0 < d.high or d.low <= 0.0 <= d.high
    assert not d.excludes(0.0)
    assert d.equal_quality(tolerance=d.high)
    assert not d.equal_quality(tolerance=d.high - 1e-6)


def test_shifted_set_interval_excludes_zero():
    ref = _ref()
    a = _draw(400, 1)
    b = a + 0.4  # every image moved: FID of b is clearly worse
    d = paired_fid_diff(a, b, ref, n_boot=300, seed=0)
    assert d.fid_b > d.fid_a
    assert d.low > 0.0 and d.excludes(0.0)
    assert d.ratio_low > 1.0
    assert not d.equal_quality(tolerance=0.0)
    # the pairing makes the interval far narrower than the FIDs' unpaired spread would be
    assert d.high - d.low < d.diff


def test_determinism_for_a_seed():
    ref = _ref()
    a, b = _draw(250, 1), _draw(250, 2, shift=0.1)
    d1 = paired_fid_diff(a, b, ref, n_boot=100, seed=7)
    d2 = paired_fid_diff(a, b, ref, n_boot=100, seed=7)
    d3 = paired_fid_diff(a, b, ref, n_boot=100, seed=8)
    assert d1 == d2
    assert (d1.low, d1.high) != (d3.low, d3.high)
    assert d1.diff == d3.diff  # the point estimate does not depend on the bootstrap seed
    assert d1.fid_a == pytest.approx(frechet_distance(a.mean(0), np.cov(a, rowvar=False), ref.mu, ref.sigma))


def test_bad_inputs_raise_stats_error():
    ref = _ref()
    with pytest.raises(StatsError, match="one shape"):
        paired_fid_diff(_draw(10, 1), _draw(11, 2), ref)
    with pytest.raises(StatsError, match="reference statistics are 8-d"):
        paired_fid_diff(np.zeros((10, 4)), np.zeros((10, 4)), ref)
