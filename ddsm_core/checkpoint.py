"""Checkpoints: safetensors weights, a JSON manifest with sha256 sums, atomic writes.

A checkpoint is a directory::

    manifest.json          format, step, model config, noise schedule, train config, files + sha256
    model.safetensors      the trained weights (float32)
    ema.safetensors        their exponential moving average (what sampling uses by default)
    training_state.pt      optimizer, LR scheduler and RNG state (torch.save; only resuming needs it)

A training run directory holds several of them, ``step-0000500/``, plus a ``LATEST`` file naming the
newest. Each checkpoint is written in a temporary sibling directory and renamed into place, then
``LATEST`` is replaced (``os.replace``, atomic), so a crash at any moment leaves the previous complete
checkpoint reachable and never a half-written one. :func:`load_checkpoint` accepts either a run
directory or a checkpoint directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from ddsm_core.atomic import TMP_PREFIX, write_text_atomic
from ddsm_core.config import UNetConfig
from ddsm_core.errors import CheckpointError, ConfigError

FORMAT = "ddsm-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "training_state.pt"
LATEST = "LATEST"
_STEP_PREFIX = "step-"
_TMP_PREFIX = TMP_PREFIX  # temporary checkpoint folders and files alike: one cleanup glob


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def step_dir_name(step: int) -> str:
    return f"{_STEP_PREFIX}{step:07d}"


def write_checkpoint(
    path: str | Path,
    *,
    step: int,
    model_config: UNetConfig,
    schedule: Mapping[str, Any],
    model_state: Mapping[str, Any],
    ema_state: Mapping[str, Any] | None = None,
    training_state: Mapping[str, Any] | None = None,
    train_config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write one checkpoint directory at ``path`` atomically (replacing an existing one).

    :param schedule: the noise schedule's ``to_dict()``.
    :param model_state, ema_state: state dicts of tensors (saved as float32-exact safetensors).
    :param training_state: anything ``torch.save`` can write with ``weights_only`` loading in mind
        (optimizer / scheduler state dicts, RNG byte tensors, ints).
    :return: ``path``.
    """
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{path.name}-", dir=path.parent))
    try:
        save_file(_contiguous(model_state), str(tmp / MODEL_FILE))
        files = [MODEL_FILE]
        if ema_state is not None:
            save_file(_contiguous(ema_state), str(tmp / EMA_FILE))
            files.append(EMA_FILE)
        if training_state is not None:
            torch.save(dict(training_state), tmp / STATE_FILE)
            files.append(STATE_FILE)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "step": int(step),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "torch": torch.__version__,
            "model_config": model_config.to_dict(),
            "schedule": dict(schedule),
            "train_config": dict(train_config) if train_config is not None else None,
            "files": {f: {"sha256": sha256_file(tmp / f), "bytes": (tmp / f).stat().st_size} for f in files},
            "weights": {"model": MODEL_FILE, "ema": EMA_FILE if ema_state is not None else None},
            "training_state": STATE_FILE if training_state is not None else None,
            **(dict(extra) if extra else {}),
        }
        _write_text(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        _fsync_dir(tmp)
        _ordinary_modes(tmp)
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def save_to_run(run_dir: str | Path, *, step: int, keep_last: int = 1, **kwargs: Any) -> Path:
    """Write ``run_dir/step-XXXXXXX`` (see :func:`write_checkpoint`), point ``LATEST`` at it, prune.

    :param keep_last: how many step checkpoints to keep (the newest ones; at least 1).
    """
    run_dir = Path(run_dir)
    ckpt = write_checkpoint(run_dir / step_dir_name(step), step=step, **kwargs)
    _write_text(run_dir / LATEST, ckpt.name + "\n")
    _fsync_dir(run_dir)
    for old in sorted(run_dir.glob(f"{_STEP_PREFIX}*"))[: -max(1, keep_last)]:
        if old.name != ckpt.name:
            shutil.rmtree(old, ignore_errors=True)
    return ckpt


def clean_stale_temporaries(run_dir: str | Path) -> None:
    """Remove leftovers of checkpoint writes that crashed (never a complete checkpoint)."""
    for tmp in Path(run_dir).glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory ``path`` means: itself if it has a manifest, else a run's latest.

    :raises CheckpointError: if there is none.
    """
    path = Path(path).expanduser()
    if (path / MANIFEST).is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} not found")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is not a directory")
    latest = path / LATEST
    if latest.is_file():
        target = member(path, latest.read_text().strip(), str(latest))
        if (target / MANIFEST).is_file():
            return target
        raise CheckpointError(f"{latest} names {target.name!r}, which has no {MANIFEST}")
    # A run that crashed between writing its first checkpoint and LATEST: take the newest complete one.
    steps = sorted(p for p in path.glob(f"{_STEP_PREFIX}*") if (p / MANIFEST).is_file() and inside(path, p))
    if steps:
        return steps[-1]
    raise CheckpointError(f"no checkpoint in {str(path)!r}: {MANIFEST} missing")


def find_resumable(run_dir: str | Path) -> Path | None:
    """The checkpoint a run in ``run_dir`` resumes from, or None for a fresh run."""
    try:
        return resolve_checkpoint(run_dir)
    except CheckpointError:
        if Path(run_dir).is_dir() and (Path(run_dir) / LATEST).is_file():
            raise
        return None


def read_manifest(path: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """The manifest of the checkpoint at ``path`` (a checkpoint or run directory).

    :param verify: check that every listed file exists and matches its sha256.
    :raises CheckpointError: naming the file that is missing, unreadable or corrupt.
    """
    ckpt = resolve_checkpoint(path)
    mpath = ckpt / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {mpath}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{mpath} is not a ddsm checkpoint manifest (format != {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise CheckpointError(f"{mpath} has version {manifest.get('version')!r}; this ddsm reads {VERSION}")
    for key in ("step", "model_config", "schedule", "files", "weights"):
        if key not in manifest:
            raise CheckpointError(f"{mpath} lacks {key!r}")
    files, weights = manifest["files"], manifest["weights"]
    if not isinstance(files, dict) or not isinstance(weights, dict) or not weights.get("model"):
        raise CheckpointError(f"{mpath}: 'files' and 'weights' must be objects naming the weight files")
    # every name the manifest gives stays inside the checkpoint folder (no ../, absolute path or link out)
    for name in [*files, *(v for v in weights.values() if v is not None)]:
        member(ckpt, name, str(mpath))
    if manifest.get("training_state") is not None:
        member(ckpt, manifest["training_state"], str(mpath))
    manifest["path"] = str(ckpt)
    if verify:
        for name, info in files.items():
            fpath = ckpt / name
            if not isinstance(info, dict):
                raise CheckpointError(f"{mpath}: the entry of {name!r} is not an object")
            if not fpath.is_file():
                raise CheckpointError(f"checkpoint file {fpath} is missing")
            digest = sha256_file(fpath)
            if digest != info.get("sha256"):
                raise CheckpointError(
                    f"checkpoint file {fpath} is corrupt: sha256 {digest[:12]}... does not match the "
                    f"manifest's {str(info.get('sha256'))[:12]}..."
                )
    return manifest


# Model config fields that change neither the weights' shapes nor what the network computes at sampling.
TRAINING_ONLY_FIELDS: tuple[str, ...] = ("dropout",)


_ADDED_FIELDS = ("null_label",)


def check_compatible(manifest: Mapping[str, Any], config: UNetConfig, what: str = "the preset") -> None:
    """Raise CheckpointError if the checkpoint's model config differs from ``config``, naming the fields.

    Training-only fields (dropout) are not compared: a recipe may override them.
    """
    # fields added after a checkpoint was written (null_label) take their defaults, as when loading it
    defaults = UNetConfig().to_dict()
    saved = {**{k: v for k, v in defaults.items() if k in _ADDED_FIELDS}, **manifest["model_config"]}
    wanted = config.to_dict()
    diff = [
        f"{k}: checkpoint {saved.get(k)!r} vs {wanted[k]!r}"
        for k in wanted
        if k not in TRAINING_ONLY_FIELDS and saved.get(k) != wanted[k]
    ]
    if diff:
        raise CheckpointError(
            f"checkpoint {manifest.get('path', '')} does not fit {what}: " + "; ".join(diff)
        )


def load_checkpoint(
    path: str | Path,
    use_ema: bool = True,
    map_location: str = "cpu",
    *,
    expected_config: UNetConfig | None = None,
    verify: bool = True,
):  # -> tuple[SlimmableUNet, NoiseSchedule, dict]
    """Load a supernet for sampling: ``(model in eval mode, noise schedule, manifest)``.

    :param path: a checkpoint directory or a training run directory (its ``LATEST`` checkpoint).
    :param use_ema: load the EMA weights (falls back to the raw weights when the checkpoint has none).
    :param expected_config: if given, the checkpoint's model config must equal it.
    :raises CheckpointError: missing / corrupt / incompatible checkpoint, one line naming the file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ddsm_core.schedules import NoiseSchedule
    from ddsm_core.unet import SlimmableUNet

    manifest = read_manifest(path, verify=verify)
    ckpt = Path(manifest["path"])
    if expected_config is not None:
        check_compatible(manifest, expected_config)
    try:
        config = UNetConfig.from_dict(manifest["model_config"])
        schedule = NoiseSchedule.from_dict(manifest["schedule"])
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{ckpt / MANIFEST}: invalid model config or schedule: {exc}") from exc
    weights = manifest["weights"]
    fname = weights["ema"] if use_ema and weights.get("ema") else weights["model"]
    try:
        state = load_file(str(ckpt / fname), device=map_location)
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"cannot read checkpoint file {ckpt / fname}: {exc}") from exc
    model = SlimmableUNet(config)
    load_state_into(model, state, ckpt / fname)
    model.to(map_location).eval()
    return model, schedule, manifest


