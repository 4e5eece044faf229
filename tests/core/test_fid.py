"""FID: pytorch-fid's Frechet distance, stats files, Inception path against pytorch-fid itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_fid import fid_score

from ddsm_core.errors import StatsError
from ddsm_core.fid import (
    FID_WEIGHTS_FILE,
    INCEPTION_NAME,
    FeatureStats,
    FIDError,
    InceptionExtractor,
    InceptionWeightsMissing,
    extract_features,
    frechet_distance,
    inception_weights_path,
    quantize,
)


def random_stats(rng: np.random.Generator, d: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
    return x.mean(0), np.cov(x, rowvar=False)


@pytest.mark.parametrize("d,n", [(8, 100), (64, 500), (64, 40)])  # the last one is rank-deficient
def test_frechet_distance_equals_pytorch_fid(d: int, n: int) -> None:
    rng = np.random.default_rng(d + n)
    (m1, s1), (m2, s2) = random_stats(rng, d, n), random_stats(rng, d, n)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(
        fid_score.calculate_frechet_distance(m1, s1, m2, s2), rel=1e-12, abs=1e-9
    )
    assert abs(frechet_distance(m1, s1, m1, s1)) < 1e-6 * np.trace(s1)


def test_frechet_distance_shape_mismatch_is_an_error() -> None:
    with pytest.raises(FIDError, match="shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_stats_round_trip_and_pytorch_fid_reads_them(tmp_path) -> None:
    rng = np.random.default_rng(0)
    stats = FeatureStats.from_features(rng.normal(size=(50, 6)), "domain:test", dataset="toy")
    path = stats.save(tmp_path / "ref.npz")
    back = FeatureStats.load(path)
    assert (
        back.extractor == "domain:test" and back.dim == 6 and back.n == 50 and back.meta == {"dataset": "toy"}
    )
    np.testing.assert_array_equal(back.mu, stats.mu)
    with np.load(path) as f:  # what pytorch-fid's compute_statistics_of_path reads
        np.testing.assert_array_equal(f["sigma"], stats.sigma)


def test_plain_pytorch_fid_npz_is_inception_and_unlabelled_others_are_refused(tmp_path) -> None:
    np.savez(tmp_path / "fid.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    assert FeatureStats.load(tmp_path / "fid.npz").extractor == INCEPTION_NAME
    np.savez(tmp_path / "small.npz", mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(StatsError, match="no extractor label"):
        FeatureStats.load(tmp_path / "small.npz")
    with pytest.raises(StatsError, match="not found"):
        FeatureStats.load(tmp_path / "missing.npz")


def test_stats_of_another_extractor_or_dimension_are_refused() -> None:
    stats = FeatureStats(np.zeros(64), np.eye(64), "domain:digits-cnn-v1")
    stats.check_compatible("domain:digits-cnn-v1", 64)
    with pytest.raises(StatsError, match="inception-v3-pool3"):
        stats.check_compatible(INCEPTION_NAME, 2048)
    with pytest.raises(StatsError, match="32-d"):
        stats.check_compatible("domain:digits-cnn-v1", 32)


def test_missing_inception_weights_say_which_file_goes_where(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(InceptionWeightsMissing) as err:
        InceptionExtractor()
    msg = str(err.value)
    assert FID_WEIGHTS_FILE in msg and str(tmp_path / "th" / "hub" / "checkpoints") in msg


def test_quantize_matches_save_image(tmp_path) -> None:
    from PIL import Image
    from torchvision.utils import save_image

    img = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1
    save_image((img + 1) / 2, tmp_path / "x.png")
    png = torch.from_numpy(np.array(Image.open(tmp_path / "x.png").convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(quantize(img[None])[0], png.float() / 255)


def _random_fid_inception_weights(path) -> None:
    """pytorch-fid's FID Inception with random (variance-preserving) weights, saved where hub looks."""
    import torchvision
    from pytorch_fid import inception

    mp = pytest.MonkeyPatch()
    mp.setattr(inception, "load_state_dict_from_url", lambda *a, **k: {})
    mp.setattr(torchvision.models.inception.Inception3, "load_state_dict", lambda self, *a, **k: None)
    try:
        net = inception.fid_inception_v3()
    finally:
        mp.undo()
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)


@pytest.mark.slow
def test_inception_pipeline_equals_pytorch_fid_on_the_same_pngs(tmp_path, monkeypatch) -> None:
    from torchvision.utils import save_image

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    _random_fid_inception_weights(inception_weights_path())
    g = torch.Generator().manual_seed(1)
    real = torch.rand(12, 1, 8, 8, generator=g) * 2 - 1
    fake = (torch.rand(12, 1, 8, 8, generator=g) * 2 - 1).clamp(-0.5, 1)

    ext = InceptionExtractor()
    ref = FeatureStats.from_features(extract_features(ext, real, batch_size=5), ext.name)
    ref_path = ref.save(tmp_path / "ref.npz")
    ours = FeatureStats.from_features(extract_features(ext, fake, batch_size=12), ext.name)
    (tmp_path / "fake").mkdir()
    for i, img in enumerate(fake):
        save_image((img + 1) / 2, tmp_path / "fake" / f"{i:03d}.png")

    m, s = fid_score.compute_statistics_of_path(str(tmp_path / "fake"), ext.model, 4, 2048, "cpu", 0)
    np.testing.assert_allclose(ours.mu, m, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours.sigma, s, rtol=1e-3, atol=1e-6)
    m_ref, s_ref = fid_score.compute_statistics_of_path(str(ref_path), ext.model, 4, 2048, "cpu", 0)
    theirs = fid_score.calculate_frechet_distance(m, s, m_ref, s_ref)
    assert ref.fid(ours) == pytest.approx(theirs, rel=1e-3)
