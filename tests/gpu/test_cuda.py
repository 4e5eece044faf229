"""CUDA paths: samplers match the CPU, a bf16 training step of the cifar10 preset, a class-conditional
model through the prefix cache, and a worker evaluating a candidate (see conftest.py for devices)."""

from __future__ import annotations

import math

import pytest
import torch

from ddsm_core.config import UNetConfig
from ddsm_core.inference import prepare_for_inference
from ddsm_core.sampling import VPDenoiser, sample
from ddsm_core.schedules import NoiseSchedule
from ddsm_core.strategy import SAMPLERS, Strategy
from ddsm_core.unet import SlimmableUNet

pytestmark = pytest.mark.gpu


def _tiny(**overrides) -> UNetConfig:
    return UNetConfig.digits(model_channels=16, num_res_blocks=1, dropout=0.0, **overrides)


def _random_model(cfg: UNetConfig, seed: int = 0) -> SlimmableUNet:
    """Random weights everywhere (the default init zeroes the residual branches' outputs)."""
    model = SlimmableUNet(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 / math.sqrt(max(1, p[0].numel()))))
    return model


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers_on_the_device_match_the_cpu(device, sampler):
    cfg = _tiny()
    schedule = NoiseSchedule.linear()
    cpu_model = _random_model(cfg)
    dev_model = prepare_for_inference(_random_model(cfg).to(device))
    strategy = Strategy.piecewise(sampler, 6, [0, 3, 6], widths=cfg.widths)
    shape, seeds = (cfg.in_channels, cfg.image_size, cfg.image_size), list(range(5))
    with torch.inference_mode():
        expected = sample(VPDenoiser(cpu_model, schedule), strategy, shape, seeds)
        got = sample(VPDenoiser(dev_model, schedule), strategy, shape, seeds, device=device).cpu()
    assert got.shape == expected.shape and torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)