def load_state_into(module: Any, state: Mapping[str, Any], source: str | Path) -> None:
    """``module.load_state_dict(state)`` with a one-line CheckpointError naming ``source`` on mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"shape of {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise CheckpointError(f"checkpoint file {source} does not fit the model: " + "; ".join(parts))
    module.load_state_dict(dict(state))


def load_training_state(ckpt: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """The optimizer / scheduler / RNG state saved with a checkpoint (for resuming)."""
    import torch

    manifest = read_manifest(ckpt, verify=False)
    name = manifest.get("training_state")
    if not name:
        raise CheckpointError(f"checkpoint {manifest['path']} has no training state; it cannot be resumed")
    fpath = Path(manifest["path"]) / name
    try:
        return torch.load(fpath, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch.load raises many types for a damaged file
        raise CheckpointError(f"cannot read checkpoint file {fpath}: {exc}") from exc


def copy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Copy the checkpoint ``src`` means (verified) to the directory ``dst``, atomically."""
    ckpt = Path(read_manifest(src)["path"])
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{dst.name}-", dir=dst.parent))
    try:
        for f in ckpt.iterdir():
            if f.is_file():
                if not inside(ckpt, f):  # a symlink out of the checkpoint: never copy what it points at
                    raise CheckpointError(f"{f} is a symlink out of checkpoint {ckpt}; it is not copied")
                shutil.copy2(f, tmp / f.name)
        _ordinary_modes(tmp)
        _swap_into_place(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


# ---- helpers -------------------------------------------------------------------------------------


def inside(folder: str | Path, path: str | Path) -> bool:
    """Whether ``path``, symlinks resolved, is ``folder`` or lies under it."""
    root, target = Path(folder).resolve(), Path(path).resolve()
    return target == root or target.is_relative_to(root)


def member(folder: Path, name: Any, source: str) -> Path:
    """``folder / name`` for a name read from ``source`` (a manifest, LATEST): refused with a
    CheckpointError if it is absolute, climbs out with ``..`` or leads out through a symlink."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise CheckpointError(f"{source} names {name!r:.80}, which is not a file name")
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or "\\" in name or PureWindowsPath(name).drive:
        raise CheckpointError(f"{source} names {name!r:.80}, outside its checkpoint folder")
    path = folder / name
    if not inside(folder, path):
        raise CheckpointError(f"{source} names {name!r:.80}, a symlink out of its checkpoint folder")
    return path


def _contiguous(state: Mapping[str, Any]) -> dict[str, Any]:
    # safetensors refuses views and shared storage; a detached contiguous clone of each is exact.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _write_text(path: Path, text: str) -> None:
    """Write a small file atomically: temp file in the same directory, fsync, os.replace."""
    write_text_atomic(path, text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _ordinary_modes(folder: Path) -> None:
    """mkdtemp/mkstemp make private (0700/0600) entries; a checkpoint is shared like any output file."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~mask)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        for f in path.iterdir() if path.is_dir() else ():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Rename the complete directory ``tmp`` to ``path``; an existing ``path`` is moved aside first."""
    if path.exists():
        old = path.with_name(f"{_TMP_PREFIX}old-{path.name}-{os.getpid()}")
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, path)
