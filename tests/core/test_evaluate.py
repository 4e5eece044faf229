"""evaluate(): common random numbers, batch-size independence, failures as records, early stats check."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ddsm_core.evaluate as ev
from ddsm_core.config import UNetConfig
from ddsm_core.errors import StatsError, StrategyError
from ddsm_core.evaluate import EvalResult, evaluate
from ddsm_core.fid import FeatureStats
from ddsm_core.flops import cost_table
from ddsm_core.schedules import NoiseSchedule
from ddsm_core.strategy import SAMPLERS, Strategy
from ddsm_core.unet import SlimmableUNet

CFG = UNetConfig.digits(model_channels=32, num_res_blocks=1)


class PoolExtractor:
    """A deterministic stand-in extractor: 4x4 average pooling -> 16 features."""

    name = "test:pool4"
    dim = 16

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(images.float(), 4).flatten(1)


@pytest.fixture(scope="module")
def setup():
    model = SlimmableUNet(CFG).eval()
    g = torch.Generator().manual_seed(0)
    real = torch.rand(200, 1, 8, 8, generator=g) * 2 - 1
    ext = PoolExtractor()
    ref = FeatureStats.from_features(ext(real).double().numpy(), ext.name)
    return model, NoiseSchedule.linear(), ref, ext, cost_table(CFG)


def run(setup, strategy: Strategy, **kw) -> EvalResult:
    model, schedule, ref, ext, costs = setup
    args = {"n_images": 24, "seeds": 1000, "batch_size": 24, "costs": costs} | kw
    return evaluate(model, schedule, strategy, ref, ext, **args)


def test_result_does_not_depend_on_batch_size_and_is_repeatable(setup) -> None:
    s = Strategy.uniform("ddim", 4, 6, CFG.widths)
    a, b, c = run(setup, s), run(setup, s, batch_size=5), run(setup, s)
    assert a.ok and a.fid == pytest.approx(b.fid, rel=1e-5) and a.fid == c.fid
    assert a.extractor == "test:pool4" and a.label == "FID (test:pool4)"
    assert a.n_images == 24 and a.network_calls == 4


def test_seeds_are_common_random_numbers(setup) -> None:
    s = Strategy.uniform("ddpm", 3, 6, CFG.widths)
    assert run(setup, s).fid == run(setup, s, seeds=list(range(1000, 1024))).fid
    assert run(setup, s).fid != run(setup, s, seeds=2000).fid


def test_gflops_come_from_the_cost_table(setup) -> None:
    costs = setup[4]
    r = run(setup, Strategy("ddim", 4, CFG.widths, (0, 0, 6, 6)))
    assert r.gflops == pytest.approx(2 * costs.gflops[0] + 2 * costs.gflops[6])
    assert r.gflops_per_call == pytest.approx(r.gflops / 4)
    assert r.latency_s > 0


def test_mismatched_reference_stats_fail_before_sampling(setup, monkeypatch) -> None:
    model, schedule, _, ext, costs = setup
    other = FeatureStats(np.zeros(2048), np.eye(2048), "inception-v3-pool3")

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before checking the stats")

    monkeypatch.setattr(ev, "sample_images", no_sampling)
    with pytest.raises(StatsError, match="inception-v3-pool3"):
        evaluate(model, schedule, Strategy.uniform("ddim", 2, 0, CFG.widths), other, ext, 4, 0, costs=costs)


def test_width_outside_the_model_is_a_strategy_error(setup) -> None:
    with pytest.raises(StrategyError, match="not in the model"):
        run(setup, Strategy.uniform("ddim", 2, 0, (0.3, 1.0)))


class NaNModel(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, x, t, width=1.0, y=None):
        out = self.inner(x, t, width=width, y=y)
        return out if width > 0.5 else out * float("nan")


def test_diverged_samples_are_a_failed_record_with_a_reason(setup) -> None:
    model, schedule, ref, ext, costs = setup
    s = Strategy("ddim", 3, CFG.widths, (0, 6, 6))
    r = evaluate(NaNModel(model).eval(), schedule, s, ref, ext, 8, 0, costs=costs)
    assert not r.ok and r.fid is None and "not finite" in r.reason and r.objectives() is None
    assert r.gflops > 0  # cost is still known


def test_eval_result_json_round_trip(setup) -> None:
    r = run(setup, Strategy.uniform("ddim", 2, 3, CFG.widths))
    back = EvalResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back == r and back.objectives() == (r.fid, r.gflops)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_prefix_cache_gives_bit_identical_images(setup, sampler: str) -> None:
    from ddsm_core.evaluate import PrefixCache, sample_images

    model, schedule = setup[0], setup[1]
    cache = PrefixCache()
    seeds = list(range(10))
    a = Strategy(sampler, 4, CFG.widths, (0, 3, 6, 6))
    b = Strategy(sampler, 4, CFG.widths, (0, 3, 2, 1))  # shares the first two steps with a
    sample_images(model, schedule, a, seeds, 4, prefix_cache=cache)
    cached, _, reused = sample_images(model, schedule, b, seeds, 4, prefix_cache=cache)
    plain, _, none = sample_images(model, schedule, b, seeds, 4)
    assert reused == pytest.approx(0.5) and none == 0.0
    assert torch.equal(cached, plain)


class LabelRecorder(torch.nn.Module):
    """Wraps a model; records the labels of every call and checks they sit on the input's device."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.config, self.labels = model, model.config, []

    def forward(self, x, t, width, y=None):
        assert y is not None and y.device == x.device, (y, x.device)
        self.labels.append(y.tolist())
        return self.model(x, t, width=width, y=y)


