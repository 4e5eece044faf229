"""``ddsm train``: a short digits run, resume, SIGTERM from outside, bad input as one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from ddsm_core.checkpoint import read_manifest
from tests.support import run_cli

# The digits preset, tiny batches, no sample grids, a small eval set: seconds, not minutes.
QUICK = ["--batch-size", "8", "--sample-n", "0", "--eval-images", "8", "--log-every", "1", "--no-progress"]


def test_train_then_resume_to_more_steps(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        ["train", "--preset", "digits", "--steps", "2", "--out", str(out), *QUICK], capsys
    )
    assert code == 0, err
    assert "done: step 2" in stdout and "| 2/8 |" in stdout
    manifest = read_manifest(out)
    assert manifest["step"] == 2 and manifest["train_config"]["batch_size"] == 8
    assert manifest["model_config"]["image_size"] == 8 and manifest["eval"]["n_images"] == 8

    code, _, err = run_cli(["train", "--steps", "3", "--out", str(out), *QUICK], capsys)
    assert code == 2 and "already holds a run" in err and "--resume" in err

    code, stdout, err = run_cli(
        ["train", "--steps", "3", "--out", str(out), "--resume", "--no-progress"], capsys
    )
    assert code == 0, err
    assert "resuming" in stdout and read_manifest(out)["step"] == 3
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_export_copies_the_checkpoint(tmp_path, capsys):
    argv = ["train", "--steps", "1", "--out", str(tmp_path / "r"), "--export", str(tmp_path / "x"), *QUICK]
    assert run_cli(argv, capsys)[0] == 0
    assert read_manifest(tmp_path / "x")["step"] == 1


def test_cosine_schedule_from_the_command_line_decays_to_the_floor(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--steps", "3", "--warmup-steps", "0", "--lr", "0.01", "--lr-schedule", "cosine",
            "--min-lr-ratio", "0.1", "--out", str(out), *QUICK]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    cfg = read_manifest(out)["train_config"]
    assert cfg["lr_schedule"] == "cosine" and cfg["min_lr_ratio"] == 0.1
    lrs = [json.loads(line)["lr"] for line in (out / "log.jsonl").read_text().splitlines()]
    # steps 0, 1, 2 of 3: cos(0), cos(pi/3), cos(2 pi/3) between 0.01 and 0.001
    assert lrs == pytest.approx([0.01, 0.001 + 0.009 * 0.75, 0.001 + 0.009 * 0.25])


def test_resume_with_another_recipe_or_preset_is_refused(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert run_cli(["train", "--steps", "1", "--out", out, *QUICK], capsys)[0] == 0
    code, _, err = run_cli(["train", "--steps", "2", "--out", out, "--resume", "--lr", "0.5", *QUICK], capsys)
    assert code == 2 and "different training recipe (lr: run 0.001 vs now 0.5" in err
    code, _, err = run_cli(["train", "--preset", "cifar10", "--steps", "2", "--out", out, "--resume"], capsys)
    assert code == 2 and "does not fit the preset" in err and "image_size: checkpoint 8 vs 32" in err
    assert err.count("\n") == 1


def test_bad_dataset_input(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(
        ["train", "--dataset", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), *QUICK], capsys
    )
    assert code == 2 and "no images found" in err
    code, _, err = run_cli(
        ["train", "--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), *QUICK], capsys
    )
    assert code == 2 and "does not exist" in err
    code, _, err = run_cli(["train", "--preset", "mnist", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "unknown preset 'mnist'" in err
    code, _, err = run_cli(["train", "--preset", "celeba64", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "--dataset FOLDER" in err


def test_folder_dataset_with_class_labels(tmp_path, capsys):
    for i in range(8):
        folder = tmp_path / "imgs" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("L", (20, 16), 40 * (i % 5)).save(folder / f"{i}.png")
    argv = [
        "train",
        "--dataset",
        str(tmp_path / "imgs"),
        "--class-cond",
        "--steps",
        "1",
        "--out",
        str(tmp_path / "r"),
    ]
    code, _, err = run_cli([*argv, *QUICK], capsys)
    assert code == 0, err
    assert read_manifest(tmp_path / "r")["model_config"]["num_classes"] == 2


def start_train(argv: list[str]) -> subprocess.Popen[str]:
    """``ddsm train`` in its own interpreter (signals go to it, not to pytest)."""
    code = "import sys; from ddsm_core.cli import main; sys.argv[0] = 'ddsm'; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, "train", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def logged_steps(out) -> list[int]:
    path = out / "log.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.is_file() else []


def sigterm_when(proc: subprocess.Popen[str], ready, timeout: float = 120) -> tuple[float, str]:
    """SIGTERM once ``ready()``; returns (seconds from the signal to the exit, stderr)."""
    deadline = time.time() + timeout
    while not ready() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1]
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    print(f"exited {time.monotonic() - sent:.1f} s after SIGTERM")
    return time.monotonic() - sent, err


def test_sigterm_mid_training_checkpoints_exits_within_30_s_and_the_rerun_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    proc = start_train(["--steps", "100000", "--out", str(out), "--threads", "1", *QUICK])
    seconds, err = sigterm_when(proc, lambda: len(logged_steps(out)) >= 2)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert seconds < 30, seconds
    assert "stopped at step" in err and "--resume" in err
    step = read_manifest(out)["step"]
    assert step >= 2 and not any(p.name.startswith(".tmp") for p in out.iterdir())
    assert os.path.isfile(out / "LATEST") and logged_steps(out)[-1] == step

    code, stdout, err = run_cli(
        ["train", "--steps", str(step + 2), "--out", str(out), "--resume", "--no-progress"], capsys
    )
    assert code == 0, err
    assert "resuming" in stdout and f"done: step {step + 2}" in stdout
    assert logged_steps(out) == list(range(1, step + 3))  # went on from the checkpoint, not from 0


def test_sigterm_during_the_final_evaluation_exits_within_30_s_and_the_rerun_finishes_it(tmp_path, capsys):
    out = tmp_path / "run"
    # a final phase of minutes: sample grids of 1000 DDPM steps for every width
    slow_grids = ["--sample-n", "4", "--sample-steps", "1000"]
    proc = start_train(["--steps", "3", "--out", str(out), "--threads", "1", *QUICK, *slow_grids])
    seconds, err = sigterm_when(proc, lambda: 3 in logged_steps(out))  # the last step is logged first
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert seconds < 30, seconds
    manifest = read_manifest(out)
    assert manifest["step"] == 3 and manifest["finished"] is False  # resumable, and says what is left
    assert not (out / "samples" / "step-0000003.png").exists()

    argv = ["train", "--steps", "3", "--out", str(out), "--resume", "--sample-steps", "2", "--no-progress"]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "resuming" in stdout and "done: step 3" in stdout and "per-width eval loss" in stdout
    assert (out / "samples" / "step-0000003.png").is_file() and read_manifest(out)["finished"] is True
    assert logged_steps(out) == [1, 2, 3]  # no step trained twice
