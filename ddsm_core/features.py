"""Feature extractors for FID, by name, including "domain" extractors trained on the dataset itself.

Inception on 8x8 digits is meaningless (and its weights may be absent offline), so a small CNN
classifier trained on the digits training split gives "FID (domain)": its penultimate features play
Inception's pool3 role. Training is seeded and deterministic (a few seconds on one CPU core) and the
weights are cached as a safetensors file keyed by a hash of the classifier's config, so every process
(and every worker) uses the same extractor. Every FID carries the extractor's name, e.g.
``domain:digits-cnn-v1`` or ``inception-v3-pool3``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddsm_core.atomic import atomic_path
from ddsm_core.errors import ConfigError, choices_message
from ddsm_core.fid import (
    INCEPTION_NAME,
    FeatureExtractor,
    FeatureStats,
    InceptionExtractor,
    extract_features,
    quantize,
)

EXTRACTOR_SPECS = ("auto", "domain", "inception", INCEPTION_NAME, "domain:digits-cnn-v1")


@dataclass(frozen=True)
class DomainCNNConfig:
    """A small classifier on one dataset; its penultimate layer gives ``feature_dim`` features."""

    dataset: str = "digits"
    version: str = "v1"
    channels: int = 1
    image_size: int = 8
    num_classes: int = 10
    width: int = 32
    feature_dim: int = 64
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0

    @property
    def name(self) -> str:
        return f"domain:{self.dataset}-cnn-{self.version}"

    def key(self) -> str:
        """Content key of the trained weights: a hash of everything that determines them."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


DOMAIN_CONFIGS = {"digits": DomainCNNConfig()}


