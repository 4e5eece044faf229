"""The real-data floor: the FID of held-out real images against the reference statistics.

A generator cannot be expected to beat real images of the same count: FID's finite-sample bias alone
puts 297 real test digits at ~15.8 against the training statistics. Reference statistics therefore
record this floor at the image counts an evaluation uses (:data:`FLOOR_COUNTS` up to the held-out
split's size, plus the whole split), and every FID can be shown next to the floor of its count.

The floors live in ``FeatureStats.meta["floors"]`` (a list of :class:`RealDataFloor` dicts), so a
stats file written before floors existed loads unchanged and simply has none. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ddsm_core.fid import FeatureStats, frechet_distance

FLOOR_COUNTS: tuple[int, ...] = (200, 500, 1000, 2000, 5000, 10000)
FLOOR_SUBSETS = 5  # a floor below the split's size is the mean over this many seeded subsets


@dataclass(frozen=True)
class RealDataFloor:
    """FID of ``n_images`` real images of ``split`` against the reference statistics.

    :param subsets: below the split's size, the mean FID over this many random subsets (drawn with
        ``seed``); 1 when the whole split is used.
    """

    fid: float
    split: str
    n_images: int
    subsets: int = 1
    seed: int = 0

    def describe(self) -> str:
        """``15.80 (297 test images)``."""
        mean = f", mean of {self.subsets} subsets" if self.subsets > 1 else ""
        return f"{self.fid:.2f} ({self.n_images} {self.split} images{mean})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RealDataFloor:
        return cls(
            fid=float(data["fid"]), split=str(data["split"]), n_images=int(data["n_images"]),
            subsets=int(data.get("subsets", 1)), seed=int(data.get("seed", 0)),
        )  # fmt: skip


def floor_counts(n_heldout: int, counts: Sequence[int] = FLOOR_COUNTS) -> list[int]:
    """The counts a floor is recorded at: ``counts`` below the split's size, plus the whole split."""
    return sorted({c for c in counts if 2 <= c < n_heldout} | {n_heldout})


def compute_floors(
    features: np.ndarray,
    ref: FeatureStats,
    split: str,
    *,
    counts: Sequence[int] = FLOOR_COUNTS,
    subsets: int = FLOOR_SUBSETS,
    seed: int = 0,
) -> list[RealDataFloor]:
    """Floors of held-out ``features`` ([N x D], one row per real image) at :func:`floor_counts`."""
    x = np.asarray(features, dtype=np.float64)
    rng = np.random.default_rng(seed)
    out = []
    for count in floor_counts(len(x), counts):
        draws = [np.arange(len(x))] if count == len(x) else [
            rng.choice(len(x), size=count, replace=False) for _ in range(subsets)
        ]  # fmt: skip
        fids = [frechet_distance(x[i].mean(0), np.cov(x[i], rowvar=False), ref.mu, ref.sigma) for i in draws]
        out.append(RealDataFloor(float(np.mean(fids)), split, count, len(draws), seed))
    return out


def floors_of(stats: FeatureStats | Mapping[str, Any] | None) -> list[RealDataFloor]:
    """Every floor recorded with ``stats`` (a FeatureStats or its ``meta``), by image count; [] if none."""
    if stats is None:
        return []
    meta = stats.meta if isinstance(stats, FeatureStats) else stats
    return sorted((RealDataFloor.from_dict(d) for d in meta.get("floors") or ()), key=lambda f: f.n_images)


def floor_of(
    stats: FeatureStats | Mapping[str, Any] | None, n_images: int | None = None
) -> RealDataFloor | None:
    """The floor for an evaluation of ``n_images`` images: the recorded count nearest to it (the
    largest when None); None when the stats record no floor. Check ``.n_images``: with a small
    held-out split (297 digits) a 500-image evaluation is compared with the 297-image floor."""
    floors = floors_of(stats)
    if not floors:
        return None
    if n_images is None:
        return floors[-1]
    return min(floors, key=lambda f: (abs(f.n_images - n_images), -f.n_images))


def with_floors(stats: FeatureStats, floors: Sequence[RealDataFloor]) -> FeatureStats:
    """``stats`` with ``floors`` recorded in its meta (saved in the .npz by ``FeatureStats.save``)."""
    meta = {**stats.meta, "floors": [f.to_dict() for f in floors]}
    return FeatureStats(stats.mu, stats.sigma, stats.extractor, stats.n, meta)


def vs_floor(fid: float | None, floor: RealDataFloor | None) -> str:
    """``58.59 (3.71x floor)``; the bare FID when there is no floor."""
    if fid is None:
        return "failed"
    if floor is None or floor.fid <= 0:
        return f"{fid:.2f}"
    return f"{fid:.2f} ({fid / floor.fid:.2f}x floor)"