def _conditional_cache_run(device: str) -> None:
    from ddsm_core.evaluate import PrefixCache, sample_images

    cfg = UNetConfig.digits(model_channels=16, num_res_blocks=1, num_classes=10)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LabelRecorder(SlimmableUNet(cfg)).to(device).eval()
    schedule, seeds, cache = NoiseSchedule.linear(), list(range(3, 9)), PrefixCache()
    a = Strategy("ddpm", 4, cfg.widths, (6, 2, 6, 6))
    b = Strategy("ddpm", 4, cfg.widths, (6, 2, 0, 1))  # shares the first two steps with a
    sample_images(model, schedule, a, seeds, 4, device=device, prefix_cache=cache)
    model.labels.clear()
    cached, _, reused = sample_images(model, schedule, b, seeds, 4, device=device, prefix_cache=cache)
    # steps 2 and 3 only, in batches of 4 and 2: the labels are seed % 10, on the model's device
    assert reused == pytest.approx(0.5)
    assert model.labels == [[3, 4, 5, 6], [3, 4, 5, 6], [7, 8], [7, 8]]
    plain, _, _ = sample_images(model, schedule, b, seeds, 4, device=device)
    assert torch.equal(cached, plain)


def test_class_conditional_model_through_the_prefix_cache_equals_sampling_without_it() -> None:
    _conditional_cache_run("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_class_conditional_model_through_the_prefix_cache_on_cuda() -> None:
    _conditional_cache_run("cuda")


def test_kept_features_give_the_fid_and_pair_strategies_on_seeds(setup) -> None:
    from ddsm_core.paired import paired_fid_diff

    ref = setup[2]
    full, small = Strategy.uniform("ddpm", 3, 6, CFG.widths), Strategy.uniform("ddpm", 3, 0, CFG.widths)
    a, a2, b = run(setup, full, keep_features=True), run(setup, full, keep_features=True), run(setup, small)
    assert run(setup, full).features is None
    assert a.features.shape == (24, 16) and b.features is None
    assert a.fid == pytest.approx(ref.fid(FeatureStats.from_features(a.features, "test:pool4")))
    assert "features" not in a.to_dict() and EvalResult.from_dict(a.to_dict()).features is None
    same = paired_fid_diff(a.features, a2.features, ref, n_boot=50)
    assert (same.low, same.high) == (0.0, 0.0)
    b = run(setup, small, keep_features=True)
    d = paired_fid_diff(a.features, b.features, ref, n_boot=50)
    assert d.fid_a == pytest.approx(a.fid) and d.fid_b == pytest.approx(b.fid)


def test_paired_rungs_get_the_distance_to_full_width_on_the_same_seeds(setup) -> None:
    """A low rung of a search ranked by ``paired``: mean squared feature distance to the full width's
    image of the same seed, 0 for full width, the same in a second evaluator (the reference is sampled
    from the spec's seeds, not from what ran before); none at the top rung or when ranked by FID."""
    from ddsm_core.evaluate import GenomeEvaluator, paired_distance
    from ddsm_core.spec import SearchSpec

    model, schedule, ref, ext, costs = setup
    spec = SearchSpec(sampler="ddim", steps=3, n_images=12, rungs=(6,), batch_size=6, eval_seed=50,
                      rung_metric="paired").bind(CFG.widths)  # fmt: skip
    full, half = spec.full_width_genome(), (0, 0, len(CFG.widths) - 1)
    one = GenomeEvaluator(model, schedule, ref, ext, spec, costs=costs, cache_images=spec.ladder)
    a = {g: one(g, 6).record for g in (half, full, (0, 0, 0))}
    two = GenomeEvaluator(model, schedule, ref, ext, spec, costs=costs, cache_images=spec.ladder)
    b = {g: two(g, 6).record for g in ((0, 0, 0), half)}  # another order, no full-width candidate first
    assert a[full]["paired_distance"] == 0.0
    assert a[half]["paired_distance"] > 0 and a[(0, 0, 0)]["paired_distance"] > 0
    assert all(b[g]["paired_distance"] == a[g]["paired_distance"] for g in b)
    # the definition, from features sampled here on seeds 50..55
    seeds = list(range(50, 56))
    kw = {"n_images": 6, "seeds": seeds, "batch_size": 6, "keep_features": True}
    feats = {g: run(setup, spec.strategy(g), **kw).features for g in (half, full)}
    assert a[half]["paired_distance"] == pytest.approx(paired_distance(feats[half], feats[full]), rel=1e-9)
    assert one(half, 12).record["paired_distance"] is None  # the top rung is ranked by FID
    fid_ranked = GenomeEvaluator(model, schedule, ref, ext, spec.replace(rung_metric="fid"), costs=costs)
    assert fid_ranked(half, 6).record["paired_distance"] is None


def test_paired_distance_is_the_mean_squared_row_distance() -> None:
    from ddsm_core.evaluate import paired_distance

    a, b = np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([[3.0, 4.0], [1.0, 1.0]])
    assert paired_distance(a, b) == 12.5 and paired_distance(a, a) == 0.0
    with pytest.raises(ValueError, match="one shape"):
        paired_distance(a, b[:1])
