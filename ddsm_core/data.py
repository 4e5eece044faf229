"""Training images: the bundled 8x8 digits, CIFAR-10, or any folder of images.

Every dataset yields ``(image, label)``: ``image`` an [C x H x W] float32 Tensor in [-1, 1], ``label`` an
int (``-1`` where the dataset has no labels). Item order is fixed (no randomness here); the trainer draws
the shuffled order from its seed (:class:`StepBatchSampler`), so the batches of a run are a function of
(seed, step) alone, which is what makes resuming exact.

Digits resolution: scikit-learn's ``load_digits`` images are used at their native 8x8 (the ``digits``
UNet preset's ``image_size``), values 0..16 mapped linearly to [-1, 1]. Another ``image_size`` resizes
bilinearly (antialiased).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from ddsm_core.errors import DatasetError, choices_message

Split = Literal["train", "test", "all"]
SPLITS: tuple[str, ...] = ("train", "test", "all")
BUILTIN_DATASETS: tuple[str, ...] = ("digits", "cifar10")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DIGITS_TEST_SIZE = 297  # 1797 = 1500 train + 297 test


def default_data_root() -> Path:
    """Where downloadable datasets live: ``$DDSM_DATA_DIR`` or ``~/.cache/ddsm/data``."""
    return Path(os.environ.get("DDSM_DATA_DIR", Path.home() / ".cache" / "ddsm" / "data")).expanduser()


class ImageDataset(Dataset):
    """Labelled images held in memory.

    :param images: an [N x C x H x W] Tensor, uint8 (0..255) or float (already in [-1, 1]).
    :param labels: an [N] long Tensor (``-1`` = unlabelled).
    :param classes: class names, or None when the dataset has no labels.
    :param image_size: resize to this square size on access (None keeps the stored size).
    """

    def __init__(
        self,
        name: str,
        images: Tensor,
        labels: Tensor,
        classes: Sequence[str] | None,
        image_size: int | None = None,
    ) -> None:
        if images.ndim != 4 or len(images) != len(labels):
            raise DatasetError(f"{name}: expected [N,C,H,W] images and N labels, got {tuple(images.shape)}")
        if len(images) == 0:
            raise DatasetError(f"{name}: the dataset is empty")
        self.name = name
        self.images = images
        self.labels = labels.long()
        self.classes = tuple(classes) if classes is not None else None
        self.image_size = image_size

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) if self.classes is not None else None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        if self.image_size is not None:
            h = w = self.image_size
        return (c, h, w)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x = self.images[index]
        x = x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()
        if self.image_size is not None and x.shape[-1] != self.image_size:
            x = _resize(x[None], self.image_size)[0]
        return x, int(self.labels[index])


class FolderDataset(Dataset):
    """Images read lazily from a folder (recursively), centre-cropped to a square and resized.

    Labels: if every image sits in a direct subfolder of ``root``, the sorted subfolder names are the
    classes (torchvision's ImageFolder convention); otherwise the images are unlabelled (label ``-1``).
    """

    def __init__(self, root: str | Path, image_size: int, channels: int = 3) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetError(
                f"dataset folder {str(root)!r} does not exist; give "
                f"{' or '.join(map(repr, BUILTIN_DATASETS))} or a folder of images"
            )
        if channels not in (1, 3):
            raise DatasetError(f"channels must be 1 or 3, got {channels}")
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not paths:
            raise DatasetError(
                f"no images found under {str(root)!r} (looked for {', '.join(IMAGE_EXTENSIONS)})"
            )
        parents = {p.parent for p in paths}
        if all(p.parent.parent == root for p in paths):
            self.classes: tuple[str, ...] | None = tuple(sorted(p.name for p in parents))
            index = {c: i for i, c in enumerate(self.classes)}
            self.labels = [index[p.parent.name] for p in paths]
        else:
            self.classes = None
            self.labels = [-1] * len(paths)
        self.name = str(root)
        self.root = root
        self.paths = paths
        self.image_size = image_size
        self.channels = channels
        self[0]  # fail now, not mid-training, if the first file is unreadable

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) if self.classes is not None else None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from PIL import Image, UnidentifiedImageError

        path = self.paths[index]
        try:
            with Image.open(path) as img:
                img = img.convert("L" if self.channels == 1 else "RGB")
                img = _center_crop_resize(img, self.image_size)
                arr = np.asarray(img, dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as exc:
            raise DatasetError(f"cannot read image {str(path)!r}: {exc}") from exc
        x = torch.from_numpy(arr.copy())
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
        return x.float() / 127.5 - 1.0, self.labels[index]


def load_dataset(
    name: str | Path,
    *,
    split: Split = "train",
    image_size: int | None = None,
    channels: int | None = None,
    root: str | Path | None = None,
    download: bool = False,
    verify: bool = True,
) -> ImageDataset | FolderDataset:
    """Open a dataset by name (``digits``, ``cifar10``) or folder path.

    :param split: ``train`` / ``test`` for digits (1500 / 297 images, a fixed split) and CIFAR-10
        (50000 / 10000); ``all`` is both. A folder has one split: every image in it.
    :param image_size: square resolution to deliver; None = the dataset's own (required for folders).
    :param channels: for folders, 1 (grayscale) or 3 (RGB); default 3.
    :param root: where CIFAR-10 lives (it holds ``cifar-10-batches-py``); default :func:`default_data_root`.
    :param download: fetch CIFAR-10 if it is not under ``root`` (needs internet).
    :param verify: check CIFAR-10's files against torchvision's md5 sums; False reads any files in the
        same pickle format (e.g. a subset you made).
    """
    check_dataset(name, image_size, channels, split=split)
    key = str(name)
    if key == "digits":
        return _load_digits(split, image_size)
    if key == "cifar10":
        return _load_cifar10(split, image_size, root, download, verify)
    assert image_size is not None  # check_dataset refuses a folder without one
    return FolderDataset(key, image_size=image_size, channels=channels or 3)


def check_dataset(
    name: str | Path,
    image_size: int | None = None,
    channels: int | None = None,
    split: str = "train",
) -> None:
    """Validate a dataset argument up front, before any model, extractor, folder or sampling work.

    Raises :class:`DatasetError` with a one-line message: a bad ``--image-size``/``--channels`` names
    the option; an unknown split is refused; a name that is neither a built-in dataset nor an existing
    folder is called an unknown dataset (so a typo such as ``mnist`` is named as such, not reported
    later as a missing extractor or an empty run folder); a folder needs an image size (its images
    have none of their own) and at least one image. Reads no image.
    """
    if image_size is not None and int(image_size) < 1:
        raise DatasetError(f"--image-size must be >= 1, got {image_size}")
    if channels is not None and channels not in (1, 3):
        raise DatasetError(f"--channels must be 1 or 3, got {channels}")
    if split not in SPLITS:
        raise DatasetError(choices_message("split", split, SPLITS))
    key = str(name)
    if key in BUILTIN_DATASETS:
        return
    folder = Path(key).expanduser()
    if not folder.exists():
        raise DatasetError(
            f"unknown dataset {key!r}: known datasets are {', '.join(BUILTIN_DATASETS)} or a folder of "
            f"images, and folder {key!r} does not exist"
        )
    if not folder.is_dir():
        raise DatasetError(
            f"dataset {key!r} is a file; give {', '.join(BUILTIN_DATASETS)} or a folder of images"
        )
    if image_size is None:
        raise DatasetError(f"the folder dataset {key!r} needs --image-size (the square size to read it at)")
    if not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.rglob("*")):
        raise DatasetError(f"no images found under {key!r} (looked for {', '.join(IMAGE_EXTENSIONS)})")


def _load_digits(split: Split, image_size: int | None) -> ImageDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 8.0 - 1.0)[:, None]  # 0..16 -> [-1, 1]
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    # A fixed split: RandomState's permutation is frozen by numpy's compatibility policy.
    perm = np.random.RandomState(0).permutation(len(images))
    if split != "all":
        chosen = perm[:DIGITS_TEST_SIZE] if split == "test" else perm[DIGITS_TEST_SIZE:]
        idx = torch.from_numpy(np.sort(chosen))
        images, labels = images[idx], labels[idx]
    if image_size is not None and image_size != images.shape[-1]:
        images = _resize(images, image_size)
        image_size = None
    return ImageDataset(f"digits/{split}", images, labels, [str(d) for d in range(10)], image_size)


def _load_cifar10(
    split: Split, image_size: int | None, root: str | Path | None, download: bool, verify: bool
) -> ImageDataset:
    root = Path(root).expanduser() if root is not None else default_data_root()
    parts = []
    for train in (True, False) if split == "all" else (split == "train",):
        ds = _open_cifar10(root, train, download, verify)
        parts.append(ds)
    images = torch.from_numpy(np.concatenate([p.data for p in parts])).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([t for p in parts for t in p.targets], dtype=torch.long)
    size = image_size if image_size not in (None, images.shape[-1]) else None
    return ImageDataset(f"cifar10/{split}", images, labels, parts[0].classes, size)


def _open_cifar10(root: Path, train: bool, download: bool, verify: bool):  # -> torchvision CIFAR10
    import torchvision

    class _CIFAR10(torchvision.datasets.CIFAR10):
        """torchvision's reader; with ``verify=False`` a file need only exist, not match the md5."""

        def _check_integrity(self) -> bool:
            if verify:
                return super()._check_integrity()
            folder = Path(self.root) / self.base_folder
            return all((folder / f).is_file() for f, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            if verify:
                return super()._load_meta()
            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    folder = root / _CIFAR10.base_folder
    try:
        return _CIFAR10(str(root), train=train, download=download)
    except RuntimeError as exc:
        files = [f for f, _ in _CIFAR10.train_list + _CIFAR10.test_list] + [_CIFAR10.meta["filename"]]
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise DatasetError(
                f"CIFAR-10 not found: {', '.join(missing)} missing under {str(folder)!r}; "
                "pass download=True (CLI: --download, needs internet) or set --data-root"
            ) from exc
        raise DatasetError(
            f"CIFAR-10 files under {str(folder)!r} do not match torchvision's md5 sums "
            "(corrupt download?); download again, or pass verify=False (CLI: --no-verify) to read them anyway"
        ) from exc
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as exc:
        raise DatasetError(f"cannot read CIFAR-10 under {str(folder)!r}: {exc}") from exc


class StepBatchSampler(Sampler[list[int]]):
    """Index lists for training steps ``start_step, ..., total_steps - 1``: a pure function of the seed.

    Epoch ``e`` visits the items in ``randperm(N)`` drawn from a generator seeded with (seed, e), dropping
    the incomplete last batch. Step ``k``'s global batch is a slice of that permutation, and rank ``r``
    of ``world`` takes the r-th equal part of it, so a DDP run sees the same global batches as one process.
    """

    def __init__(
        self,
        n_items: int,
        global_batch: int,
        *,
        seed: int,
        start_step: int = 0,
        total_steps: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if global_batch % world:
            raise DatasetError(f"batch size {global_batch} is not divisible by {world} processes")
        if n_items < global_batch:
            raise DatasetError(f"dataset has {n_items} images, fewer than one batch of {global_batch}")
        self.n_items, self.global_batch = n_items, global_batch
        self.seed, self.start_step, self.total_steps = seed, start_step, total_steps
        self.rank, self.world = rank, world
        self.steps_per_epoch = n_items // global_batch
        self._cached: tuple[int, Tensor] = (-1, torch.empty(0, dtype=torch.long))

    def permutation(self, epoch: int) -> Tensor:
        if self._cached[0] != epoch:  # one epoch's permutation, reused by its steps
            g = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
            self._cached = (epoch, torch.randperm(self.n_items, generator=g))
        return self._cached[1]

    def batch_indices(self, step: int) -> list[int]:
        """This rank's item indices for training step ``step``."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        local = self.global_batch // self.world
        start = pos * self.global_batch + self.rank * local
        return self.permutation(epoch)[start : start + local].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.total_steps):
            yield self.batch_indices(step)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed from a base seed and a purpose (stable across processes and Python runs)."""
    import hashlib

    text = "/".join([str(seed), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def _resize(images: Tensor, size: int) -> Tensor:
    """Bilinear, antialiased resize of an [N x C x H x W] float Tensor, clamped back to [-1, 1]."""
    if images.dtype == torch.uint8:
        images = images.float() / 127.5 - 1.0
    out = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp(-1.0, 1.0)


def _center_crop_resize(img, size: int):  # PIL.Image -> PIL.Image
    from PIL import Image

    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return img.resize((size, size), Image.Resampling.BICUBIC) if side != size else img


def save_image_grid(images: Tensor, path: str | Path, nrow: int = 8, min_tile: int = 32) -> Path:
    """Save [N x C x H x W] images in [-1, 1] as one PNG grid, ``nrow`` images per row.

    Tiles smaller than ``min_tile`` pixels are enlarged by an integer factor (nearest neighbour), so
    8x8 digits stay visible. The PNG bytes depend only on the pixels (no timestamps).
    """
    from PIL import Image
    from torchvision.utils import make_grid

    from ddsm_core.fid import to_uint8

    images = images.detach().float().cpu().clamp(-1, 1)
    factor = max(1, -(-min_tile // images.shape[-1]))
    if factor > 1:
        images = images.repeat_interleave(factor, dim=-1).repeat_interleave(factor, dim=-2)
    grid = make_grid(images, nrow=nrow, padding=2, pad_value=1.0)  # padding white: 1.0 in [-1, 1]
    array = to_uint8(grid[None])[0].permute(1, 2, 0).numpy()  # the FID's rounding (half up)
    from ddsm_core.atomic import atomic_path

    gray = images.shape[1] == 1
    with atomic_path(path) as tmp:  # a failed or interrupted write leaves no half-made PNG
        Image.fromarray(array[..., 0] if gray else array, "L" if gray else "RGB").save(tmp, format="PNG")
    return Path(path)
