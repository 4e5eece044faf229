"""A folder of images end to end through the CLI (--image-size), and the one rounding rule of every
image writer (half up, as the FID's quantize)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddsm_core.checkpoint import read_manifest, write_checkpoint
from ddsm_core.config import UNetConfig
from ddsm_core.fid import FeatureStats, quantize, to_uint8
from ddsm_core.schedules import NoiseSchedule
from ddsm_core.unet import SlimmableUNet
from tests.support import run_cli

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
QUICK = ["--batch-size", "8", "--sample-n", "0", "--eval-images", "8", "--log-every", "1", "--no-progress"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """60 real 8x8 digits written as grayscale PNGs (unlabelled: no class subfolders)."""
    from ddsm_core.data import load_dataset

    root = tmp_path_factory.mktemp("imgs")
    ds = load_dataset("digits", split="test")
    for i in range(60):
        img = to_uint8(ds[i][0][None])[0, 0].numpy()
        Image.fromarray(img, "L").save(root / f"d{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def tiny_extractor(tmp_path_factory):
    """A tiny digits domain extractor cached in a temp folder (seconds to train)."""
    import ddsm_core.features as features

    mp = pytest.MonkeyPatch()
    tiny = features.DomainCNNConfig(width=8, feature_dim=16, epochs=1, batch_size=64)
    mp.setitem(features.DOMAIN_CONFIGS, "digits", tiny)
    mp.setenv("DDSM_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield tiny.name
    mp.undo()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = UNetConfig.digits(model_channels=16, num_res_blocks=1, widths=(0.5, 1.0))
    gen = torch.Generator().manual_seed(0)
    state = {
        k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in SlimmableUNet(cfg).state_dict().items()
    }
    path = tmp_path_factory.mktemp("ckpt") / "c"
    write_checkpoint(
        path, step=1, model_config=cfg, schedule=NoiseSchedule.linear().to_dict(), model_state=state,
        ema_state=state, train_config={"dataset": "digits"},
    )  # fmt: skip
    return path


def test_ref_stats_of_a_folder_needs_and_uses_image_size(folder, tiny_extractor, tmp_path, capsys):
    out = tmp_path / "s.npz"
    code, _, err = run_cli(
        ["ref-stats", "--dataset", str(folder), "--extractor", tiny_extractor, "--out", str(out)], capsys
    )
    assert code == 2 and err.startswith("error: ") and "--image-size" in err and err.count("\n") == 1
    assert not out.exists()
    code, _, err = run_cli(
        ["ref-stats", "--dataset", str(folder), "--image-size", "0", "--out", str(out)], capsys
    )
    assert code == 2 and "--image-size must be >= 1" in err
    argv = ["ref-stats", "--dataset", str(folder), "--image-size", "8", "--channels", "1",
            "--extractor", tiny_extractor, "--out", str(out)]  # fmt: skip
    code, text, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "60 images" in text and "real-data floor: none" in text
    stats = FeatureStats.load(out)
    assert stats.n == 60 and stats.meta["image_size"] == 8 and "floors" not in stats.meta


def test_eval_and_search_on_a_folder(folder, tiny_extractor, checkpoint, tmp_path, capsys):
    base = ["--checkpoint", str(checkpoint), "--dataset", str(folder), "--extractor", tiny_extractor,
            "--steps", "2"]  # fmt: skip
    code, _, err = run_cli(["eval", *base, "--image-size", "16", "--images", "4"], capsys)
    assert code == 2 and "--image-size 16 differs from the checkpoint's image size 8" in err
    assert err.count("\n") == 1
    code, _, err = run_cli(["eval", *base, "--images", "4", "--dataset", str(tmp_path / "nope")], capsys)
    assert code == 2 and "does not exist" in err
    res = tmp_path / "r.json"
    code, text, err = run_cli(
        ["eval", *base, "--image-size", "8", "--images", "8", "--json", str(res)], capsys
    )
    assert code == 0, err
    assert f"FID ({tiny_extractor})" in text and json.loads(res.read_text())["fid"] > 0
    out = tmp_path / "search"
    argv = ["search", *base, "--out", str(out), "--population", "2", "--generations", "1", "--images", "4",
            "--final-images", "4", "--no-progress"]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert FeatureStats.load(out / "ref_stats.npz").n == 60


def test_train_on_a_folder_with_image_size(folder, tmp_path, capsys):
    code, _, err = run_cli(["train", "--dataset", str(folder), "--image-size", "7", "--steps", "1",
                        "--out", str(tmp_path / "bad"), *QUICK], capsys)  # fmt: skip
    assert code == 2 and "image_size 7" in err and err.count("\n") == 1
    code, _, err = run_cli(["train", "--dataset", str(folder), "--image-size", "16", "--steps", "1",
                        "--out", str(tmp_path / "r"), *QUICK], capsys)  # fmt: skip
    assert code == 0, err
    assert read_manifest(tmp_path / "r")["model_config"]["image_size"] == 16


def _exact_halves() -> torch.Tensor:
    """float32 values in [-1, 1] whose 8-bit value is exactly k + 0.5 with k even: rounding half to
    even gives k, half up (the FID's quantize) gives k + 1."""
    found = []
    for k in range(0, 255, 2):
        near = torch.tensor((2 * k + 1) / 255 - 1, dtype=torch.float32)
        up = down = near
        for _ in range(6):
            for x in (up, down):
                v = ((x + 1.0) / 2.0) * 255
                if float(v - v.floor()) == 0.5 and len(found) < k // 2 + 1:
                    found.append(float(x))
            up, down = torch.nextafter(up, torch.tensor(2.0)), torch.nextafter(down, torch.tensor(-2.0))
    assert len(found) >= 64  # the test's premise
    return torch.tensor(found[:64])


def test_writers_round_half_up_like_the_fid():
    from ddsm_core.cli.sample_cmd import to_uint8 as sample_uint8

    x = _exact_halves().reshape(1, 1, 8, 8)
    expected = (((x + 1.0) / 2.0) * 255).floor() + 1  # half up
    assert torch.equal(to_uint8(x).float(), expected)
    assert torch.equal(quantize(x) * 255, expected)
    assert np.array_equal(sample_uint8(x)[0, :, :, 0], expected[0, 0].numpy().astype(np.uint8))


def test_sample_files_hold_what_the_fid_measures(checkpoint, tmp_path, capsys):
    from ddsm_core.checkpoint import load_checkpoint
    from ddsm_core.data import save_image_grid
    from ddsm_core.sampling import VPDenoiser, sample
    from ddsm_core.strategy import parse_strategy_spec

    argv = ["sample", "--checkpoint", str(checkpoint), "--sampler", "ddim", "--steps", "3", "--n", "4",
            "--seed", "5", "--out", str(tmp_path / "g.png"), "--npz", str(tmp_path / "s.npz"),
            "--png-dir", str(tmp_path / "png"), "--no-progress", "--device", "cpu"]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    model, schedule, _ = load_checkpoint(checkpoint)
    strat = parse_strategy_spec("uniform:8/8", "ddim", 3, model.config.widths)
    with torch.inference_mode():
        images = sample(VPDenoiser(model, schedule), strat, (1, 8, 8), [5, 6, 7, 8])
    expected = to_uint8(images).permute(0, 2, 3, 1).numpy()
    with np.load(tmp_path / "s.npz") as f:
        assert np.array_equal(f["arr_0"], expected)
    for i in range(4):
        png = np.asarray(Image.open(tmp_path / "png" / f"seed{5 + i:06d}.png"))
        assert np.array_equal(png, expected[i, :, :, 0])
    # the grid: tile (0, 0) of the PNG (4x enlarged, 2 px padding) holds image 0's bytes
    grid = np.asarray(Image.open(save_image_grid(images, tmp_path / "g2.png", nrow=2)))
    assert np.array_equal(grid[2:34:4, 2:34:4], expected[0, :, :, 0])
    halves = _exact_halves().reshape(1, 1, 8, 8)
    tile = np.asarray(Image.open(save_image_grid(halves, tmp_path / "h.png", nrow=1)))[2:34:4, 2:34:4]
    assert np.array_equal(tile, to_uint8(halves)[0, 0].numpy())