class DomainCNN(nn.Module):
    """conv-conv-pool-conv -> ``feature_dim`` (SiLU) -> classes. Input [N x C x S x S] in [-1, 1]."""

    def __init__(self, config: DomainCNNConfig) -> None:
        super().__init__()
        c, w = config.channels, config.width
        self.conv1 = nn.Conv2d(c, w, 3, padding=1)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * w, 2 * w, 3, padding=1)
        pooled = config.image_size // 2
        self.fc = nn.Linear(2 * w * pooled * pooled, config.feature_dim)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, x: Tensor) -> Tensor:
        """:param x: [N x C x S x S] in [-1, 1]. :return: [N x feature_dim] penultimate features."""
        h = F.silu(self.conv1(x))
        h = F.avg_pool2d(F.silu(self.conv2(h)), 2)
        h = F.silu(self.conv3(h))
        return F.silu(self.fc(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _seeded_init(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default Conv/Linear init, drawn from ``generator`` (never the global RNG)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            bound = 1 / math.sqrt(m.weight[0].numel())
            nn.init.uniform_(m.bias, -bound, bound, generator=generator)


def _empty_cnn(config: DomainCNNConfig) -> DomainCNN:
    """Uninitialised parameters (built on the meta device so the global RNG is not consumed)."""
    with torch.device("meta"):
        net = DomainCNN(config)
    return net.to_empty(device="cpu")


def _shift(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random shifts by up to one pixel (background -1 fills in): cheap, label-preserving."""
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    s = x.shape[-1]
    offset = torch.randint(0, 9, (x.shape[0],), generator=generator)
    out = torch.empty_like(x)
    for k in range(9):
        dy, dx = divmod(k, 3)
        chosen = offset == k
        out[chosen] = padded[chosen, :, dy : dy + s, dx : dx + s]
    return out


def train_domain_cnn(
    config: DomainCNNConfig, images: Tensor, labels: Tensor, test: tuple[Tensor, Tensor] | None = None
) -> tuple[DomainCNN, dict[str, float]]:
    """Train the classifier with Adam on (images in [-1, 1], labels); deterministic for a seed.

    Runs on one thread: float reductions split across threads change the weights' last bits.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(config, images, labels, test)
    finally:
        torch.set_num_threads(threads)


def _train(
    config: DomainCNNConfig, images: Tensor, labels: Tensor, test: tuple[Tensor, Tensor] | None
) -> tuple[DomainCNN, dict[str, float]]:
    g = torch.Generator().manual_seed(config.seed)
    net = _empty_cnn(config)
    _seeded_init(net, g)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    x = quantize(images) * 2 - 1  # the extractor sees 8-bit images: train on them too
    steps_per_epoch = math.ceil(len(x) / config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.epochs * steps_per_epoch)
    net.train()
    for _ in range(config.epochs):
        perm = torch.randperm(len(x), generator=g)
        for idx in perm.split(config.batch_size):
            loss = F.cross_entropy(net(_shift(x[idx], g)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    metrics = {"train_loss": float(loss.detach())}
    if test is not None:
        with torch.no_grad():
            pred = net(quantize(test[0]) * 2 - 1).argmax(1)
        metrics["test_accuracy"] = float((pred == test[1]).float().mean())
    return net, metrics


def default_cache_dir() -> Path:
    """``$DDSM_CACHE_DIR`` or ``~/.cache/ddsm``: where trained domain extractors are kept."""
    return Path(os.environ.get("DDSM_CACHE_DIR", Path.home() / ".cache" / "ddsm"))


class DomainExtractor:
    """A trained :class:`DomainCNN` used as a feature extractor (``name`` = ``domain:<dataset>-cnn-v1``)."""

    def __init__(
        self, net: DomainCNN, config: DomainCNNConfig, metrics: dict[str, Any] | None = None
    ) -> None:
        self.net = net.eval()
        self.config = config
        self.name = config.name
        self.dim = config.feature_dim
        self.metrics = dict(metrics or {})
        # content hash of the weights: stats record it, so extractors trained apart can be told apart
        blob = b"".join(v.detach().cpu().numpy().tobytes() for v in net.state_dict().values())
        self.fingerprint = hashlib.sha256(blob).hexdigest()[:16]

    def __call__(self, images: Tensor) -> Tensor:
        x = quantize(images) * 2 - 1
        if x.shape[1:] != (self.config.channels, self.config.image_size, self.config.image_size):
            raise ConfigError(
                f"{self.name} expects [N x {self.config.channels} x {self.config.image_size} x "
                f"{self.config.image_size}] images, got {list(images.shape)}"
            )
        with torch.no_grad():
            return self.net.features(x.to(next(self.net.parameters()).device))

    @classmethod
    def load_or_train(
        cls, config: DomainCNNConfig, cache_dir: str | os.PathLike[str] | None = None, progress: bool = False
    ) -> DomainExtractor:
        """Load the cached weights for ``config`` or train them (and cache them)."""
        from safetensors.torch import load_file, save_file

        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        path = folder / "features" / f"{config.dataset}-cnn-{config.version}-{config.key()}.safetensors"
        net = _empty_cnn(config)
        if path.is_file():
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                metrics = json.loads(f.metadata().get("metrics", "{}"))
            net.load_state_dict(load_file(str(path)))
            return cls(net, config, metrics)
        if progress:
            print(f"training the {config.name} feature extractor (cached at {path})")
        net, metrics = train_domain_cnn(
            config, *_dataset_tensors(config, "train"), _dataset_tensors(config, "test")
        )
        meta = {"name": config.name, "config": json.dumps(asdict(config)), "metrics": json.dumps(metrics)}
        with atomic_path(path) as tmp:  # concurrent workers may race to train the same extractor
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp), metadata=meta)
        return cls(net, config, metrics)


def _dataset_tensors(config: DomainCNNConfig, split: str) -> tuple[Tensor, Tensor]:
    from ddsm_core.data import load_dataset

    ds = load_dataset(config.dataset, split=split)  # type: ignore[arg-type]
    return ds.images, ds.labels  # type: ignore[union-attr]


def get_extractor(
    spec: str,
    *,
    dataset: str | None = None,
    device: str = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
) -> FeatureExtractor:
    """An extractor by name: ``inception`` (= ``inception-v3-pool3``), ``domain`` (the dataset's own,
    e.g. ``domain:digits-cnn-v1``) or ``auto`` (domain when the dataset has one, else Inception)."""
    if spec == "auto":
        spec = "domain" if dataset in DOMAIN_CONFIGS else "inception"
    if spec in ("inception", INCEPTION_NAME):
        return InceptionExtractor(device)
    if spec == "domain":
        if dataset not in DOMAIN_CONFIGS:
            raise ConfigError(
                f"no domain feature extractor for dataset {dataset!r}; "
                + choices_message("dataset", dataset, sorted(DOMAIN_CONFIGS))
            )
        spec = DOMAIN_CONFIGS[dataset].name
    for config in DOMAIN_CONFIGS.values():
        if spec == config.name:
            ext = DomainExtractor.load_or_train(config, cache_dir)
            ext.net.to(device)
            return ext
    raise ConfigError(choices_message("feature extractor", spec, EXTRACTOR_SPECS))


load_extractor = get_extractor


def reference_stats(
    dataset: str,
    extractor: str | FeatureExtractor = "auto",
    *,
    split: str = "train",
    device: str = "cpu",
    batch_size: int = 250,
    cache_dir: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    floor: bool = True,
    floor_seed: int = 0,
) -> FeatureStats:
    """Reference statistics of a dataset split (default: the training images, as in the paper).

    :param image_size, channels: how a folder dataset is read (required size; channels default 3);
        for the bundled datasets a size other than their own resizes them.
    :param floor: also record the real-data floor (:mod:`ddsm_core.floor`): the FID of the held-out
        split (``test`` when ``split`` is ``train`` and the dataset has one) against these statistics.
    """
    from ddsm_core.data import BUILTIN_DATASETS, load_dataset
    from ddsm_core.floor import compute_floors, with_floors

    opts = {"image_size": image_size, "channels": channels}
    # the dataset is opened before the extractor is built, so a bad dataset is the first word
    ds = load_dataset(dataset, split=split, **opts)  # type: ignore[arg-type]
    ext = (
        get_extractor(extractor, dataset=dataset, device=device, cache_dir=cache_dir)
        if isinstance(extractor, str)
        else extractor
    )
    feats = extract_features(ext, _batches(ds, batch_size))
    meta: dict[str, Any] = {"dataset": str(dataset), "split": split}
    if image_size is not None:
        meta["image_size"] = image_size
    if getattr(ext, "fingerprint", None):
        meta["extractor_weights"] = ext.fingerprint
    stats = FeatureStats.from_features(feats, ext.name, **meta)
    if floor and split == "train" and str(dataset) in BUILTIN_DATASETS:
        held = load_dataset(dataset, split="test", **opts)  # type: ignore[arg-type]
        held_feats = extract_features(ext, _batches(held, batch_size))
        stats = with_floors(stats, compute_floors(held_feats, stats, "test", seed=floor_seed))
    return stats


def _batches(ds: Any, batch_size: int) -> Any:
    return (
        torch.stack([ds[i][0] for i in range(start, min(start + batch_size, len(ds)))])
        for start in range(0, len(ds), batch_size)
    )
