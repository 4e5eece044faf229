"""Paired comparisons of two strategies sampled from the SAME seeds: a bootstrap interval of the FID
difference (and ratio), and "equal quality" as a stated tolerance on that interval.

Image ``i`` of both strategies starts from the same noise (common random numbers), so resampling the
image indices *jointly* keeps the pairing: each bootstrap replicate draws one index set and computes
both FIDs on it, and the spread of ``FID_b - FID_a`` over replicates measures how much the difference
could move with another draw of seeds. That is much narrower than the two FIDs' own spreads, which
mostly measure how easy a seed set is (bench/digits_search.md).

The reference covariance is fixed, so every replicate's trace term uses one precomputed square root:
Tr sqrt(S_ref S) = sum of sqrt(eigenvalues of R S R) with R = sqrt(S_ref), a symmetric eigenproblem
instead of a general ``sqrtm`` (the same value to ~1e-9 relative for a full-rank S; tested against
:func:`~ddsm_core.fid.frechet_distance`).

With fewer images than feature dimensions (N < D, e.g. 500 images of 2048-d Inception features) this
D-space work is wasted: a replicate (two FIDs) costs 4-5 s at D = 2048 on one core, mostly R S R and
its 2048 x 2048 eigenproblem. R S R = M^T M / (n-1) with M = Y[I] - mean(Y[I]), Y = X R, and its
nonzero eigenvalues are those of the Gram M M^T / (n-1). So :class:`_GramDistance` precomputes
K = Y Y^T (N x N) once per feature set and solves, per replicate, an eigenproblem over the DISTINCT
drawn images only (about 0.63 N of them: a repeated image is one row weighted by its count): ~8 ms
instead of ~4.2 s per replicate at N = 300, D = 2048 (bench/paired_bootstrap.md). It is exact: the
nonzero spectra agree to ~1e-11, and the values to ~1e-8 relative, the sqrt of the D - N rounding-level
eigenvalues the D path sums (tests/core/test_paired.py). The rule is :func:`_use_gram`;
low-dimensional features (the digits' 64-d) keep the D path unchanged, bit for bit. Torch-free: numpy
and scipy only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import linalg

from ddsm_core.errors import StatsError
from ddsm_core.fid import FeatureStats, frechet_distance

DEFAULT_BOOTSTRAP = 1000
DEFAULT_LEVEL = 0.95
# "Equal quality" unless stated otherwise: the interval's upper end within 5% of the full width's FID.
DEFAULT_REL_TOLERANCE = 0.05


@dataclass(frozen=True)
class PairedDiff:
    """FID of ``b`` minus FID of ``a`` on the same seeds, with a bias-corrected bootstrap interval.

    :param fid_a, fid_b: the FIDs of all ``n_images`` (the point estimates).
    :param diff: ``fid_b - fid_a``; ``low``, ``high``: its ``level`` interval.
    :param ratio: ``fid_b / fid_a``; ``ratio_low``, ``ratio_high``: its interval (same replicates).
    :param n_boot: bootstrap replicates; ``seed``: the seed of their index draws.
    """

    fid_a: float
    fid_b: float
    diff: float
    low: float
    high: float
    ratio: float
    ratio_low: float
    ratio_high: float
    n_images: int
    n_boot: int
    level: float
    seed: int

    def equal_quality(self, tolerance: float) -> bool:
        """``b`` is as good as ``a`` within ``tolerance`` FID: the interval's upper end is <= it."""
        return self.high <= tolerance

    def excludes(self, value: float) -> bool:
        """The difference interval does not contain ``value`` (e.g. 0: a real difference)."""
        return not self.low <= value <= self.high

    def describe(self, tolerance: float | None = None) -> str:
        """``+1.70 [+0.80, +2.60] (95%, 1000 x 500 images)``, plus the verdict for a tolerance."""
        text = (
            f"{self.diff:+.2f} [{self.low:+.2f}, {self.high:+.2f}] ({100 * self.level:.0f}%, "
            f"{self.n_boot} x {self.n_images} images)"
        )
        if tolerance is not None:
            verdict = "equal quality" if self.equal_quality(tolerance) else "not equal"
            text += f": {verdict} at tolerance {tolerance:g}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _RefDistance:
    """FID of feature sets against fixed reference statistics, with sqrt(S_ref) computed once."""

    def __init__(self, ref: FeatureStats) -> None:
        self.mu = np.asarray(ref.mu, dtype=np.float64)
        sigma = np.asarray(ref.sigma, dtype=np.float64)
        self.trace = float(np.trace(sigma))
        w, v = linalg.eigh(sigma)
        self.root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T  # symmetric PSD square root

    def __call__(self, mu: np.ndarray, sigma: np.ndarray) -> float:
        diff = mu - self.mu
        inner = self.root @ sigma @ self.root
        eig = linalg.eigvalsh((inner + inner.T) / 2)
        tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
        return float(diff @ diff + self.trace + np.trace(sigma) - 2 * tr_covmean)


