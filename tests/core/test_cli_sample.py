"""``ddsm sample``: same seed, same bytes; strategies; bad input as one-line errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from ddsm_core import checkpoint as ck
from ddsm_core.config import UNetConfig
from ddsm_core.schedules import NoiseSchedule
from ddsm_core.strategy import Strategy
from ddsm_core.unet import SlimmableUNet
from tests.support import run_cli


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An (untrained) tiny supernet checkpoint: sampling needs weights, not good ones."""
    config = UNetConfig.digits(model_channels=16, num_res_blocks=1)
    gen = torch.Generator().manual_seed(0)
    model = SlimmableUNet(config)
    state = {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("ckpt") / "c"
    ck.write_checkpoint(
        path, step=5, model_config=config, schedule=NoiseSchedule.linear().to_dict(), model_state=state,
        ema_state=state,
    )  # fmt: skip
    return path


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_writes_identical_files(checkpoint, tmp_path, capsys):
    for k in ("a", "b"):
        argv = ["sample", "--checkpoint", str(checkpoint), "--sampler", "ddim", "--steps", "3", "--n", "6"]
        argv += ["--seed", "7", "--out", str(tmp_path / f"{k}.png"), "--npz", str(tmp_path / f"{k}.npz")]
        argv += ["--png-dir", str(tmp_path / k), "--no-progress", "--batch-size", "4" if k == "a" else "6"]
        code, out, err = run_cli(argv, capsys)
        assert code == 0, err
    assert sha(tmp_path / "a.png") == sha(tmp_path / "b.png")
    assert sha(tmp_path / "a.npz") == sha(tmp_path / "b.npz")  # also independent of --batch-size
    arr = np.load(tmp_path / "a.npz")["arr_0"]
    assert arr.shape == (6, 8, 8, 1) and arr.dtype == np.uint8
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == [f"seed{s:06d}.png" for s in range(7, 13)]
    assert all(sha(tmp_path / "a" / n) == sha(tmp_path / "b" / n) for n in names)


def test_other_seed_gives_other_images(checkpoint, tmp_path, capsys):
    for seed in ("0", "1"):
        argv = ["sample", "--checkpoint", str(checkpoint), "--steps", "2", "--n", "4", "--seed", seed]
        assert run_cli([*argv, "--out", str(tmp_path / f"{seed}.png"), "--no-progress"], capsys)[0] == 0
    assert sha(tmp_path / "0.png") != sha(tmp_path / "1.png")


def test_strategy_file_and_every_sampler(checkpoint, tmp_path, capsys):
    strategy = Strategy.piecewise("edm", 3, [0, 6])
    (tmp_path / "s.json").write_text(strategy.to_json())
    argv = ["sample", "--checkpoint", str(checkpoint), "--sampler", "edm", "--steps", "3"]
    argv += [
        "--strategy",
        str(tmp_path / "s.json"),
        "--n",
        "2",
        "--out",
        str(tmp_path / "e.png"),
        "--no-progress",
    ]
    code, out, err = run_cli(argv, capsys)
    assert code == 0 and "edm/3" in out, err
    for sampler in ("ddpm", "dpmpp", "dpm-solver++"):
        argv = ["sample", "--checkpoint", str(checkpoint), "--sampler", sampler, "--steps", "2", "--n", "2"]
        code, _, err = run_cli(
            [*argv, "--strategy", "uniform:2/8", "--out", str(tmp_path / "x.png"), "--no-progress"], capsys
        )
        assert code == 0, err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sampler", "euler"], "unknown sampler 'euler'; allowed: ddpm, ddim, edm, dpmpp"),
        (["--strategy", "uniform:1/3"], "unknown width"),
        (["--strategy", "nope.json"], "neither 'uniform:<width>'"),
        (["--class", "3"], "not class-conditional"),
        (["--n", "0"], "--n must be >= 1"),
    ],
)
def test_bad_arguments_are_one_line_errors(checkpoint, tmp_path, capsys, extra, message):
    argv = [
        "sample",
        "--checkpoint",
        str(checkpoint),
        "--steps",
        "2",
        "--out",
        str(tmp_path / "x.png"),
        *extra,
    ]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1


def test_strategy_file_for_other_steps_is_refused(checkpoint, tmp_path, capsys):
    (tmp_path / "s.json").write_text(Strategy.uniform("ddim", 10, 6).to_json())
    argv = ["sample", "--checkpoint", str(checkpoint), "--steps", "4", "--strategy", str(tmp_path / "s.json")]
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "10 steps" in err


def test_missing_or_corrupt_checkpoint_names_the_file(checkpoint, tmp_path, capsys):
    code, _, err = run_cli(
        ["sample", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "x.png")], capsys
    )
    assert code == 2 and "not found" in err and err.count("\n") == 1
    bad = tmp_path / "bad"
    ck.copy_checkpoint(checkpoint, bad)
    data = bytearray((bad / "ema.safetensors").read_bytes())
    data[len(data) // 2] ^= 1
    (bad / "ema.safetensors").write_bytes(bytes(data))
    code, _, err = run_cli(["sample", "--checkpoint", str(bad), "--out", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "ema.safetensors is corrupt" in err and err.count("\n") == 1


def test_scripted_writes_the_default_images(checkpoint, tmp_path, capsys, monkeypatch):
    """--scripted runs frozen TorchScript graphs per width: the same images up to float rounding."""
    from ddsm_core.inference import ScriptedWidths

    traced: list[float] = []
    trace = ScriptedWidths._trace
    monkeypatch.setattr(ScriptedWidths, "_trace", lambda self, w, x: traced.append(w) or trace(self, w, x))
    arrays = []
    for flag in ("--no-scripted", "--scripted"):
        npz = tmp_path / f"{flag}.npz"
        argv = ["sample", "--checkpoint", str(checkpoint), "--sampler", "ddim", "--steps", "3", "--n", "3"]
        argv += ["--strategy", "piecewise:2/8,8/8,5/8", flag, "--out", str(tmp_path / f"{flag}.png")]
        code, out, err = run_cli([*argv, "--npz", str(npz), "--no-progress"], capsys)
        assert code == 0, err
        arrays.append(np.load(npz)["arr_0"].astype(int))
    assert np.abs(arrays[1] - arrays[0]).max() <= 1
    assert sorted(traced) == [2 / 8, 5 / 8, 8 / 8]  # one graph per width, for --scripted only