def test_bf16_training_step_of_the_cifar10_preset(device, quick):
    from ddsm_core.train_step import train_step

    cfg = UNetConfig.cifar10(**({"model_channels": 32, "num_res_blocks": 1} if quick else {}))
    model = SlimmableUNet(cfg).to(device).train()
    schedule = NoiseSchedule.linear()
    gen = torch.Generator().manual_seed(0)
    n = 4 if quick else 32
    x0 = (torch.rand(n, 3, 32, 32, generator=gen) * 2 - 1).to(device)
    t = torch.randint(0, schedule.T, (n,), generator=gen).to(device)
    noise = torch.randn(n, 3, 32, 32, generator=gen).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    losses = train_step(model, schedule, x0, None, t, noise, [1.0, 0.25, 0.5], amp=True)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) == len(list(model.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
    opt.step()
    assert all(math.isfinite(float(v)) and float(v) > 0 for v in losses.values())
    changed = sum(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert changed > len(before) // 2


def test_class_conditional_model_through_the_prefix_cache(device):
    from ddsm_core.evaluate import PrefixCache, sample_images

    cfg = _tiny(num_classes=10)
    model = prepare_for_inference(_random_model(cfg).to(device))
    schedule = NoiseSchedule.linear()
    seeds = list(range(12))
    first = Strategy("ddpm", 8, cfg.widths, (0, 0, 0, 0, 6, 6, 6, 6))
    second = Strategy("ddpm", 8, cfg.widths, (0, 0, 0, 0, 3, 3, 6, 6))  # shares 4 steps with first
    cache = PrefixCache()
    sample_images(model, schedule, first, seeds, 6, device=device, prefix_cache=cache)
    cached, _, reused = sample_images(model, schedule, second, seeds, 6, device=device, prefix_cache=cache)
    fresh, _, _ = sample_images(model, schedule, second, seeds, 6, device=device)
    assert reused == pytest.approx(4 / 8)
    assert torch.equal(cached, fresh)  # bit-identical on the same device
    assert torch.isfinite(cached).all()


def test_worker_evaluates_a_candidate_on_the_device(device, tmp_path):
    pytest.importorskip("scipy", reason="FID needs scipy")
    pytest.importorskip("sklearn", reason="the digits dataset needs scikit-learn")
    pytest.importorskip("pymoo", reason="the search spec needs pymoo")
    pytest.importorskip("safetensors", reason="checkpoints need safetensors")
    from ddsm_core import checkpoint as ck
    from ddsm_core.features import get_extractor, reference_stats
    from ddsm_core.flops import cost_table
    from ddsm_core.spec import SearchSpec
    from workers import compute

    # the digits extractor comes from $DDSM_CACHE_DIR (trained there once, ~30 s on a CPU)
    cfg = _tiny()
    model = _random_model(cfg)
    path = tmp_path / "ckpt"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    ck.write_checkpoint(path, step=1, model_config=cfg, schedule=NoiseSchedule.linear().to_dict(),
                        model_state=state, ema_state=state)  # fmt: skip
    ext = get_extractor("domain", dataset="digits", device=str(device))
    stats = reference_stats("digits", ext, device=str(device)).save(tmp_path / "stats.npz")
    spec = SearchSpec(sampler="ddpm", steps=6, widths=cfg.widths, population=8, generations=1,
                      n_images=64, batch_size=32)  # fmt: skip
    metrics = compute.evaluate_genome(
        checkpoint=path, checkpoint_sha="test-" + device.type, stats_path=stats, extractor=ext.name,
        spec=spec, genome=(0, 0, 3, 3, 6, 6), n_images=64, table=cost_table(cfg), device=str(device),
    )  # fmt: skip
    assert metrics["status"] == "ok", metrics
    assert math.isfinite(metrics["fid"]) and metrics["fid"] > 0
    assert metrics["device"].startswith(device.type)
    assert 0 < metrics["gflops"] < 6 * cost_table(cfg).per_call(1.0)


def test_cuda_graphs_match_the_eager_model(device):
    from ddsm_core.inference import GraphedWidths
    from ddsm_core.strategy import parse_strategy_spec

    cfg = _tiny()
    model = prepare_for_inference(_random_model(cfg).to(device))
    graphed = GraphedWidths(model)
    gen = torch.Generator().manual_seed(1)
    for width in (cfg.widths[0], cfg.widths[-1], cfg.widths[0]):  # a replay, not only a capture
        x = torch.randn(4, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen).to(device)
        t = torch.full((4,), 321.0, device=device)
        with torch.inference_mode():
            want = model(x, t, width=width)
        got = graphed(x, t, width=width)
        assert graphed.fallback_reason is None
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
    if device.type == "cuda":
        assert len(graphed._graphs) == 2
    strategy = parse_strategy_spec("piecewise:2/8,8/8", "ddpm", 4, cfg.widths)
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    eager = sample(VPDenoiser(model, NoiseSchedule.linear()), strategy, shape, range(3), device=device)
    replayed = sample(VPDenoiser(graphed, NoiseSchedule.linear()), strategy, shape, range(3), device=device)
    assert torch.allclose(eager, replayed, atol=1e-4, rtol=1e-4)


def test_ddsm_sample_with_and_without_cuda_graphs(device, tmp_path, capsys):
    import numpy as np

    from ddsm_core import checkpoint as ck
    from ddsm_core.cli import app, run_app

    cfg = _tiny()
    state = {k: v.contiguous() for k, v in _random_model(cfg).state_dict().items()}
    path = tmp_path / "ckpt"
    ck.write_checkpoint(path, step=1, model_config=cfg, schedule=NoiseSchedule.linear().to_dict(),
                        model_state=state, ema_state=state)  # fmt: skip
    arrays = []
    for flag in ("--cuda-graphs", "--no-cuda-graphs"):
        npz = tmp_path / f"{flag}.npz"
        argv = ["sample", "--checkpoint", str(path), "--n", "6", "--batch-size", "4", "--steps", "4",
                "--strategy", "piecewise:2/8,8/8", "--device", str(device), "--out", str(tmp_path / "g.png"),
                "--npz", str(npz), "--no-progress", flag]  # fmt: skip
        assert run_app(app, argv) == 0, capsys.readouterr().err
        with np.load(npz) as data:
            arrays.append(next(iter(data.values())).astype(np.int16))
    assert arrays[0].shape[0] == 6
    assert np.abs(arrays[0] - arrays[1]).max() <= 1  # uint8 rounding of float-equal images
