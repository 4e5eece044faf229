"""Checkpoints: round trip, sha256 verification, clear errors, atomic writes, run directories."""

from __future__ import annotations

import json

import pytest
import torch

from ddsm_core import checkpoint as ck
from ddsm_core.config import UNetConfig
from ddsm_core.errors import CheckpointError
from ddsm_core.schedules import NoiseSchedule
from ddsm_core.unet import SlimmableUNet

TINY = UNetConfig.digits(model_channels=16, num_res_blocks=1, dropout=0.0)


def _write(path, step=1, config=TINY, seed=0, **kwargs):
    torch.manual_seed(seed)  # test-side seeding only: distinct weights per call
    model = SlimmableUNet(config)
    ema = {k: v + 1 for k, v in model.state_dict().items()}
    args = dict(
        step=step,
        model_config=config,
        schedule=NoiseSchedule.linear().to_dict(),
        model_state=model.state_dict(),
        ema_state=ema,
        training_state={"step": step, "optimizer": {"state": {}, "param_groups": []}},
        train_config={"lr": 1e-3},
    )
    args.update(kwargs)
    return model, args


def test_round_trip_loads_ema_or_raw_weights(tmp_path):
    model, args = _write(tmp_path)
    ck.write_checkpoint(tmp_path / "c", **args)
    loaded, schedule, manifest = ck.load_checkpoint(tmp_path / "c", use_ema=False)
    assert schedule == NoiseSchedule.linear() and manifest["step"] == 1
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    ema_model, _, _ = ck.load_checkpoint(tmp_path / "c")
    key = next(iter(model.state_dict()))
    assert torch.equal(ema_model.state_dict()[key], model.state_dict()[key] + 1)
    assert not ema_model.training
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert set(m["files"]) == {"model.safetensors", "ema.safetensors", "training_state.pt"}
    assert m["model_config"] == TINY.to_dict() and m["training_state"] == "training_state.pt"
    assert ck.load_training_state(tmp_path / "c")["step"] == 1


def test_missing_checkpoint_is_one_line_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        ck.load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="manifest.json missing"):
        ck.load_checkpoint(tmp_path / "empty")


def test_missing_weight_file_names_it(tmp_path):
    _, args = _write(tmp_path)
    ck.write_checkpoint(tmp_path / "c", **args)
    (tmp_path / "c" / "ema.safetensors").unlink()
    with pytest.raises(CheckpointError, match="ema.safetensors is missing"):
        ck.load_checkpoint(tmp_path / "c")


def test_sha256_mismatch_names_the_file(tmp_path):
    _, args = _write(tmp_path)
    ck.write_checkpoint(tmp_path / "c", **args)
    f = tmp_path / "c" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model.safetensors is corrupt: sha256") as info:
        ck.load_checkpoint(tmp_path / "c", use_ema=True)
    assert "\n" not in str(info.value)


def test_bad_manifest_is_reported(tmp_path):
    _, args = _write(tmp_path)
    ck.write_checkpoint(tmp_path / "c", **args)
    (tmp_path / "c" / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="manifest.json"):
        ck.load_checkpoint(tmp_path / "c")


def test_preset_mismatch_names_the_fields(tmp_path):
    _, args = _write(tmp_path)
    ck.write_checkpoint(tmp_path / "c", **args)
    match = r"does not fit the preset: .*model_channels: checkpoint 16 vs 64"
    with pytest.raises(CheckpointError, match=match):
        ck.load_checkpoint(tmp_path / "c", expected_config=UNetConfig.digits())


def test_weights_that_do_not_fit_the_config_name_the_file(tmp_path):
    other = UNetConfig.digits(model_channels=32, num_res_blocks=1, dropout=0.0)
    _, args = _write(tmp_path, config=other)
    args["model_config"] = TINY  # manifest says TINY, weights are for a wider net
    ck.write_checkpoint(tmp_path / "c", **args)
    with pytest.raises(CheckpointError, match=r"ema.safetensors does not fit the model: shape of"):
        ck.load_checkpoint(tmp_path / "c")


