"""Domain feature extractor: deterministic training, cache keyed by config, name on every FID."""

from __future__ import annotations

import pytest
import torch

import ddsm_core.features as features
from ddsm_core.errors import ConfigError
from ddsm_core.features import DomainCNNConfig, DomainExtractor, get_extractor, train_domain_cnn

TINY = DomainCNNConfig(width=8, feature_dim=16, epochs=2, batch_size=32)


def _data(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, torch.randint(0, 10, (n,), generator=g)


def test_training_is_deterministic_for_a_seed_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, _ = train_domain_cnn(TINY, *_data(64))
    b, _ = train_domain_cnn(TINY, *_data(64))
    c, _ = train_domain_cnn(DomainCNNConfig(**{**TINY.__dict__, "seed": 1}), *_data(64))
    assert torch.equal(torch.random.get_rng_state(), state)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.fc.weight, c.fc.weight)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("cache")
    return path, DomainExtractor.load_or_train(TINY, path)


def test_extractor_is_cached_by_config_and_reloaded_without_training(cache, monkeypatch) -> None:
    tmp_path, first = cache
    files = list((tmp_path / "features").glob("*.safetensors"))
    assert len(files) == 1 and TINY.key() in files[0].name
    assert first.metrics["test_accuracy"] > 0.3  # two epochs on the real digits already learns something

    def no_training(*args, **kwargs):
        raise AssertionError("should load from the cache")

    monkeypatch.setattr(features, "train_domain_cnn", no_training)
    again = DomainExtractor.load_or_train(TINY, tmp_path)
    x = _data(8)[0]
    assert torch.equal(first(x), again(x))
    assert again.name == "domain:digits-cnn-v1" and first(x).shape == (8, 16)
    assert again.metrics == first.metrics


def test_features_do_not_depend_on_batch_composition(cache) -> None:
    ext = cache[1]
    x = _data(10)[0]
    torch.testing.assert_close(torch.cat([ext(x[:3]), ext(x[3:])]), ext(x))


def test_wrong_image_shape_and_unknown_extractor_are_clear_errors(cache, tmp_path) -> None:
    ext = cache[1]
    with pytest.raises(ConfigError, match="expects"):
        ext(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ConfigError, match="allowed"):
        get_extractor("vgg", dataset="digits", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="no domain feature extractor"):
        get_extractor("domain", dataset="cifar10", cache_dir=tmp_path)
