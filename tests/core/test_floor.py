"""The real-data floor recorded with reference statistics (ddsm_core.floor)."""

from __future__ import annotations

import numpy as np
import pytest

from ddsm_core.fid import FeatureStats, frechet_distance
from ddsm_core.floor import (
    RealDataFloor,
    compute_floors,
    floor_counts,
    floor_of,
    floors_of,
    vs_floor,
    with_floors,
)


def _stats() -> FeatureStats:
    return FeatureStats.from_features(np.random.default_rng(0).normal(size=(3000, 6)), "test-ext")


def test_counts_go_up_to_the_whole_split():
    assert floor_counts(297) == [200, 297]
    assert floor_counts(10000) == [200, 500, 1000, 2000, 5000, 10000]
    assert floor_counts(150) == [150]


def test_floors_grow_as_the_count_falls_and_the_whole_split_is_exact():
    ref = _stats()
    held = np.random.default_rng(1).normal(size=(1200, 6))
    floors = compute_floors(held, ref, "test", seed=3)
    assert [f.n_images for f in floors] == [200, 500, 1000, 1200]
    assert [f.subsets for f in floors] == [5, 5, 5, 1]
    whole = frechet_distance(held.mean(0), np.cov(held, rowvar=False), ref.mu, ref.sigma)
    assert floors[-1].fid == pytest.approx(whole)
    assert floors[0].fid > floors[1].fid > floors[-1].fid  # finite-sample bias
    assert compute_floors(held, ref, "test", seed=3) == floors  # seeded subsets
    assert compute_floors(held, ref, "test", seed=4)[0] != floors[0]


def test_floors_survive_save_and_load_and_old_files_have_none(tmp_path):
    ref = _stats()
    floors = compute_floors(np.random.default_rng(1).normal(size=(297, 6)), ref, "test")
    path = with_floors(ref, floors).save(tmp_path / "s.npz")
    back = FeatureStats.load(path)
    assert floors_of(back) == floors
    assert floor_of(back, 500).n_images == 297 and floor_of(back, 200).n_images == 200
    assert floor_of(back, 250).n_images == 297  # the nearer count, ties to the larger
    assert floor_of(back).n_images == 297
    old = tmp_path / "old.npz"  # a pytorch-fid style file written before floors existed
    np.savez(old, mu=ref.mu, sigma=ref.sigma, extractor=np.array("test-ext"))
    assert floor_of(FeatureStats.load(old), 297) is None and floors_of(None) == []


def test_vs_floor_text():
    f = RealDataFloor(15.8, "test", 297)
    assert vs_floor(31.6, f) == "31.60 (2.00x floor)"
    assert vs_floor(31.6, None) == "31.60" and vs_floor(None, f) == "failed"
    assert f.describe() == "15.80 (297 test images)"
    assert RealDataFloor.from_dict(f.to_dict()) == f
