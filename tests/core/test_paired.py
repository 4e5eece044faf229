"""Paired bootstrap intervals of FID differences (ddsm_core.paired): numpy only."""

from __future__ import annotations

import numpy as np
import pytest

from ddsm_core import paired
from ddsm_core.errors import StatsError
from ddsm_core.fid import FeatureStats, frechet_distance
from ddsm_core.paired import _GramDistance, _moments, _RefDistance, paired_fid_diff

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


# ---------------------------------------------------------------- the Gram path (N < D, D >= 256)
WIDE = 2048


@pytest.fixture(scope="module")
def wide() -> tuple[_RefDistance, np.ndarray]:
    """A 2048-d reference (a dense, anisotropic sqrt(S_ref) built from a Householder reflection, so
    no 2048 x 2048 eigh is needed) and 300 features of it that are shifted, scaled and correlated."""
    rng = np.random.default_rng(3)
    v = rng.normal(size=WIDE)
    v /= np.linalg.norm(v)
    d = np.linspace(0.2, 2.0, WIDE)
    q = np.eye(WIDE) - 2 * np.outer(v, v)
    dist = object.__new__(_RefDistance)  # the fields _RefDistance.__init__ would compute
    dist.root = (q * d) @ q
    dist.mu = rng.normal(size=WIDE) * 0.1
    dist.trace = float(np.sum(d**2))
    x = (rng.normal(size=(300, WIDE)) * np.sqrt(d)) @ q + 0.3
    x[:, :50] += x[:, 50:100]  # correlated features
    return dist, x


def _with_eigenvalues(monkeypatch, fid, *args) -> tuple[float, np.ndarray]:
    """``fid(*args)`` and the eigenvalues its one eigenproblem found (captured, not recomputed)."""
    seen = []
    real = paired.linalg.eigvalsh
    monkeypatch.setattr(paired.linalg, "eigvalsh", lambda a: seen.append(real(a)) or seen[-1])
    value = fid(*args)
    monkeypatch.undo()
    assert len(seen) == 1
    return value, seen[0]


def _noise(eig: np.ndarray) -> float:
    """What rounding-level eigenvalues (|eig| < 1e-12 x the largest: zero in exact arithmetic) add to
    Tr sqrt(R S R)."""
    return float(np.sqrt(np.clip(eig[eig < 1e-12 * eig.max()], 0.0, None)).sum())


@pytest.mark.parametrize("case", ["all", "bootstrap draw", "heavy duplicates", "rank-deficient features"])
def test_gram_distance_equals_the_d_space_path_at_2048(wide, case, monkeypatch) -> None:
    dist, x = wide
    n = len(x)
    index = {"all": np.arange(n), "bootstrap draw": np.random.default_rng(5).integers(0, n, n),
             "heavy duplicates": np.repeat(np.arange(0, n, 10), 10)}.get(case, np.arange(n))  # fmt: skip
    if case == "rank-deficient features":  # rank 20, far below N: most of the Gram's spectrum is zero
        x = np.random.default_rng(6).normal(size=(n, 20)) @ x[:20] / 5 + 0.3
        index = np.random.default_rng(7).integers(0, n, n)
    old, eig_old = _with_eigenvalues(monkeypatch, dist, *_moments(x, index))
    new, eig_new = _with_eigenvalues(monkeypatch, _GramDistance(x, dist), *paired._multiset(index, n))
    # The D path sums the sqrt of ~D - N rounding-level eigenvalues (~1e-16 x the largest, so a sqrt
    # ~1e-8 x its sqrt each): an error of ~1e-8 relative, which the Gram path has only for its own,
    # far smaller, zero block. Without that noise the two agree to rounding.
    assert new == pytest.approx(old, rel=1e-7)
    assert _noise(eig_old) > _noise(eig_new)
    assert new + 2 * _noise(eig_new) == pytest.approx(old + 2 * _noise(eig_old), rel=1e-11)
    top = len(eig_new) - int(np.sum(eig_new < 1e-12 * eig_new.max()))  # the nonzero spectrum: the same
    np.testing.assert_allclose(np.sort(eig_new)[-top:], np.sort(eig_old)[-top:], rtol=1e-11)


def test_the_path_is_chosen_by_size() -> None:
    assert paired._use_gram(300, 2048) and paired._use_gram(2000, 2048) and paired._use_gram(255, 256)
    assert not paired._use_gram(2048, 2048) and not paired._use_gram(10_000, 2048)
    assert not paired._use_gram(30, 64) and not paired._use_gram(500, 64)  # low-D: the D path, unchanged


def _mid(seed: int = 0, n: int = 60, dim: int = 320) -> tuple[FeatureStats, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = FeatureStats.from_features(rng.normal(size=(2 * dim, dim)), "test-extractor")
    a = rng.normal(size=(n, dim)) + 0.1
    return ref, a, a + 0.2 * rng.normal(size=(n, dim)) + 0.05


def test_paired_diff_on_the_gram_path_equals_the_d_space_path(monkeypatch) -> None:
    ref, a, b = _mid()
    built = []
    monkeypatch.setattr(paired, "_GramDistance", lambda *args: built.append(1) or _GramDistance(*args))
    fast = paired_fid_diff(a, b, ref, n_boot=40, seed=3)
    assert len(built) == 2  # one per strategy
    monkeypatch.setattr(paired, "_use_gram", lambda n, dim: False)
    slow = paired_fid_diff(a, b, ref, n_boot=40, seed=3)
    assert len(built) == 2
    monkeypatch.undo()
    for key in ("fid_a", "fid_b", "diff", "low", "high", "ratio", "ratio_low", "ratio_high"):
        assert getattr(fast, key) == pytest.approx(getattr(slow, key), rel=1e-7, abs=1e-9), key
    point = frechet_distance(a.mean(0), np.cov(a, rowvar=False), ref.mu, ref.sigma)  # sqrtm's value
    assert fast.fid_a == pytest.approx(point, rel=1e-7)
    assert fast == paired_fid_diff(a, b, ref, n_boot=40, seed=3)  # deterministic for a seed
    other = paired_fid_diff(a, b, ref, n_boot=40, seed=4)
    assert (other.low, other.high) != (fast.low, fast.high) and other.diff == fast.diff


def test_low_dimensional_features_stay_on_the_d_space_path(monkeypatch) -> None:
    monkeypatch.setattr(paired, "_GramDistance", None)  # would raise if called
    rng = np.random.default_rng(0)
    ref = FeatureStats.from_features(rng.normal(size=(500, 64)), "test-extractor")
    a = rng.normal(size=(30, 64))  # fewer images than the digits' 64 dimensions: still the D path
    d = paired_fid_diff(a, a + 0.1, ref, n_boot=20, seed=0)
    assert d.fid_a == frechet_distance(a.mean(0), np.cov(a, rowvar=False), ref.mu, ref.sigma)  # exactly
