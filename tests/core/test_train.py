"""Trainer: the sandwich rule, distillation, exact resume, SIGTERM, DDP on CPU, the cifar10 preset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddsm_core.config import UNetConfig
from ddsm_core.data import ImageDataset, load_dataset
from ddsm_core.errors import CheckpointError, ConfigError
from ddsm_core.schedules import NoiseSchedule
from ddsm_core.train import (
    TRAIN_PRESETS,
    TrainConfig,
    TrainingError,
    eval_width_losses,
    lr_factor,
    sandwich_widths,
    train,
    train_step,
)
from ddsm_core.unet import SlimmableUNet

TINY = UNetConfig.digits(model_channels=16, num_res_blocks=1)  # keeps dropout 0.1: resume must cover it
FAST = dict(
    batch_size=8, lr=1e-3, warmup_steps=2, log_every=1, eval_images=8, sample_n=2, sample_steps=2,
    sample_every=0, checkpoint_every=0,
)  # fmt: skip


def small_digits(n: int = 32) -> ImageDataset:
    ds = load_dataset("digits")
    return ImageDataset("digits-small", ds.images[:n], ds.labels[:n], ds.classes)


def weights(ckpt: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / name))


def test_sandwich_has_largest_smallest_and_n_random_middle_widths():
    widths = UNetConfig.digits().widths
    draws = [tuple(sandwich_widths(widths, 2, torch.Generator().manual_seed(s))) for s in range(20)]
    for d in draws:
        assert d[0] == 1.0 and d[-1] == 0.25 and len(d) == 4 and len(set(d)) == 4
        assert all(0.25 < w < 1.0 for w in d[1:-1])
    assert len(set(draws)) > 3  # the middle widths vary from step to step
    assert sandwich_widths(widths, 9, torch.Generator()) == [1.0, *widths[1:-1], 0.25]


def test_train_step_sums_the_gradients_of_every_width():
    torch.manual_seed(0)
    model = SlimmableUNet(UNetConfig.digits(model_channels=16, num_res_blocks=1, dropout=0.0))
    sched = NoiseSchedule.linear()
    x0, noise = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    widths = [1.0, 0.5, 0.25]
    losses = train_step(model, sched, x0, None, t, noise, widths)
    summed = {k: p.grad.clone() for k, p in model.named_parameters()}
    expected = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    for w in widths:
        model.zero_grad()
        loss = ((model(sched.q_sample(x0, t, noise), t.float(), width=w) - noise) ** 2).mean()
        loss.backward()
        assert torch.allclose(loss, losses[w])
        for k, p in model.named_parameters():
            expected[k] += p.grad
    assert all(torch.allclose(summed[k], expected[k], atol=1e-6) for k in summed)


def test_distillation_regresses_the_full_width_prediction():
    torch.manual_seed(0)
    model = SlimmableUNet(UNetConfig.digits(model_channels=16, num_res_blocks=1, dropout=0.0))
    sched = NoiseSchedule.linear()
    x0, noise, t = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), torch.tensor([5, 50, 500, 900])
    losses = train_step(model, sched, x0, None, t, noise, [1.0, 0.25], distill=True)
    with torch.no_grad():
        x_t = sched.q_sample(x0, t, noise)
        teacher = model(x_t, t.float(), width=1.0)
        student = model(x_t, t.float(), width=0.25)
    assert torch.allclose(losses[1.0], ((teacher - noise) ** 2).mean())
    assert torch.allclose(losses[0.25], ((student - teacher) ** 2).mean())


def test_lr_warmup_then_cosine():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(cfg, 0) == pytest.approx(0.1) and lr_factor(cfg, 9) == pytest.approx(1.0)
    assert lr_factor(cfg, 10) == pytest.approx(1.0) and lr_factor(cfg, 100) == pytest.approx(0.1)
    assert lr_factor(TrainConfig(warmup_steps=0), 12345) == 1.0


def test_train_config_round_trips_and_validates():
    cfg = TrainConfig.for_preset("digits", steps=7)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg and cfg.steps == 7
    with pytest.raises(ConfigError, match="allowed: celeba64, cifar10, digits"):
        TrainConfig.for_preset("mnist")
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"lr": 1e-3, "learning_rate": 1})


def test_interrupted_by_sigterm_and_resumed_equals_uninterrupted(tmp_path):
    data = small_digits()
    cfg = TrainConfig(steps=6, **FAST)
    full = train(TINY, cfg, tmp_path / "a", dataset=data, eval_dataset=data, progress=False)
    assert full.step == 6 and not full.interrupted

    def sigterm_at_3(record):
        if record["step"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    part = train(
        TINY, cfg, tmp_path / "b", dataset=data, eval_dataset=data, progress=False, callback=sigterm_at_3
    )
    assert part.interrupted and part.signal == signal.SIGTERM and part.step == 3
    assert part.checkpoint is not None and part.checkpoint.name == "step-0000003"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored

    with pytest.raises(TrainingError, match="--resume"):
        train(TINY, cfg, tmp_path / "b", dataset=data, eval_dataset=data, progress=False)
    rest = train(TINY, cfg, tmp_path / "b", dataset=data, eval_dataset=data, resume=True, progress=False)
    assert rest.step == 6 and not rest.interrupted
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = weights(full.checkpoint, name), weights(rest.checkpoint, name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    sa = torch.load(full.checkpoint / "training_state.pt", weights_only=True)["optimizer"]["state"]
    sb = torch.load(rest.checkpoint / "training_state.pt", weights_only=True)["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert (tmp_path / "b" / "samples" / "step-0000006.png").is_file()
    assert full.eval is not None and len(full.eval.overall) == len(TINY.widths)


def test_resume_refuses_a_different_recipe_or_model(tmp_path):
    data = small_digits()
    cfg = TrainConfig(steps=1, **{**FAST, "eval_images": 0, "sample_n": 0})
    train(TINY, cfg, tmp_path / "r", dataset=data, progress=False)
    with pytest.raises(ConfigError, match="lr: run 0.001 vs now 0.01"):
        train(TINY, cfg.replace(steps=2, lr=1e-2), tmp_path / "r", dataset=data, resume=True, progress=False)
    other = UNetConfig.digits(model_channels=32, num_res_blocks=1)
    with pytest.raises(CheckpointError, match="model_channels: checkpoint 16 vs 32"):
        train(other, cfg.replace(steps=2), tmp_path / "r", dataset=data, resume=True, progress=False)


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    images = torch.full((8, 1, 8, 8), float("nan"))
    data = ImageDataset("nan", images, torch.zeros(8, dtype=torch.long), None)
    cfg = TrainConfig(steps=3, **{**FAST, "eval_images": 0, "sample_n": 0})
    with pytest.raises(TrainingError, match="non-finite loss at step 1"):
        train(TINY, cfg, tmp_path / "nan", dataset=data, progress=False)


def test_eval_losses_use_the_same_draws_for_every_width():
    torch.manual_seed(0)
    model = SlimmableUNet(UNetConfig.digits(model_channels=16, num_res_blocks=1, dropout=0.0))
    data = small_digits(16)
    a = eval_width_losses(model, NoiseSchedule.linear(), data, n_images=16, seed=3)
    b = eval_width_losses(model, NoiseSchedule.linear(), data, n_images=16, seed=3)
    assert a == b and a.t_edges == (0, 250, 500, 750, 1000) and len(a.per_bin[0]) == 4
    assert "| 8/8 |" in a.to_markdown()


DDP_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from ddsm_core.config import UNetConfig
from ddsm_core.data import ImageDataset, load_dataset
from ddsm_core.train import TrainConfig, train
ds = load_dataset("digits")
data = ImageDataset("d", ds.images[:32], ds.labels[:32], ds.classes)
cfg = TrainConfig(steps=3, batch_size=8, lr=1e-3, warmup_steps=1, eval_images=0, sample_n=0, log_every=1)
model = UNetConfig.digits(model_channels=16, num_res_blocks=1, dropout=0.0)
train(model, cfg, sys.argv[1], dataset=data, progress=False, device="cpu")
"""


