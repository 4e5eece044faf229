"""Frechet Inception Distance, numerically identical to pytorch-fid, plus reference statistics.

* :func:`frechet_distance` is pytorch-fid's ``calculate_frechet_distance`` (same algorithm, same
  numbers) but raises :class:`FIDError` instead of asserting or printing.
* :class:`FeatureStats` is pytorch-fid's ``.npz`` (``mu``, ``sigma``) with extra keys naming the
  extractor and feature dimension, so stats of the wrong extractor are refused before any sampling.
  A plain pytorch-fid ``.npz`` (no metadata) loads as Inception pool3 stats when it is 2048-d.
* :class:`InceptionExtractor` runs ``pytorch_fid.inception.InceptionV3`` (2048-d pool3) with weights
  from the torch hub cache. On first use :func:`ensure_inception_weights` downloads them there (with a
  progress bar and a sha256 check: the ``6726825d`` in the file name is the prefix of its sha256);
  offline it raises :class:`InceptionWeightsMissing` naming the exact file and folder.

Images enter every extractor as generated samples in [-1, 1] and are first quantised to 8 bits exactly
as ``torchvision.utils.save_image`` writes a PNG, so FID from tensors equals pytorch-fid's FID on the
saved PNG files.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from scipy import linalg

from ddsm_core.atomic import atomic_path
from ddsm_core.errors import DDSMError, StatsError

if TYPE_CHECKING:
    import torch

INCEPTION_NAME = "inception-v3-pool3"
INCEPTION_DIM = 2048
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
"""torch hub's naming convention: the hex after the last '-' is a prefix of the file's sha256."""
FID_WEIGHTS_URL_ENV = "DDSM_FID_WEIGHTS_URL"
"""Overrides :data:`FID_WEIGHTS_URL` (a mirror, or a local server in the tests)."""


class FIDError(DDSMError):
    """The Frechet distance cannot be computed (mismatched shapes, complex square root)."""


class InceptionWeightsMissing(DDSMError):
    """pytorch-fid's Inception weights are not in the torch hub cache and could not be downloaded."""


# ------------------------------------------------------------------------------ Frechet distance
def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """d^2 = ||mu1 - mu2||^2 + Tr(C1 + C2 - 2 sqrt(C1 C2)), pytorch-fid's stable version.

    :raises FIDError: shapes differ, or sqrt(C1 C2) has a significant imaginary part.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise FIDError(f"feature statistics differ in shape: mean {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():  # product almost singular: regularise as pytorch-fid does
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise FIDError(f"imaginary component {np.max(np.abs(covmean.imag))} in sqrt(C1 C2)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """scipy's sqrtm as pytorch-fid calls it (``disp=False``, deprecated in SciPy 1.17)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return linalg.sqrtm(a, disp=False)[0]
        except TypeError:  # SciPy >= 1.18 dropped ``disp``; the result is the same
            return linalg.sqrtm(a)


# ------------------------------------------------------------------------------ statistics
@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance of features, labelled with the extractor that produced them."""

    mu: np.ndarray
    sigma: np.ndarray
    extractor: str
    n: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    @classmethod
    def from_features(cls, features: np.ndarray, extractor: str, **meta: Any) -> FeatureStats:
        """pytorch-fid's statistics: mean over samples, ``np.cov(rowvar=False)`` (float64)."""
        act = np.asarray(features, dtype=np.float64)
        if act.ndim != 2 or act.shape[0] < 2:
            raise StatsError(f"need an [N x D] feature array with N >= 2, got shape {act.shape}")
        return cls(np.mean(act, axis=0), np.cov(act, rowvar=False), extractor, int(act.shape[0]), meta)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write pytorch-fid's ``.npz`` (``mu``, ``sigma``) plus ``extractor``, ``dim``, ``n``, ``meta``."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(path.suffix + ".npz")  # np.savez would append it anyway
        with atomic_path(path) as tmp:  # renamed into place: never half-written
            np.savez_compressed(
                tmp,
                mu=self.mu,
                sigma=self.sigma,
                extractor=np.array(self.extractor),
                dim=np.array(self.dim),
                n=np.array(self.n),
                meta=np.array(json.dumps(self.meta)),
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureStats:
        path = Path(path)
        if not path.is_file():
            raise StatsError(
                f"reference statistics {str(path)!r} not found (make them with `ddsm ref-stats`)"
            )
        with open(path, "rb") as fh:
            if fh.read(4) != b"PK\x03\x04":  # else numpy reads any other bytes as a pickle
                raise StatsError(
                    f"{str(path)!r} is not an .npz file of reference statistics (make them with "
                    "`ddsm ref-stats`)"
                )
        try:
            with np.load(path, allow_pickle=False) as f:
                mu, sigma = f["mu"][:].astype(np.float64), f["sigma"][:].astype(np.float64)
                extractor = str(f["extractor"]) if "extractor" in f else None
                n = int(f["n"]) if "n" in f else 0
                meta = json.loads(str(f["meta"])) if "meta" in f else {}
                dim = int(f["dim"]) if "dim" in f else int(mu.shape[0])
        except (OSError, KeyError, ValueError) as exc:
            raise StatsError(f"cannot read reference statistics {str(path)!r}: {exc}") from exc
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]) or dim != mu.shape[0]:
            raise StatsError(
                f"{str(path)!r}: mu {mu.shape} and sigma {sigma.shape} do not form D-dim statistics"
            )
        if extractor is None:
            if mu.shape[0] != INCEPTION_DIM:
                raise StatsError(
                    f"{str(path)!r} has no extractor label and {mu.shape[0]}-d features; only 2048-d "
                    "pytorch-fid stats are accepted unlabelled (recompute with `ddsm ref-stats`)"
                )
            extractor = INCEPTION_NAME  # a plain pytorch-fid file
        return cls(mu, sigma, extractor, n, meta)

    def check_compatible(self, extractor_name: str, dim: int) -> None:
        """Raise :class:`StatsError` unless these stats come from this extractor and dimension."""
        if self.extractor != extractor_name or self.dim != dim:
            raise StatsError(
                f"reference statistics were computed with {self.extractor!r} ({self.dim}-d features) but "
                f"the evaluation uses {extractor_name!r} ({dim}-d); compute matching ones with "
                f"`ddsm ref-stats --extractor {extractor_name}`"
            )

    def fid(self, other: FeatureStats) -> float:
        other.check_compatible(self.extractor, self.dim)
        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma)


