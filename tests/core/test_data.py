"""Datasets: digits, CIFAR-10 through torchvision's reader on generated files, folders, batch order."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddsm_core.data import StepBatchSampler, load_dataset
from ddsm_core.errors import DatasetError

CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_fake_cifar10(root: Path, per_file: int = 4) -> np.ndarray:
    """Files in CIFAR-10's python pickle format (cifar-10-batches-py/), tiny; returns test_batch's data."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(1)
    data = None
    for i, name in enumerate(CIFAR_FILES):
        data = rng.randint(0, 256, size=(per_file, 3072), dtype=np.uint8)
        entry = {"batch_label": name, "labels": [(i + j) % 10 for j in range(per_file)], "data": data}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_vis": 3072}, f)
    return data


def test_digits_are_8x8_in_range_with_fixed_split():
    train, test, every = (load_dataset("digits", split=s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(every)) == (1500, 297, 1797)
    x, y = train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    assert x.min() >= -1 and x.max() <= 1
    assert train.num_classes == 10 and train.image_shape == (1, 8, 8)
    again = load_dataset("digits", split="test")
    assert torch.equal(test.images, again.images)


def test_digits_resize_to_16():
    ds = load_dataset("digits", image_size=16)
    assert ds[3][0].shape == (1, 16, 16)


def test_cifar10_reader_on_generated_files(tmp_path):
    test_data = write_fake_cifar10(tmp_path)
    ds = load_dataset("cifar10", split="test", root=tmp_path, verify=False)
    assert len(ds) == 4 and ds.classes[0] == "airplane" and ds.image_shape == (3, 32, 32)
    x, y = ds[1]
    expected = torch.from_numpy(test_data[1].reshape(3, 32, 32)).float() / 127.5 - 1
    assert torch.equal(x, expected) and y == 6
    assert len(load_dataset("cifar10", split="train", root=tmp_path, verify=False)) == 20
    assert load_dataset("cifar10", split="all", root=tmp_path, verify=False, image_size=16)[0][0].shape == (
        3,
        16,
        16,
    )


def test_cifar10_md5_mismatch_is_a_clear_error(tmp_path):
    write_fake_cifar10(tmp_path)
    with pytest.raises(DatasetError, match="md5.*verify=False"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar10_missing_says_how_to_download(tmp_path):
    with pytest.raises(DatasetError, match="not found.*download"):
        load_dataset("cifar10", root=tmp_path)


def _png(path: Path, value: int, size=(12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def test_folder_with_class_subfolders_has_labels(tmp_path):
    _png(tmp_path / "cat" / "a.png", 0)
    _png(tmp_path / "dog" / "b.jpg", 255)
    _png(tmp_path / "dog" / "c.png", 255)
    ds = load_dataset(tmp_path, image_size=8)
    assert ds.classes == ("cat", "dog") and [ds[i][1] for i in range(3)] == [0, 1, 1]
    x, _ = ds[0]
    assert x.shape == (3, 8, 8) and torch.all(x == -1)
    assert load_dataset(tmp_path, image_size=4, channels=1)[2][0].shape == (1, 4, 4)


def test_flat_folder_is_unlabelled(tmp_path):
    _png(tmp_path / "a.png", 10)
    _png(tmp_path / "sub" / "b.png", 10)
    ds = load_dataset(tmp_path, image_size=8)
    assert ds.classes is None and ds[1][1] == -1


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="no images found"):
        load_dataset(tmp_path, image_size=8)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope", image_size=8)


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="broken.png"):
        load_dataset(tmp_path, image_size=8)


def test_batch_order_is_a_function_of_seed_and_step():
    full = StepBatchSampler(100, 8, seed=3, total_steps=30)
    batches = list(full)
    assert batches == list(StepBatchSampler(100, 8, seed=3, total_steps=30))
    assert list(StepBatchSampler(100, 8, seed=3, start_step=17, total_steps=30)) == batches[17:]
    assert batches != list(StepBatchSampler(100, 8, seed=4, total_steps=30))
    epoch0 = [i for b in batches[:12] for i in b]
    assert len(set(epoch0)) == 96  # no repeats within an epoch
    ranks = [StepBatchSampler(100, 8, seed=3, total_steps=30, rank=r, world=2) for r in (0, 1)]
    assert [a + b for a, b in zip(*map(list, ranks), strict=True)] == batches
    with pytest.raises(DatasetError, match="divisible"):
        StepBatchSampler(100, 7, seed=0, total_steps=1, world=2)
