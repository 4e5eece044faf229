"""Classifier-free guidance: the null label, label dropout, the guided denoiser, its cost and its CLI."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ddsm_core import checkpoint as ck
from ddsm_core.cli.sample_cmd import to_uint8
from ddsm_core.config import UNetConfig
from ddsm_core.costs import strategy_gflops
from ddsm_core.errors import ConfigError
from ddsm_core.evaluate import GenomeEvaluator
from ddsm_core.fid import FeatureStats
from ddsm_core.flops import cost_table
from ddsm_core.recipes import TrainConfig, resolve_recipe
from ddsm_core.sampling import GuidedDenoiser, VPDenoiser, model_denoiser, sample
from ddsm_core.schedules import NoiseSchedule
from ddsm_core.search import run_search
from ddsm_core.spec import SearchSpec
from ddsm_core.strategy import Strategy
from ddsm_core.train import train
from ddsm_core.train_step import drop_labels, step_draws
from ddsm_core.unet import SlimmableUNet
from tests.support import run_cli

CFG = UNetConfig.digits(model_channels=16, num_res_blocks=1, num_classes=10, null_label=True)
SCHEDULE = NoiseSchedule.linear()


def random_state(config: UNetConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights that make every part of the network (the label embedding too) matter."""
    gen = torch.Generator().manual_seed(seed)
    model = SlimmableUNet(config)
    return {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def model() -> SlimmableUNet:
    m = SlimmableUNet(CFG)
    m.load_state_dict(random_state(CFG))
    return m.eval()


def draw(denoiser, strategy: Strategy, labels: torch.Tensor, seeds=range(6)) -> torch.Tensor:
    return sample(denoiser, strategy, (1, 8, 8), list(seeds), y=labels, schedule=SCHEDULE, clip=False)


# ---------------------------------------------------------------------------- model and config
def test_null_label_adds_one_embedding_row_and_needs_classes():
    assert SlimmableUNet(CFG).label_embed.weight.shape[0] == 11 and CFG.null_class == 10
    plain = UNetConfig.digits(model_channels=16, num_res_blocks=1, num_classes=10)
    assert SlimmableUNet(plain).label_embed.weight.shape[0] == 10 and plain.null_class is None
    with pytest.raises(ConfigError, match="null_label needs a class-conditional model"):
        UNetConfig.digits(null_label=True)
    assert UNetConfig.from_dict(CFG.to_dict()) == CFG


def test_labels_are_range_checked_null_label_included(model):
    x, t = torch.zeros(2, 1, 8, 8), torch.zeros(2)
    with torch.no_grad():
        model(x, t, 1.0, torch.tensor([3, 10]))  # 10 is the null label
        match = r"labels must be in 0\.\.10 \(10 is the null label\), got \[11\]"
        with pytest.raises(ConfigError, match=match):
            model(x, t, 1.0, torch.tensor([3, 11]))
        plain = SlimmableUNet(UNetConfig.digits(model_channels=16, num_res_blocks=1, num_classes=10)).eval()
        with pytest.raises(ConfigError, match=r"labels must be in 0\.\.9, got \[-1, 10\]"):
            plain(x, t, 1.0, torch.tensor([-1, 10]))


def test_a_null_label_checkpoint_round_trips(model, tmp_path):
    state = model.state_dict()
    ck.write_checkpoint(tmp_path / "c", step=3, model_config=CFG, schedule=SCHEDULE.to_dict(),
                        model_state=state, ema_state=state)  # fmt: skip
    loaded, _, manifest = ck.load_checkpoint(tmp_path / "c")
    assert loaded.config == CFG and manifest["model_config"]["null_label"] is True
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


# ---------------------------------------------------------------------------- the guided denoiser
@pytest.mark.parametrize("sampler", ["ddpm", "edm", "dpmpp"])
def test_guidance_one_is_the_conditional_model_bit_for_bit(model, sampler):
    strategy = Strategy.piecewise(sampler, 4, [2, 6])
    y = torch.tensor([0, 3, 3, 9, 5, 1])
    vp = VPDenoiser(model, SCHEDULE)
    assert torch.equal(draw(GuidedDenoiser(vp, 1.0, CFG.null_class), strategy, y), draw(vp, strategy, y))


def test_guidance_zero_is_the_unconditional_model_and_two_extrapolates(model):
    strategy = Strategy.piecewise("ddim", 4, [2, 6])
    y = torch.tensor([0, 3, 3, 9, 5, 1])
    vp = VPDenoiser(model, SCHEDULE)
    null = torch.full_like(y, 10)
    assert torch.equal(draw(GuidedDenoiser(vp, 0.0, 10), strategy, y), draw(vp, strategy, null))
    # one call: d_u + 2 (d_c - d_u) = 2 d_c - d_u, i.e. (1 + w') eps_c - w' eps_u with w' = 1
    x, sigma = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.full((6,), 3.0)
    with torch.no_grad():
        d_c, d_u = vp(x, sigma, 0.5, y), vp(x, sigma, 0.5, null)
        guided = GuidedDenoiser(vp, 2.0, 10)(x, sigma, 0.5, y)
    torch.testing.assert_close(guided, 2 * d_c - d_u, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(guided, d_c)  # the labels matter: guidance changes the prediction


def test_guidance_needs_labels_a_null_label_and_a_sane_weight(model):
    plain = SlimmableUNet(UNetConfig.digits(model_channels=16, num_res_blocks=1, num_classes=10)).eval()
    with pytest.raises(ConfigError, match="--label-dropout"):
        model_denoiser(plain, SCHEDULE, guidance=2.0)
    assert isinstance(model_denoiser(plain, SCHEDULE), VPDenoiser)
    with pytest.raises(ConfigError, match="guidance must be a finite number >= 0"):
        GuidedDenoiser(VPDenoiser(model, SCHEDULE), math.nan, 10)
    with pytest.raises(ConfigError, match="needs class labels"):
        GuidedDenoiser(VPDenoiser(model, SCHEDULE), 2.0, 10)(torch.zeros(1, 1, 8, 8), torch.ones(1), 1.0)


def test_one_guided_call_costs_twice_the_table(model):
    table = cost_table(CFG)
    guided = model_denoiser(model, SCHEDULE, guidance=2.0)
    for width, per_call in zip(table.widths, table.gflops, strict=True):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            guided(torch.zeros(1, 1, 8, 8), torch.ones(1), width, torch.tensor([4]))
        assert counter.get_total_flops() / 1e9 == pytest.approx(2 * per_call, rel=1e-12), width
    strategy = Strategy.piecewise("edm", 5, [1, 6])
    assert strategy_gflops(strategy, table, passes=2) == pytest.approx(2 * strategy_gflops(strategy, table))
    spec = SearchSpec(sampler="edm", steps=5, widths=CFG.widths, guidance=1.0)  # W = 1 still runs both
    assert spec.passes == 2
    assert spec.gflops(strategy.genes, table) == strategy_gflops(strategy, table, passes=2)


# ---------------------------------------------------------------------------- label dropout
def test_label_dropout_is_seeded_per_step_and_hits_its_fraction():
    cfg = TrainConfig(batch_size=4096, label_dropout=0.1, seed=5)
    a, b = step_draws(cfg, 7, (1, 8, 8), CFG.widths), step_draws(cfg, 7, (1, 8, 8), CFG.widths)
    assert torch.equal(a["label_drop"], b["label_drop"])
    assert not torch.equal(a["label_drop"], step_draws(cfg, 8, (1, 8, 8), CFG.widths)["label_drop"])
    assert abs(a["label_drop"].float().mean().item() - 0.1) < 0.015  # 4096 draws: sd 0.0047
    # the other draws are those of a run without label dropout (it is drawn last)
    off = step_draws(cfg.replace(label_dropout=0.0), 7, (1, 8, 8), CFG.widths)
    assert "label_drop" not in off and off["widths"] == a["widths"]
    assert all(torch.equal(off[k], a[k]) for k in ("t", "noise", "flip"))
    y = torch.arange(4096) % 10
    dropped = drop_labels(y, a["label_drop"], 10)
    kept = ~a["label_drop"]
    assert torch.equal(dropped == 10, a["label_drop"]) and torch.equal(dropped[kept], y[kept])


def test_label_dropout_needs_a_class_conditional_model():
    with pytest.raises(ConfigError, match="add --class-cond"):
        resolve_recipe("digits", {"label_dropout": 0.1})
    model_config, config = resolve_recipe("digits", {"label_dropout": 0.1}, class_cond=True)
    assert model_config.num_classes == 10 and model_config.null_label and config.label_dropout == 0.1
    assert not resolve_recipe("digits", class_cond=True)[0].null_label
    with pytest.raises(ConfigError, match=r"label_dropout must be in \[0, 1\)"):
        TrainConfig(label_dropout=1.0)
    with pytest.raises(ConfigError, match="null label"):
        train(UNetConfig.digits(num_classes=10), TrainConfig(label_dropout=0.1), "unused", progress=False)


def test_training_with_label_dropout_trains_the_null_row_and_resumes_exactly(tmp_path):
    from ddsm_core.data import ImageDataset, load_dataset

    ds = load_dataset("digits")
    data = ImageDataset("digits-small", ds.images[:32], ds.labels[:32], ds.classes)
    fast = dict(batch_size=8, lr=1e-3, warmup_steps=1, log_every=1, eval_images=0, sample_n=0,
                checkpoint_every=0, steps=4)  # fmt: skip
    opts = {"dataset": data, "eval_dataset": data, "progress": False}
    cfg = TrainConfig(label_dropout=0.5, **fast)
    full = train(CFG, cfg, tmp_path / "a", **opts)
    off = train(CFG, cfg.replace(label_dropout=0.0), tmp_path / "b", **opts)
    part = train(CFG, cfg, tmp_path / "c", stop_at=2, **opts)
    assert part.interrupted and part.step == 2
    rest = train(CFG, cfg, tmp_path / "c", resume=True, **opts)

    def weights(result):
        return ck.load_checkpoint(result.checkpoint, use_ema=False)[0].state_dict()

    a, b, c = weights(full), weights(off), weights(rest)
    null_a, null_b = a["label_embed.weight"][10], b["label_embed.weight"][10]
    assert not torch.equal(null_a, null_b)  # only dropped labels reach the null row (same init)
    assert all(torch.equal(a[k], c[k]) for k in a)  # the drops are a function of (seed, step)


# ---------------------------------------------------------------------------- CLI and search
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> object:
    state = random_state(CFG)
    path = tmp_path_factory.mktemp("ckpt") / "c"
    ck.write_checkpoint(path, step=5, model_config=CFG, schedule=SCHEDULE.to_dict(), model_state=state,
                        ema_state=state)  # fmt: skip
    return path


def test_sample_with_guidance_and_class_through_the_cli(checkpoint, model, tmp_path, capsys):
    argv = ["sample", "--checkpoint", str(checkpoint), "--sampler", "ddim", "--steps", "3", "--n", "4",
            "--seed", "2", "--no-progress", "--out", str(tmp_path / "g.png")]  # fmt: skip
    code, out, err = run_cli(
        [*argv, "--guidance", "2", "--class", "3", "--npz", str(tmp_path / "g.npz")], capsys
    )
    assert code == 0, err
    assert "guidance 2" in out
    strategy = Strategy.uniform("ddim", 3, 6, CFG.widths)
    expect = sample(model_denoiser(model, SCHEDULE, guidance=2.0), strategy, (1, 8, 8), range(2, 6),
                    y=torch.full((4,), 3))  # fmt: skip
    assert np.array_equal(np.load(tmp_path / "g.npz")["arr_0"], to_uint8(expect))
    # W = 1 is the conditional model; 'random' is the seed-derived default
    extra = ["--guidance", "1", "--class", "random", "--npz", str(tmp_path / "c.npz")]
    code, _, err = run_cli([*argv, *extra], capsys)
    assert code == 0, err
    assert run_cli([*argv, "--npz", str(tmp_path / "d.npz")], capsys)[0] == 0
    assert np.array_equal(np.load(tmp_path / "c.npz")["arr_0"], np.load(tmp_path / "d.npz")["arr_0"])
    for bad, message in ((["--class", "10"], "class 10 is out of range: 0..9"),
                         (["--class", "three"], "--class must be an integer label or 'random'"),
                         (["--guidance", "-1"], "guidance must be a finite number >= 0")):  # fmt: skip
        code, _, err = run_cli([*argv, *bad], capsys)
        assert code == 2 and err.startswith("error: ") and message in err, err


def test_guidance_on_a_model_without_null_label_is_a_one_line_error(tmp_path, capsys):
    plain = UNetConfig.digits(model_channels=16, num_res_blocks=1, num_classes=10)
    state = random_state(plain)
    ck.write_checkpoint(tmp_path / "p", step=1, model_config=plain, schedule=SCHEDULE.to_dict(),
                        model_state=state, ema_state=state)  # fmt: skip
    argv = ["sample", "--checkpoint", str(tmp_path / "p"), "--steps", "2", "--n", "2", "--no-progress",
            "--out", str(tmp_path / "x.png"), "--guidance", "2"]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "--label-dropout" in err and "Traceback" not in err


class PoolExtractor:
    name = "test:pool4"
    dim = 16

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(images.float(), 4).flatten(1)


def test_a_guided_search_evaluates_and_counts_both_passes(model, tmp_path):
    ext = PoolExtractor()
    real = torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ref = FeatureStats.from_features(ext(real).double().numpy(), ext.name)
    widths = (0.25, 0.5, 1.0)
    spec = SearchSpec(sampler="ddim", steps=3, widths=widths, population=4, generations=1, n_images=8,
                      final_images=8, batch_size=8, guidance=2.0, class_label=None)  # fmt: skip
    assert SearchSpec.from_json(spec.to_json()) == spec
    guided = GenomeEvaluator(model, SCHEDULE, ref, ext, spec)
    plain = GenomeEvaluator(model, SCHEDULE, ref, ext, dataclasses.replace(spec, guidance=None))
    g, p = guided.evaluate((0, 1, 2), 8), plain.evaluate((0, 1, 2), 8)
    assert g.ok and p.ok and g.fid != p.fid
    assert g.gflops == pytest.approx(2 * p.gflops) and g.network_calls == 2 * p.network_calls
    assert g.gflops_per_call == pytest.approx(p.gflops_per_call)
    run = run_search(spec.search_config(), guided, tmp_path / "s", n_images=8, final_images=8, weight=1.0,
                     progress=False, finalists={"full": spec.full_width_genome()})  # fmt: skip
    assert run.final["full"].record["gflops"] == pytest.approx(
        spec.gflops(spec.full_width_genome(), cost_table(CFG))
    )
    with pytest.raises(ConfigError, match="out of range"):
        GenomeEvaluator(model, SCHEDULE, ref, ext, spec.replace(class_label=10))
    plain_model = SlimmableUNet(UNetConfig.digits(model_channels=16, num_res_blocks=1, num_classes=10))
    with pytest.raises(ConfigError, match="null label"):
        GenomeEvaluator(plain_model.eval(), SCHEDULE, ref, ext, spec)


def test_train_cli_label_dropout_without_class_cond_is_a_one_line_error(tmp_path, capsys):
    argv = ["train", "--out", str(tmp_path / "r"), "--label-dropout", "0.1", "--no-progress"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and err.startswith("error: ") and "--class-cond" in err
    assert not (tmp_path / "r").exists()


def test_a_checkpoint_written_before_null_label_existed_still_fits_its_preset(tmp_path):
    plain = UNetConfig.digits(model_channels=16, num_res_blocks=1)
    manifest = {"model_config": {k: v for k, v in plain.to_dict().items() if k != "null_label"}}
    ck.check_compatible(manifest, plain)  # the missing field is its default, False
    with pytest.raises(ck.CheckpointError, match="null_label: checkpoint False vs True"):
        ck.check_compatible(
            manifest, UNetConfig.digits(model_channels=16, num_res_blocks=1, num_classes=10, null_label=True)
        )