# ------------------------------------------------------------------------------ extractors
class FeatureExtractor(Protocol):
    """Maps a batch of images in [-1, 1] to features.

    ``name`` labels every FID it produces; ``dim`` is the feature dimension.
    """

    name: str
    dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """:param images: an [N x C x H x W] tensor in [-1, 1]. :return: an [N x dim] tensor."""
        ...


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> uint8 (same shape), rounding half up exactly as ``save_image`` writes a PNG.

    The one rounding rule of the project: FID's :func:`quantize` and every image writer (PNG grids,
    ``ddsm sample --npz / --png-dir``) use it, so FID from tensors equals FID of the written files.
    """
    import torch

    return ((images.float() + 1.0) / 2.0).mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


def quantize(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> [0, 1] floats on the 8-bit grid, exactly as ``save_image`` writes a PNG."""
    return to_uint8(images).float() / 255.0


def extract_features(
    extractor: FeatureExtractor, images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 50
) -> np.ndarray:
    """Features of all images as a float64 [N x D] array, computed ``batch_size`` at a time."""
    import torch

    batches = images.split(batch_size) if isinstance(images, torch.Tensor) else images
    out = []
    with torch.no_grad():
        for batch in batches:
            out.append(extractor(batch).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, extractor.dim))


def inception_weights_path() -> Path:
    """Where torch hub (and so pytorch-fid) looks for the FID Inception weights."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE


def ensure_inception_weights(
    url: str | None = None,
    *,
    sha256_prefix: str = FID_WEIGHTS_SHA256_PREFIX,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """The FID Inception weights' path in the torch hub cache, downloaded there first if absent.

    The download goes to a temporary file next to the target and is renamed into place only once its
    sha256 starts with ``sha256_prefix`` (:data:`FID_WEIGHTS_SHA256_PREFIX`), so a cut or corrupt
    download never lands.

    :param url: where to fetch them; default ``$DDSM_FID_WEIGHTS_URL``, else :data:`FID_WEIGHTS_URL`.
    :raises InceptionWeightsMissing: the download failed (offline) or its checksum is wrong.
    """
    import hashlib
    import urllib.error
    import urllib.request

    path = inception_weights_path()
    if path.is_file():
        return path
    url = url or os.environ.get(FID_WEIGHTS_URL_ENV) or FID_WEIGHTS_URL
    digest = hashlib.sha256()
    with atomic_path(path) as tmp:  # an exception below removes the temporary file
        try:
            with urllib.request.urlopen(url, timeout=timeout) as reply, open(tmp, "wb") as f:
                total = int(reply.headers.get("Content-Length") or 0) or None
                bar = _download_bar(total, progress)
                while chunk := reply.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
                bar.close()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise InceptionWeightsMissing(
                f"FID Inception weights not found and their download from {url} failed ({reason}): put "
                f"{FID_WEIGHTS_FILE} at {path} (the torch hub cache, $TORCH_HOME/hub/checkpoints), "
                "or use a domain extractor"
            ) from None
        if not digest.hexdigest().startswith(sha256_prefix):
            raise InceptionWeightsMissing(
                f"the file downloaded from {url} has sha256 {digest.hexdigest()[:16]}..., not "
                f"{sha256_prefix}...: refused (a wrong or corrupt file); put {FID_WEIGHTS_FILE} "
                f"at {path} yourself or use a domain extractor"
            )
    return path


def _download_bar(total: int | None, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=f"downloading {FID_WEIGHTS_FILE}", unit="B", unit_scale=True,
        unit_divisor=1024, disable=not enabled, leave=False,
    )  # fmt: skip


class InceptionExtractor:
    """pytorch-fid's InceptionV3, 2048-d pool3 features; images resized to 299 inside the network."""

    name = INCEPTION_NAME
    dim = INCEPTION_DIM

    def __init__(self, device: str = "cpu", *, download: bool = True) -> None:
        path = inception_weights_path()
        if download:
            ensure_inception_weights()
        elif not path.is_file():
            raise InceptionWeightsMissing(
                f"FID Inception weights not found: put {FID_WEIGHTS_FILE} (from {FID_WEIGHTS_URL}) at "
                f"{path} (the torch hub cache, $TORCH_HOME/hub/checkpoints), or use a domain extractor"
            )
        from pytorch_fid.inception import InceptionV3

        self.device = device
        self.model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[INCEPTION_DIM]]).to(device).eval()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = quantize(images).to(self.device)
        if x.shape[1] == 1:  # grayscale PNGs are read as RGB by pytorch-fid (PIL convert)
            x = x.expand(-1, 3, -1, -1)
        pred = self.model(x)[0]
        if pred.shape[2] != 1 or pred.shape[3] != 1:
            import torch.nn.functional as F

            pred = F.adaptive_avg_pool2d(pred, output_size=(1, 1))
        return pred.flatten(1)
