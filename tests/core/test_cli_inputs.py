"""Issue 14: every command checks its inputs before it writes, trains or starts anything.

Each case: exit status 2, exactly one line on stderr naming the real cause, nothing left behind.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from ddsm_core.cli import app, run_app
from ddsm_core.spec import SAMPLER_HELP

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory):
    from ddsm_core.checkpoint import write_checkpoint
    from ddsm_core.config import UNetConfig
    from ddsm_core.schedules import NoiseSchedule
    from ddsm_core.unet import SlimmableUNet

    cfg = UNetConfig.digits(model_channels=32, num_res_blocks=1, widths=(0.5, 0.75, 1.0))
    path = tmp_path_factory.mktemp("ckpt") / "c"
    write_checkpoint(
        path, step=7, model_config=cfg, schedule=NoiseSchedule.linear().to_dict(),
        model_state=SlimmableUNet(cfg).state_dict(), train_config={"dataset": "digits"},
    )  # fmt: skip
    return path


def fails(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    """Run ``ddsm argv``; assert exit 2 and one ``error:`` line holding every needle; return it."""
    code = run_app(app, argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_eval_with_zero_images_is_a_one_line_error(checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "r.json"
    fails(["eval", "--checkpoint", str(checkpoint), "--dataset", "digits", "--images", "0",
           "--json", str(out)], capsys, "--images must be >= 2, got 0")  # fmt: skip
    assert not out.exists()


@pytest.mark.parametrize("dataset", ["mnist", "no/such/folder"])
def test_ref_stats_of_an_unknown_dataset_names_the_dataset_not_inception(dataset, tmp_path, capsys) -> None:
    out = tmp_path / "s" / "r.npz"
    err = fails(["ref-stats", "--dataset", dataset, "--out", str(out)], capsys,
                f"unknown dataset {dataset!r}", "digits, cifar10")  # fmt: skip
    assert "Inception" not in err and not (tmp_path / "s").exists()


def test_eval_and_search_with_an_unknown_dataset_name_it(checkpoint, tmp_path, capsys) -> None:
    fails(["eval", "--checkpoint", str(checkpoint), "--dataset", "mnist", "--images", "4"], capsys,
          "unknown dataset 'mnist'")  # fmt: skip
    out = tmp_path / "X"
    fails(["search", "--checkpoint", str(checkpoint), "--dataset", "mnist", "--out", str(out)], capsys,
          "unknown dataset 'mnist'")  # fmt: skip
    assert not out.exists()


def test_train_with_an_unknown_dataset_prints_no_plan_and_leaves_no_folder(tmp_path, capsys) -> None:
    out = tmp_path / "X"
    code = run_app(app, ["train", "--dataset", "mnist", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and "unknown dataset 'mnist'" in captured.err
    assert not out.exists()


def test_search_with_a_missing_checkpoint_leaves_no_folder(tmp_path, capsys) -> None:
    out = tmp_path / "X"
    fails(["search", "--checkpoint", "/nope", "--out", str(out)], capsys, "checkpoint '/nope' not found")
    assert not out.exists()


def test_search_with_missing_stats_leaves_no_folder(checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "X"
    fails(["search", "--checkpoint", str(checkpoint), "--stats", str(tmp_path / "no.npz"),
           "--out", str(out)], capsys, "no.npz", "not found")  # fmt: skip
    assert not out.exists()


@pytest.mark.parametrize("command", ["sample", "eval", "search"])
def test_one_step_is_refused_as_over_rest(command, checkpoint, tmp_path, capsys) -> None:
    argv = [command, "--checkpoint", str(checkpoint), "--steps", "1"]
    if command == "search":
        argv += ["--out", str(tmp_path / "X")]
    fails(argv, capsys, "--steps must be in [2, 1000], got 1")
    assert list(tmp_path.iterdir()) == []


def test_strategy_transfer_checks_steps_and_its_file(tmp_path, capsys) -> None:
    out = tmp_path / "t.json"
    fails(["strategy", "transfer", "--strategy", str(tmp_path / "none.json"), "--sampler", "ddim",
           "--steps", "10", "--out", str(out)], capsys, "none.json", "not found")  # fmt: skip
    assert not out.exists()
    plot = tmp_path / "t.svg"
    fails(["strategy", "transfer", "--strategy", str(tmp_path / "none.json"), "--sampler", "ddim",
           "--steps", "10", "--out", str(out), "--plot", str(plot)], capsys,
          f"--plot: '{plot}' must end in .png (it is written as a PNG plot)")  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_an_output_under_a_file_is_refused_before_any_work(tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    fails(["ref-stats", "--dataset", "digits", "--out", str(tmp_path / "file" / "r.npz")], capsys,
          "is a file, not a folder")  # fmt: skip


def test_search_report_names_checkpoint_step_stats_and_extractor(checkpoint, tmp_path, capsys,
                                                                 monkeypatch) -> None:  # fmt: skip
    import ddsm_core.features as features

    tiny = features.DomainCNNConfig(width=8, feature_dim=16, epochs=1, batch_size=64)
    monkeypatch.setitem(features.DOMAIN_CONFIGS, "digits", tiny)
    monkeypatch.setenv("DDSM_CACHE_DIR", str(tmp_path / "cache"))
    stats = tmp_path / "digits.npz"
    assert run_app(app, ["ref-stats", "--dataset", "digits", "--out", str(stats)]) == 0
    assert f"-> {stats}" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    out = tmp_path / "search"
    argv = ["search", "--checkpoint", str(checkpoint), "--stats", str(stats), "--out", str(out),
            "--steps", "2", "--population", "4", "--generations", "1", "--images", "4",
            "--final-images", "4", "--no-progress"]  # fmt: skip
    assert run_app(app, argv) == 0
    assert str(out / "report.md") in capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert f"checkpoint: `{checkpoint}`, training step 7" in report
    assert f"reference statistics: `{stats}`" in report
    assert "feature extractor: `domain:digits-cnn-v1`" in report
    assert json.loads((out / "results.json").read_text())["run"]["checkpoint_step"] == 7


def _command_helps() -> dict[str, str]:
    """``--help`` of every command and subcommand, as a user sees it."""
    import typer

    group = typer.main.get_command(app)
    helps = {}
    for name, cmd in group.commands.items():
        subs = getattr(cmd, "commands", None)
        for key in [f"{name} {sub}" for sub in subs] if subs else [name]:
            helps[key] = _help(key.split())
    return helps


def _help(argv: list[str]) -> str:
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, [*argv, "--help"], terminal_width=200, prog_name="ddsm")
    assert result.exit_code == 0, result.output
    return result.output


def test_help_texts_are_clean() -> None:
    helps = _command_helps()
    assert {"train", "sample", "eval", "search", "ref-stats", "strategy transfer"} <= set(helps)
    for name, text in helps.items():
        assert "<bool>" not in text, name
        assert not re.search(r"\w \.(\s|$)", text), (name, re.findall(r".{20}\w \.", text))
    for name in ("sample", "eval", "search", "strategy transfer"):
        flat = " ".join(helps[name].split())
        assert " ".join(SAMPLER_HELP.split()) in flat, name


def test_fid_stats_save_is_atomic(tmp_path) -> None:
    from ddsm_core.fid import FeatureStats

    path = FeatureStats(np.zeros(3), np.eye(3), "x", 2).save(tmp_path / "s.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"] and path == tmp_path / "s.npz"


def test_training_side_work_gets_its_own_line_with_where_it_went(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train", "--steps", "2", "--out", str(out), "--batch-size", "8", "--sample-n", "2",
            "--sample-steps", "2", "--sample-every", "1", "--eval-images", "8", "--checkpoint-every", "1",
            "--progress"]  # fmt: skip
    assert run_app(app, argv) == 0
    stdout = capsys.readouterr().out
    samples = re.escape(str(out / "samples"))
    assert re.search(rf"step 1: sample grids, checkpoint \(\d+\.\d s\) -> {samples}", stdout), stdout
    assert re.search(r"step 2: eval loss, sample grids, checkpoint \(\d+\.\d s\)", stdout), stdout


def test_latency_checks_its_counts_and_checkpoint_first(tmp_path, capsys) -> None:
    fails(["latency", "--preset", "digits", "--repeats", "0"], capsys, "--repeats must be >= 1, got 0")
    fails(["latency", "--checkpoint", str(tmp_path / "none")], capsys, "not found")


# ------------------------------------------------------------- found walking every command as a new user
def test_sample_eta_with_another_sampler_fails_before_the_progress_bar(checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "s.png"
    argv = ["sample", "--checkpoint", str(checkpoint), "--out", str(out), "--sampler", "ddpm", "--eta", "0.5"]
    err = fails(argv, capsys, "--eta applies to the ddim sampler only, not ddpm")
    assert "sample:" not in err and not out.exists()  # no bar started (it wrote to stderr before)
    fails([*argv[:-1], "-1", "--sampler", "ddim"], capsys, "--eta must be >= 0, got -1")


def test_a_results_json_without_a_pick_says_so(checkpoint, tmp_path, capsys) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"config": {"sampler": "ddpm", "steps": 10}}))  # a search not finished
    argv = [
        "sample",
        "--checkpoint",
        str(checkpoint),
        "--strategy",
        str(results),
        "--out",
        str(tmp_path / "s.png"),
    ]
    fails(argv, capsys, "a search report without a pick: did the search finish?")
    assert not (tmp_path / "s.png").exists()


def test_stats_that_are_not_an_npz_are_named_as_such(checkpoint, tmp_path, capsys) -> None:
    stats = tmp_path / "stats.npz"
    stats.write_bytes(b"garbage, not a zip")  # numpy would read these bytes as a pickle
    err = fails(["eval", "--checkpoint", str(checkpoint), "--stats", str(stats), "--images", "4"], capsys,
                "is not an .npz file of reference statistics")  # fmt: skip
    assert "pickle" not in err
    out = tmp_path / "X"
    fails(["search", "--checkpoint", str(checkpoint), "--stats", str(stats), "--out", str(out)], capsys,
          "is not an .npz file")  # fmt: skip
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--guidance", "2"], "guidance needs a class-conditional supernet"),
        (["--class", "2"], "--class 2 given, but the supernet has no classes"),
        (["--warm-start", "no-such.json"], "--warm-start: strategy file 'no-such.json' not found"),
    ],
)
def test_search_checks_guidance_class_and_warm_start_before_reference_stats(
    extra, message, checkpoint, tmp_path, capsys
) -> None:
    out = tmp_path / "X"
    # --dataset: reference statistics would be computed (minutes) and saved into X before the check
    fails(["search", "--checkpoint", str(checkpoint), "--dataset", "digits", "--out", str(out), *extra],
          capsys, message)  # fmt: skip
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--images", "0"], "--images must be in [2, 100000], got 0"),
        (["--population", "1"], "--population must be in [2, 10000], got 1"),
        (["--seed", "-1"], "--seed must be in [0, "),
        (["--rungs", "500"], "--rungs must be increasing image counts >= 2 below --images 200"),
        (["--rungs", "50", "--rung-metric", "kid"], "unknown --rung-metric 'kid'; allowed: paired, fid"),
        (["--population", "2"], "--population 2 cannot hold the 3 uniform strategies"),  # the width set's
    ],
)
def test_search_settings_are_named_as_the_options_typed(extra, message, checkpoint, tmp_path, capsys) -> None:
    """The spec's field names (n_images, the REST API's) are not what a `ddsm search` user typed."""
    out = tmp_path / "X"
    err = fails(["search", "--checkpoint", str(checkpoint), "--out", str(out), *extra], capsys, message)
    assert "n_images" not in err and not out.exists()


@pytest.mark.parametrize(
    ("option", "name", "message"),
    [
        ("--out", "grid.txt", "--out: '{}' must end in .png (it is written as a PNG grid)"),
        ("--npz", "images.bin", "--npz: '{}' must end in .npz (it is written as an .npz archive)"),
    ],
)
def test_sample_refuses_an_output_named_for_another_format(option, name, message, tmp_path, capsys) -> None:
    path = tmp_path / name
    # a checkpoint that is not there: the name is checked before anything is read
    fails(["sample", "--checkpoint", str(tmp_path / "none"), option, str(path)], capsys,
          message.format(path))  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_sample_takes_an_upper_case_png_name(checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "GRID.PNG"
    assert run_app(app, ["sample", "--checkpoint", str(checkpoint), "--steps", "2", "--n", "1",
                         "--no-progress", "--out", str(out)]) == 0  # fmt: skip
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--warmup-steps", "-1"], "--warmup-steps must be >= 0, got -1"),
        (["--ema-decay", "1"], "--ema-decay must be in [0, 1), got 1.0"),
        (["--min-lr-ratio", "2"], "--min-lr-ratio must be in [0, 1], got 2.0"),
        (["--lr-schedule", "step"], "unknown lr schedule 'step'; allowed: constant, cosine"),
    ],
)
def test_train_names_the_option_typed_not_the_config_field(extra, message, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    err = fails(["train", "--out", str(out), *extra], capsys, message)
    assert "TrainConfig" not in err and not out.exists()
