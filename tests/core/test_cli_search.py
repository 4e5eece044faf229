"""ddsm ref-stats / eval / search end to end on a tiny untrained supernet (CPU, seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ddsm_core.cli import app, run_app

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory):
    from ddsm_core.checkpoint import write_checkpoint
    from ddsm_core.config import UNetConfig
    from ddsm_core.schedules import NoiseSchedule
    from ddsm_core.unet import SlimmableUNet

    cfg = UNetConfig.digits(model_channels=32, num_res_blocks=1, widths=(0.5, 0.75, 1.0))
    model = SlimmableUNet(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "c"
    write_checkpoint(
        path, step=1, model_config=cfg, schedule=NoiseSchedule.linear().to_dict(),
        model_state=model.state_dict(), train_config={"dataset": "digits"},
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def stats(tmp_path_factory: pytest.TempPathFactory, checkpoint):
    """Reference stats with a tiny domain extractor cached in a temp folder."""
    import ddsm_core.features as features

    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    tiny = features.DomainCNNConfig(width=8, feature_dim=16, epochs=1, batch_size=64)
    mp.setitem(features.DOMAIN_CONFIGS, "digits", tiny)
    mp.setenv("DDSM_CACHE_DIR", str(cache))
    out = tmp_path_factory.mktemp("stats") / "digits.npz"
    assert run_app(app, ["ref-stats", "--dataset", "digits", "--out", str(out)]) == 0
    yield out
    mp.undo()


def test_ref_stats_file_is_labelled(stats) -> None:
    with np.load(stats) as f:
        assert str(f["extractor"]) == "domain:digits-cnn-v1" and int(f["n"]) == 1500
        assert f["mu"].shape == (16,) and len(json.loads(str(f["meta"]))["extractor_weights"]) == 16


def test_eval_prints_fid_with_its_extractor(checkpoint, stats, tmp_path, capsys) -> None:
    out = tmp_path / "r.json"
    argv = ["eval", "--checkpoint", str(checkpoint), "--stats", str(stats), "--strategy", "uniform:6/8",
            "--steps", "3", "--images", "16", "--json", str(out)]  # fmt: skip
    assert run_app(app, argv) == 0
    assert "FID (domain:digits-cnn-v1)" in capsys.readouterr().out
    assert json.loads(out.read_text())["n_images"] == 16


def test_stats_of_another_dimension_fail_before_sampling(checkpoint, tmp_path, capsys) -> None:
    np.savez(tmp_path / "inc.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    argv = ["eval", "--checkpoint", str(checkpoint), "--stats", str(tmp_path / "inc.npz"),
            "--extractor", "domain", "--dataset", "digits", "--steps", "2", "--images", "100000"]  # fmt: skip
    assert run_app(app, argv) == 2  # 100000 images would take minutes: the error comes first
    assert "inception-v3-pool3" in capsys.readouterr().err


def test_search_writes_the_report_folder_and_resumes(checkpoint, stats, tmp_path) -> None:
    out = tmp_path / "search"
    argv = ["search", "--checkpoint", str(checkpoint), "--stats", str(stats), "--out", str(out),
            "--steps", "3", "--population", "6", "--generations", "2", "--images", "12",
            "--final-images", "16", "--no-progress"]  # fmt: skip
    assert run_app(app, argv) == 0
    for name in ("results.json", "pareto.png", "strategy.png", "samples.png", "report.md"):
        assert (out / name).stat().st_size > 0, name
    res = json.loads((out / "results.json").read_text())
    assert {"config", "candidates", "front", "pick", "final", "uniform", "cost"} <= set(res)
    assert res["extractor"] == "domain:digits-cnn-v1" and len(res["uniform"]) == 3
    assert res["final"]["pick"]["n_images"] == 16 and res["final"]["full"]["genome"] == [2, 2, 2]
    assert run_app(app, argv) == 0  # resumes from the finished state: nothing is evaluated again
    again = json.loads((out / "results.json").read_text())
    assert again["cost"]["resumed"] and again["candidates"] == res["candidates"]