# Below this dimension a D-space replicate costs about a millisecond: the Gram path would save nothing
# and the numbers of low-dimensional features (the digits' 64-d) stay exactly those of the D path.
_GRAM_MIN_DIM = 256


def _use_gram(n: int, dim: int) -> bool:
    """Whether :class:`_GramDistance` is the cheaper exact path for ``n`` images of ``dim``-d features.

    Per replicate the D path costs n D^2 (covariance) + 2 D^3 (R S R) + an eigenproblem of size D,
    the Gram path an eigenproblem of size ~0.63 n (the distinct images drawn) plus O(n^2) gathers, so
    it wins whenever n < D (measured at D = 2048: 530x at n = 300, 8x at n = 2000;
    bench/paired_bootstrap.md). Around n ~ D it would still win by the D path's matrix products,
    which this rule leaves on the table to stay simple. Memory: the Gram path holds two n x n and
    two n x D arrays, which with n < D is no more than the D x D arrays (R, S, R S R) the D path
    holds anyway.
    """
    return dim >= _GRAM_MIN_DIM and n < dim


class _GramDistance:
    """FID against fixed reference statistics of index multisets of ONE feature set, in image space.

    For rows x_i (centred once by their overall mean, which changes no covariance but keeps the
    centring below from cancelling) and y_i = x_i R: a multiset with distinct rows U and counts c_i
    (n = sum c_i) has mean xbar = sum c_i x_i / n, n-1 times its covariance is
    sum c_i (x_i - xbar)(x_i - xbar)^T, and R S R = Z^T Z with rows z_i = sqrt(c_i / (n-1)) (y_i - ybar).
    Its nonzero eigenvalues are those of Z Z^T, whose entries are
    sqrt(c_i c_j) (K_ij - r_i - r_j + m) / (n-1) with K = Y Y^T, r = K_U c / n and m = c.r / n.
    Tr S = (sum c_i |x_i|^2 - n |xbar|^2) / (n-1). All are exact rewrites of :class:`_RefDistance`.
    """

    def __init__(self, features: np.ndarray, dist: _RefDistance) -> None:
        center = features.mean(axis=0)
        self.x = features - center
        self.sq = np.einsum("ij,ij->i", self.x, self.x)
        y = self.x @ dist.root
        self.gram = y @ y.T
        self.offset = center - dist.mu
        self.ref_trace = dist.trace

    def __call__(self, rows: np.ndarray, counts: np.ndarray) -> float:
        """FID of the multiset with rows ``rows`` (distinct) taken ``counts`` times each."""
        c = counts.astype(np.float64)
        n = float(c.sum())
        xbar = c @ self.x[rows] / n
        trace = (c @ self.sq[rows] - n * (xbar @ xbar)) / (n - 1)
        k = self.gram[np.ix_(rows, rows)]
        r = k @ c / n
        w = np.sqrt(c / (n - 1))
        inner = (k - r[:, None] - r[None, :] + (c @ r) / n) * np.outer(w, w)
        eig = linalg.eigvalsh(inner)  # reads one triangle: symmetric up to rounding is enough
        tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
        diff = self.offset + xbar
        return float(diff @ diff + self.ref_trace + trace - 2 * tr_covmean)