def test_run_dir_latest_pruning_and_resolution(tmp_path):
    run = tmp_path / "run"
    for step in (1, 2, 3):
        _, args = _write(tmp_path, step=step)
        args.pop("step")
        ck.save_to_run(run, step=step, keep_last=2, **args)
    assert (run / "LATEST").read_text().strip() == "step-0000003"
    assert sorted(p.name for p in run.glob("step-*")) == ["step-0000002", "step-0000003"]
    assert ck.load_checkpoint(run)[2]["step"] == 3
    (run / "LATEST").unlink()  # a crash before LATEST was first written: newest complete one
    assert ck.resolve_checkpoint(run).name == "step-0000003"


def test_crash_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _, args = _write(tmp_path, step=1)
    args.pop("step")
    ck.save_to_run(run, step=1, **args)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "sha256_file", boom)  # fails after the weights are written
    with pytest.raises(OSError, match="disk full"):
        ck.save_to_run(run, step=2, **args)
    monkeypatch.undo()
    assert sorted(p.name for p in run.iterdir()) == ["LATEST", "step-0000001"]
    assert ck.load_checkpoint(run)[2]["step"] == 1


def test_rewriting_a_checkpoint_in_place_is_atomic(tmp_path):
    _, args = _write(tmp_path, step=1)
    ck.write_checkpoint(tmp_path / "c", **args)
    _, args = _write(tmp_path, step=7, seed=1)
    ck.write_checkpoint(tmp_path / "c", **args)
    assert ck.read_manifest(tmp_path / "c")["step"] == 7
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_copy_checkpoint_verifies_and_copies(tmp_path):
    _, args = _write(tmp_path, step=4)
    args.pop("step")
    ck.save_to_run(tmp_path / "run", step=4, **args)
    dst = ck.copy_checkpoint(tmp_path / "run", tmp_path / "export")
    assert ck.read_manifest(dst)["step"] == 4


@pytest.mark.parametrize(
    "where", ["files", "weights", "training_state", "LATEST", "LATEST-absolute", "symlinked step"]
)
def test_names_in_a_checkpoint_cannot_lead_out_of_its_folder(tmp_path, where):
    """A manifest or LATEST naming ../x, /x or a symlink out is refused before anything is read."""
    _, args = _write(tmp_path)
    run = tmp_path / "run"
    ckpt = ck.save_to_run(run, **args)
    outside = tmp_path / "outside"
    ck.write_checkpoint(outside, **args)  # a valid checkpoint, but not this run's
    mpath = ckpt / "manifest.json"
    m = json.loads(mpath.read_text())
    if where == "files":
        m["files"]["../../outside/model.safetensors"] = m["files"]["model.safetensors"]
    elif where == "weights":
        m["weights"]["ema"] = str(outside / "ema.safetensors")
    elif where == "training_state":
        m["training_state"] = "../../outside/training_state.pt"
    elif where == "LATEST":
        (run / "LATEST").write_text("../outside\n")
    elif where == "LATEST-absolute":
        (run / "LATEST").write_text(f"{outside}\n")
    else:
        for step in run.glob("step-*"):
            ck.shutil.rmtree(step)
        (run / "LATEST").unlink()
        (run / "step-0000009").symlink_to(outside)
    if where in ("files", "weights", "training_state"):
        mpath.write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="outside its checkpoint folder|symlink out|no checkpoint"):
        ck.read_manifest(run, verify=False)


def test_copy_checkpoint_refuses_a_symlink_out_of_the_source(tmp_path):
    _, args = _write(tmp_path)
    ck.write_checkpoint(tmp_path / "c", **args)
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    (tmp_path / "c" / "notes.txt").symlink_to(secret)
    with pytest.raises(CheckpointError, match="symlink out"):
        ck.copy_checkpoint(tmp_path / "c", tmp_path / "copy")
    assert not (tmp_path / "copy").exists()
    (tmp_path / "c" / "notes.txt").unlink()
    (tmp_path / "c" / "alias.safetensors").symlink_to(tmp_path / "c" / "model.safetensors")  # inside: fine
    ck.copy_checkpoint(tmp_path / "c", tmp_path / "copy")
    assert (tmp_path / "copy" / "alias.safetensors").read_bytes() == (
        tmp_path / "c" / "model.safetensors"
    ).read_bytes()
