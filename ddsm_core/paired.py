"""Paired comparisons of two strategies sampled from the SAME seeds: a bootstrap interval of the FID
difference (and ratio), and "equal quality" as a stated tolerance on that interval.

Image ``i`` of both strategies starts from the same noise (common random numbers), so resampling the
image indices *jointly* keeps the pairing: each bootstrap replicate draws one index set and computes
both FIDs on it, and the spread of ``FID_b - FID_a`` over replicates measures how much the difference
could move with another draw of seeds. That is much narrower than the two FIDs' own spreads, which
mostly measure how easy a seed set is (bench/digits_search.md).

With fewer images than feature dimensions (N < D) resampling WITH replacement breaks: the ~0.63 N
distinct images of a draw give a covariance of lower rank than the full set's, and FID there is mostly
that rank's bias, unequal for the two strategies, so the replicates sit far from the estimate and the
bias-corrected interval collapses (``+101.62 [+116.32, +116.32]``, bench/paired_bootstrap.md). There
each replicate instead draws half the images WITHOUT replacement (:func:`interval_method`,
:func:`_subsample_interval`); ``PairedDiff.method`` records which interval a result holds.

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
from typing import Any, Literal

import numpy as np
from scipy import linalg

from ddsm_core.errors import StatsError
from ddsm_core.fid import FeatureStats, frechet_distance

DEFAULT_BOOTSTRAP = 1000
DEFAULT_LEVEL = 0.95
# "Equal quality" unless stated otherwise: the interval's upper end within 5% of the full width's FID.
DEFAULT_REL_TOLERANCE = 0.05

IntervalMethod = Literal["bootstrap", "subsample"]
METHODS: tuple[str, ...] = ("auto", "bootstrap", "subsample")


@dataclass(frozen=True)
class PairedDiff:
    """FID of ``b`` minus FID of ``a`` on the same seeds, with an interval from joint index draws.

    :param fid_a, fid_b: the FIDs of all ``n_images`` (the point estimates).
    :param diff: ``fid_b - fid_a``; ``low``, ``high``: its ``level`` interval.
    :param ratio: ``fid_b / fid_a``; ``ratio_low``, ``ratio_high``: its interval (same replicates).
    :param n_boot: replicates; ``seed``: the seed of their index draws.
    :param method: how the interval was made (:func:`interval_method`): ``"bootstrap"`` (N of N
        drawn with replacement, bias-corrected percentiles) or ``"subsample"`` (N // 2 of N without
        replacement, scaled deviations; see :func:`_subsample_interval`). Records written before this
        field existed are bootstrap intervals.
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
    method: IntervalMethod = "bootstrap"

    @property
    def replicate_images(self) -> int:
        """Images each replicate computes both FIDs on."""
        return subsample_size(self.n_images) if self.method == "subsample" else self.n_images

    def equal_quality(self, tolerance: float) -> bool:
        """``b`` is as good as ``a`` within ``tolerance`` FID: the interval's upper end is <= it."""
        return self.high <= tolerance

    def excludes(self, value: float) -> bool:
        """The difference interval does not contain ``value`` (e.g. 0: a real difference)."""
        return not self.low <= value <= self.high

    def describe(self, tolerance: float | None = None) -> str:
        """``+1.70 [+0.80, +2.60] (95% bootstrap, 1000 x 500 images)`` or ``... (95% subsample,
        1000 x 250 of 500 images)``, plus the verdict for a tolerance."""
        drawn = f"{self.replicate_images} of " if self.method == "subsample" else ""
        text = (
            f"{self.diff:+.2f} [{self.low:+.2f}, {self.high:+.2f}] ({100 * self.level:.0f}% "
            f"{self.method}, {self.n_boot} x {drawn}{self.n_images} images)"
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


# A half-sample needs two images for a covariance and leaves one out at least.
_MIN_SUBSAMPLE_IMAGES = 4


def interval_method(n: int, dim: int) -> IntervalMethod:
    """The interval ``paired_fid_diff`` makes by default for ``n`` paired images of ``dim``-d features.

    ``"subsample"`` when ``n < dim`` (the ``cpu`` profile's 500 images of 2048-d Inception features),
    ``"bootstrap"`` otherwise (the digits' thousands of 64-d features, unchanged bit for bit). The
    bootstrap's trouble is the covariance: a draw with replacement holds ~0.63 n distinct images, so
    its covariance has rank ~0.63 n instead of n - 1, and with n < dim that rank, not the data,
    sets most of each FID (Tr sqrt(S_ref S) sums fewer, larger eigenvalues): every replicate's FID sits
    far from the full set's, by amounts that differ between the two strategies, and no percentile
    correction undoes a shift that large (the collapsed ``+101.62 [+116.32, +116.32]`` of
    bench/paired_bootstrap.md). n < dim is where the full set's own covariance is singular, the
    plainest line to draw; between dim and a few times dim the bootstrap is still distorted, less so
    (bench/paired_bootstrap.md measures both methods there), and keeps its old numbers by design.
    Fewer than 4 images cannot be split in halves of 2 or more: the bootstrap, as before.
    """
    return "subsample" if _MIN_SUBSAMPLE_IMAGES <= n < dim else "bootstrap"


def subsample_size(n: int) -> int:
    """Images per replicate of the subsampling interval: half of ``n`` (rounded down)."""
    return n // 2


def paired_fid_diff(
    features_a: np.ndarray,
    features_b: np.ndarray,
    ref: FeatureStats,
    *,
    n_boot: int = DEFAULT_BOOTSTRAP,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
    method: Literal["auto", "bootstrap", "subsample"] = "auto",
) -> PairedDiff:
    """Interval of ``FID(b) - FID(a)`` against ``ref`` from joint draws of image indices.

    :param features_a, features_b: [N x D] per-image features; row ``i`` of both comes from seed ``i``.
    :param ref: the reference statistics both FIDs are measured against (same extractor, same D).
    :param n_boot: replicates; each costs two eigenproblems (one per strategy), of size D on the D
        path (~2 ms per replicate at D = 64, 4-5 s at D = 2048, one core) or of the replicate's
        distinct images on the Gram path (N < D, D >= 256; see :func:`_use_gram`): ~0.63 N for a
        bootstrap draw, N / 2 for a subsample; ~8 ms at N = 300, ~0.6 s at N = 2000
        (bench/paired_bootstrap.md). On the Gram path the point estimates ``fid_a``, ``fid_b`` come
        from it too, instead of :func:`~ddsm_core.fid.frechet_distance`'s ``sqrtm`` (~25 s per
        strategy at D = 2048): they differ by ~3e-8 relative, the rounding noise that ``sqrtm`` and
        the D path add for a singular S (N < D) and the Gram path does not.
    :param level: two-sided coverage of the interval.
    :param seed: seed of the index draws; the same inputs and seed give the same interval.
    :param method: ``"auto"`` (default): :func:`interval_method` (subsampling when N < D, the
        bootstrap otherwise); ``"bootstrap"`` or ``"subsample"`` force one (benchmarks, tests).
    :raises StatsError: the arrays are not paired [N x D] features of ``ref``'s dimension, or a
        subsample was asked of fewer than 4 images.
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
    if method not in METHODS:
        raise StatsError(f"unknown interval method {method!r}; use one of {', '.join(METHODS)}")
    how: IntervalMethod = interval_method(n, dim) if method == "auto" else method
    if how == "subsample" and n < _MIN_SUBSAMPLE_IMAGES:
        raise StatsError(f"a subsampling interval needs at least {_MIN_SUBSAMPLE_IMAGES} images, got {n}")
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
    m = subsample_size(n)
    fids = np.empty((n_boot, 2))  # per replicate: FID of a, FID of b
    for k in range(n_boot):
        # a subsample is a sorted index set without repeats: on the Gram path every count is 1
        draw = np.sort(rng.permutation(n)[:m]) if how == "subsample" else rng.integers(0, n, size=n)
        fids[k] = replicate(draw)
    diff = fid_b - fid_a
    ratio = fid_b / fid_a if fid_a > 0 else float("inf")
    diffs = fids[:, 1] - fids[:, 0]
    if how == "subsample":
        scale = float(np.sqrt(m / (n - m)))
        low, high = _subsample_interval(diffs, diff, level, scale)
        r_low, r_high = _subsample_interval(_ratio_replicates(fids, fid_a, fid_b), ratio, level, scale)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(fids[:, 0] > 0, fids[:, 1] / fids[:, 0], np.inf)
        low, high = _bias_corrected(diffs, diff, level)
        r_low, r_high = _bias_corrected(ratios, ratio, level)
    return PairedDiff(
        fid_a=fid_a, fid_b=fid_b, diff=diff, low=low, high=high, ratio=ratio, ratio_low=r_low,
        ratio_high=r_high, n_images=n, n_boot=n_boot, level=level, seed=seed, method=how,
    )  # fmt: skip


def _bias_corrected(replicates: np.ndarray, estimate: float, level: float) -> tuple[float, float]:
    """Efron's bias-corrected (BC) percentile interval.

    A resample repeats images, which raises every FID by more finite-sample bias than the full set
    has, and not by the same amount for both strategies: the replicates of a ratio sit mostly below
    the estimate (measured: 2/8 vs full width on digits, ratio 1.61, plain percentiles [1.12, 1.65]).
    BC shifts the percentiles by z0 = Phi^-1(share of replicates below the estimate), which removes
    such a median bias; with none (z0 = 0) it is the plain percentile interval. When the shift is
    larger than the replicates' spread (N < D) z0 is clipped and the interval collapses onto the
    extreme replicates: :func:`interval_method` uses :func:`_subsample_interval` there.
    """
    from scipy.stats import norm

    b = len(replicates)
    below = (np.sum(replicates < estimate) + 0.5 * np.sum(replicates == estimate)) / b
    z0 = norm.ppf(np.clip(below, 0.5 / b, 1 - 0.5 / b))
    z = norm.ppf(1 - (1 - level) / 2)
    q_low, q_high = norm.cdf(2 * z0 - z), norm.cdf(2 * z0 + z)
    low, high = np.percentile(replicates, [100 * q_low, 100 * q_high])
    return float(low), float(high)


def _ratio_replicates(fids: np.ndarray, fid_a: float, fid_b: float) -> np.ndarray:
    """Subsample replicates of the ratio, linearised around the full set's FIDs (the delta method).

    The plain ratio of two m-image FIDs has m-image levels in its denominator: at N < D each FID is
    mostly small-sample bias, larger at m than at N, which shrinks the ratio's spread towards
    bias_b / bias_a (measured: 74% coverage at 95%, D = 256, N = 150). So a replicate's ratio is
    the full set's plus its FIDs' deviations from their replicate means carried through
    d(b/a) = (a db - b da) / a^2 at the full set's FIDs, which has the difference's coverage.
    """
    if not fid_a > 0:
        return np.full(len(fids), np.inf)
    dev = fids - fids.mean(axis=0)
    return fid_b / fid_a + (dev[:, 1] * fid_a - fid_b * dev[:, 0]) / fid_a**2


def _subsample_interval(
    replicates: np.ndarray, estimate: float, level: float, scale: float
) -> tuple[float, float]:
    """The half-sampling (delete-N/2 jackknife histogram) interval from m-of-N subsample replicates.

    Each replicate computes both FIDs on m = N // 2 images drawn WITHOUT replacement, so its
    covariance has the rank and conditioning of a genuine m-image set, and the replicates spread like
    m-image estimates around the m-image mean. Without replacement a statistic that is a mean of N
    terms varies over m-subsets by (1/m - 1/N) = (N - m) / (m N) times the per-image variance, against
    1/N for the full set; so sqrt(m / (N - m)) (1 here at even N) turns a replicate's deviation into
    one of the full-set estimate (Wu 1990, Ann. Statist. 18: the delete-d jackknife histogram;
    Politis & Romano 1994's subsampling with this finite-population correction). The deviations are
    taken from the replicates' OWN mean, not from the estimate: FID's small-sample bias at m differs
    from that at N, and by different amounts for the two strategies, which is exactly what ruins the
    bootstrap at N < D. The interval is [estimate - q_hi, estimate - q_lo] for q the (1 -/+ level) / 2
    quantiles of the scaled deviations (the basic interval, which mirrors the replicates' skew), widened
    if need be to contain the estimate (quantiles of mean-zero deviations straddle 0 unless they are
    very skewed).

    What it covers: the difference this many images would show on average over seed sets, i.e. the
    same target the bootstrap had (both are centred on the N-image estimate). FID's bias at N (large
    at N < D) is part of both FIDs and of their difference and is not removed; the tolerance rule
    compares FIDs at the same N, so that is the quantity it needs (at N < D it can differ from the
    infinite-N difference even in sign: bench/paired_bootstrap.md). Terms of FID that are not linear
    in the images (the trace term at N < D) vary over half-samples more than the 1/m - 1/N above, so
    the interval errs wide, if at all (half-sample sd 4-18% above the true sd at D / N = 1.7-4).
    Measured coverage at 95%: 0.90-0.98 for the difference, 0.89-1.00 for the ratio, over nine
    simulated settings from D / N = 4 to D / N = 1/31 (bench/paired_bootstrap.md); the bootstrap's
    0.00 at every N < D.
    """
    if not np.all(np.isfinite(replicates)):  # a ratio over a zero FID: no interval to give
        return -float("inf"), float("inf")
    deviations = scale * (replicates - replicates.mean())
    tail = 100 * (1 - level) / 2
    q_low, q_high = np.percentile(deviations, [tail, 100 - tail])
    low, high = estimate - q_high, estimate - q_low
    return float(min(low, estimate)), float(max(high, estimate))


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