def _multiset(index: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of an index draw (sorted) and how often each was drawn."""
    counts = np.bincount(index, minlength=n)
    rows = np.flatnonzero(counts)
    return rows, counts[rows]


def _moments(features: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = features[index]
    return x.mean(axis=0), np.cov(x, rowvar=False)


def paired_fid_diff(
    features_a: np.ndarray,
    features_b: np.ndarray,
    ref: FeatureStats,
    *,
    n_boot: int = DEFAULT_BOOTSTRAP,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> PairedDiff:
    """Bootstrap interval of ``FID(b) - FID(a)`` against ``ref``, resampling image indices jointly.

    :param features_a, features_b: [N x D] per-image features; row ``i`` of both comes from seed ``i``.
    :param ref: the reference statistics both FIDs are measured against (same extractor, same D).
    :param n_boot: replicates; each costs two eigenproblems (one per strategy), of size D on the D
        path (~2 ms per replicate at D = 64, 4-5 s at D = 2048, one core) or of the ~0.63 N distinct
        images drawn on the Gram path (N < D, D >= 256; see :func:`_use_gram`): ~8 ms at N = 300,
        ~0.6 s at N = 2000 (bench/paired_bootstrap.md). On the Gram path the point estimates
        ``fid_a``, ``fid_b`` come from it too, instead of :func:`~ddsm_core.fid.frechet_distance`'s
        ``sqrtm`` (~25 s per strategy at D = 2048): they differ by ~3e-8 relative, the rounding noise
        that ``sqrtm`` and the D path add for a singular S (N < D) and the Gram path does not.
    :param level: two-sided coverage of the percentile interval.
    :param seed: seed of the index draws; the same inputs and seed give the same interval.
    :raises StatsError: the arrays are not paired [N x D] features of ``ref``'s dimension.
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise StatsError(
            f"paired features must be two [N x D] arrays of one shape, got {a.shape} and {b.shape}"
        )
    n, dim = a.shape
    if dim != ref.dim:
        raise StatsError(f"features are {dim}-d but the reference statistics are {ref.dim}-d")
    if n < 2:
        raise StatsError(f"need at least 2 paired images, got {n}")
    if n_boot < 1 or not 0.0 < level < 1.0:
        raise StatsError(f"need n_boot >= 1 and 0 < level < 1, got {n_boot} and {level}")
    dist = _RefDistance(ref)
    everything = np.arange(n)
    if _use_gram(n, dim):
        gram_a, gram_b = _GramDistance(a, dist), _GramDistance(b, dist)
        once = np.ones(n, dtype=np.int64)
        fid_a, fid_b = gram_a(everything, once), gram_b(everything, once)

        def replicate(index: np.ndarray) -> tuple[float, float]:
            rows, counts = _multiset(index, n)
            return gram_a(rows, counts), gram_b(rows, counts)
    else:
        fid_a = frechet_distance(*_moments(a, everything), ref.mu, ref.sigma)
        fid_b = frechet_distance(*_moments(b, everything), ref.mu, ref.sigma)

        def replicate(index: np.ndarray) -> tuple[float, float]:
            return dist(*_moments(a, index)), dist(*_moments(b, index))

    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    ratios = np.empty(n_boot)
    for k in range(n_boot):
        fa, fb = replicate(rng.integers(0, n, size=n))
        diffs[k] = fb - fa
        ratios[k] = fb / fa if fa > 0 else np.inf
    diff = fid_b - fid_a
    ratio = fid_b / fid_a if fid_a > 0 else float("inf")
    low, high = _bias_corrected(diffs, diff, level)
    r_low, r_high = _bias_corrected(ratios, ratio, level)
    return PairedDiff(
        fid_a=fid_a, fid_b=fid_b, diff=diff, low=low, high=high, ratio=ratio, ratio_low=r_low,
        ratio_high=r_high, n_images=n, n_boot=n_boot, level=level, seed=seed,
    )  # fmt: skip


def _bias_corrected(replicates: np.ndarray, estimate: float, level: float) -> tuple[float, float]:
    """Efron's bias-corrected (BC) percentile interval.

    A resample repeats images, which raises every FID by more finite-sample bias than the full set
    has, and not by the same amount for both strategies: the replicates of a ratio sit mostly below
    the estimate (measured: 2/8 vs full width on digits, ratio 1.61, plain percentiles [1.12, 1.65]).
    BC shifts the percentiles by z0 = Phi^-1(share of replicates below the estimate), which removes
    such a median bias; with none (z0 = 0) it is the plain percentile interval.
    """
    from scipy.stats import norm

    b = len(replicates)
    below = (np.sum(replicates < estimate) + 0.5 * np.sum(replicates == estimate)) / b
    z0 = norm.ppf(np.clip(below, 0.5 / b, 1 - 0.5 / b))
    z = norm.ppf(1 - (1 - level) / 2)
    q_low, q_high = norm.cdf(2 * z0 - z), norm.cdf(2 * z0 + z)
    low, high = np.percentile(replicates, [100 * q_low, 100 * q_high])
    return float(low), float(high)


def paired_vs_full(
    final: Mapping[str, Mapping[str, Any]],
    features: Mapping[tuple[int, ...], np.ndarray],
    ref: FeatureStats,
    *,
    seed: int = 0,
    tolerance: float | None = None,
) -> dict[str, Any]:
    """Each finalist of a search vs full width on the same seeds (results.json's ``paired``).

    :param final: finalist name -> record with ``genome`` and ``fid`` (results.json's ``final``).
    :param features: genome -> its finalist evaluation's [N x D] per-image features; a finalist
        without features (failed, or not kept) is left out.
    :param tolerance: "equal quality" when the interval's upper end is within it (FID); default
        :data:`DEFAULT_REL_TOLERANCE` x the full width's FID.
    :return: {} when full width has no FID or no features. Used by ``ddsm search`` and the service's
        controller alike, so both give the same numbers for the same seeds.
    """
    full = final.get("full", {})
    base = features.get(tuple(full.get("genome") or ()))
    if base is None or full.get("fid") is None:
        return {}
    tol = tolerance if tolerance is not None else DEFAULT_REL_TOLERANCE * float(full["fid"])
    out: dict[str, Any] = {}
    for name, rec in final.items():
        other = features.get(tuple(rec.get("genome") or ()))
        if name == "full" or other is None or rec.get("fid") is None:
            continue
        d = paired_fid_diff(base, other, ref, seed=seed)
        out[name] = {**d.to_dict(), "tolerance": tol, "equal_quality": d.equal_quality(tol)}
    return out