@pytest.mark.slow  # ~30 s on 2 busy cores: three interpreters import torch
def test_two_process_ddp_on_cpu_matches_one_process(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*cmd, str(script), str(tmp_path / "ddp")], env=env, capture_output=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    single = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one")], env=env, capture_output=True
    )
    assert single.returncode == 0, single.stderr.decode()[-3000:]
    a = weights(tmp_path / "ddp" / "step-0000003", "model.safetensors")
    b = weights(tmp_path / "one" / "step-0000003", "model.safetensors")
    # Same global batches, noise and widths: only float summation order differs (the gradient norms
    # agree to 1e-6; Adam turns tiny differences of near-zero gradients into steps of up to lr).
    log_a, log_b = (
        [json.loads(line) for line in (tmp_path / d / "log.jsonl").read_text().splitlines()]
        for d in ("ddp", "one")
    )
    for ra, rb in zip(log_a, log_b, strict=True):
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-5)
        assert ra["losses"] == pytest.approx(rb["losses"], rel=1e-4)
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_one_training_step_of_the_cifar10_preset_on_cpu(tmp_path):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=gen)
    data = ImageDataset("random-cifar", images, torch.arange(4) % 10, [str(i) for i in range(10)])
    cfg = TrainConfig.for_preset("cifar10", steps=1, batch_size=2, eval_images=0, sample_n=0)
    result = train(UNetConfig.cifar10(), cfg, tmp_path / "c", dataset=data, eval_dataset=data, progress=False)
    assert result.step == 1 and (result.checkpoint / "model.safetensors").stat().st_size > 35e6 * 4


def test_recipe_dropout_overrides_the_model_config_and_still_resumes(tmp_path):
    data = small_digits()
    cfg = TrainConfig(steps=1, dropout=0.0, **{**FAST, "eval_images": 0, "sample_n": 0})
    first = train(TINY, cfg, tmp_path / "r", dataset=data, progress=False)
    manifest = json.loads((first.checkpoint / "manifest.json").read_text())
    assert manifest["model_config"]["dropout"] == 0.0 and TINY.dropout == 0.1
    again = train(TINY, cfg.replace(steps=2), tmp_path / "r", dataset=data, resume=True, progress=False)
    assert again.step == 2


def test_a_stop_after_the_last_step_cuts_the_final_phase_short_and_resuming_finishes_it(tmp_path):
    data = small_digits()
    cfg = TrainConfig(steps=3, **FAST)
    full = train(TINY, cfg, tmp_path / "a", dataset=data, eval_dataset=data, progress=False)

    def sigterm_at_the_end(record):
        if record["step"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    cut = train(
        TINY, cfg, tmp_path / "b", dataset=data, eval_dataset=data, progress=False,
        callback=sigterm_at_the_end,
    )  # fmt: skip
    assert cut.interrupted and cut.signal == signal.SIGTERM and cut.step == 3 and cut.eval is None
    assert json.loads((cut.checkpoint / "manifest.json").read_text())["finished"] is False
    assert not (tmp_path / "b" / "samples").exists()  # the grids were cut short, not half written

    rest = train(TINY, cfg, tmp_path / "b", dataset=data, eval_dataset=data, resume=True, progress=False)
    assert not rest.interrupted and rest.step == 3 and rest.eval == full.eval
    assert (tmp_path / "b" / "samples" / "step-0000003.png").is_file()
    assert json.loads((rest.checkpoint / "manifest.json").read_text())["finished"] is True
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = weights(full.checkpoint, name), weights(rest.checkpoint, name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    again = train(TINY, cfg, tmp_path / "b", dataset=data, eval_dataset=data, resume=True, progress=False)
    assert not again.interrupted and again.step == 3  # a finished run resumed is finished


def test_every_recipe_has_a_unet_preset_and_the_bench_recipe_is_constant_lr():
    from ddsm_core.config import PRESETS

    assert set(TRAIN_PRESETS) <= set(PRESETS)
    bench, model = TrainConfig.for_preset("digits-bench"), UNetConfig.from_preset("digits-bench")
    # a constant LR after warm-up: the state at step k does not depend on the run's total steps
    assert lr_factor(bench, bench.warmup_steps) == lr_factor(bench.replace(steps=10 * bench.steps), 10**6)
    assert model.dropout == 0.0 and model.model_channels < UNetConfig.digits().model_channels


class FakeClock:
    """The progress bar's clock: training steps and side work advance it by what they would take."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _etas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple[int, float]]:
    """(step, the training bar's seconds left) after every step of a real training run in which a step
    takes 1 s and each periodic phase (eval loss, sample grids, checkpoint) 30 s, on a fake clock."""
    import tqdm.std

    from ddsm_core import trainer

    clock = FakeClock()
    monkeypatch.setattr(tqdm.std, "time", clock)  # tqdm reads its clock from this name
    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)  # no refresh thread on the real clock

    def timed(method, seconds, due=lambda **kw: True):
        def run(self, *args, **kw):
            out = method(self, *args, **kw)
            clock.now += seconds if due(**kw) else 0.0
            return out

        return run

    monkeypatch.setattr(trainer.Trainer, "train_one", timed(trainer.Trainer.train_one, 1.0))
    watch = timed(trainer.Trainer._watch, 30.0, lambda eval_due, samples_due: eval_due or samples_due)
    monkeypatch.setattr(trainer.Trainer, "_watch", watch)  # called every step, works when due
    monkeypatch.setattr(trainer.Trainer, "save", timed(trainer.Trainer.save, 30.0))
    etas = []
    log = trainer.Trainer.log

    def logged(self, record, bar, force):
        log(self, record, bar, force)
        d = bar.format_dict
        etas.append((d["n"], (d["total"] - d["n"]) / d["rate"]))

    monkeypatch.setattr(trainer.Trainer, "log", logged)
    data = small_digits(16)
    cfg = TrainConfig(steps=9, **{**FAST, "eval_every": 3, "sample_every": 3, "checkpoint_every": 3})
    train(TINY, cfg, tmp_path / name, dataset=data, eval_dataset=data, progress=True)
    return etas


def test_the_training_bar_eta_counts_training_steps_only(tmp_path, monkeypatch, capsys):
    """Eval, sample grids and checkpoints every 3 steps take 30 x a step's time: the ETA after them is
    still (steps left) x (time per step), not a jump (the fake clock makes this exact, not timed)."""
    etas = _etas(tmp_path, monkeypatch, "honest")
    assert [n for n, _ in etas] == list(range(1, 10))
    for n, left in etas:
        assert left == pytest.approx(9 - n, abs=1e-6), etas
    assert "step 3: eval loss, sample grids, checkpoint" in capsys.readouterr().out  # the pause is named

    # the same run with the side work on the bar's clock: the measurement sees the jump
    import tqdm.std

    monkeypatch.setattr(tqdm.std.tqdm, "unpause", lambda self: None)
    jumpy = dict(_etas(tmp_path, monkeypatch, "jumpy"))
    assert jumpy[4] > 3 * (9 - 4)
