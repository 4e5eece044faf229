"""Checks every command runs on its inputs before it writes, trains or starts anything (torch-free).

Shared by the ``ddsm`` commands (:mod:`ddsm_core.cli`) and the demo (``api.demo``, which may not import
``ddsm_core.cli``), so a mistake reads the same everywhere. A failed check raises a
:class:`~ddsm_core.errors.DDSMError` naming the option and the real cause; ``run_app`` prints it as one
line with exit status 2. :func:`new_output` keeps a failed command from leaving an empty or half-made
output folder behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ddsm_core.errors import ConfigError


def check_min(option: str, value: int | float | None, low: int | float) -> None:
    """``--images 0`` and the like: a count below its minimum."""
    if value is not None and value < low:
        raise ConfigError(f"{option} must be >= {low}, got {value}")


def check_steps(option: str, steps: int | None) -> None:
    """Sampler steps within the bounds the REST API enforces (one source: ``spec.LIMITS``)."""
    from ddsm_core.spec import LIMITS

    low, high = LIMITS["steps"]
    if steps is not None and ((low is not None and steps < low) or (high is not None and steps > high)):
        raise ConfigError(f"{option} must be in [{low}, {high}], got {steps}")


def check_checkpoint(path: Path) -> Path:
    """A checkpoint (or training run) folder that exists and has a readable manifest; returns the
    checkpoint folder itself."""
    from ddsm_core.checkpoint import read_manifest, resolve_checkpoint

    ckpt = resolve_checkpoint(path)  # its messages name the path: "checkpoint '/x' not found"
    read_manifest(ckpt, verify=False)
    return ckpt


def check_file(path: Path | None, option: str, what: str) -> None:
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"{option}: {what} {str(path)!r} not found")


def check_suffix(path: Path | None, option: str, suffix: str, what: str) -> None:
    """An output named for what is written into it: ``--out x.txt`` would get a PNG under a text name."""
    if path is not None and Path(path).suffix.lower() != suffix:
        raise ConfigError(f"{option}: {str(path)!r} must end in {suffix} (it is written as {what})")


def check_writable_parent(path: Path, option: str) -> None:
    """The output's parent is (or can become) a folder: not a file in the way."""
    for parent in Path(path).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{option}: {str(parent)!r} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise ConfigError(f"{option}: cannot write under {str(parent)!r} (permission denied)")
            return


@contextlib.contextmanager
def new_output(folder: Path) -> Iterator[Path]:
    """Yield ``folder``; if it did not exist before and the body fails, remove what it left there.

    A folder that existed (a search being resumed, a run being continued) is never removed.
    """
    folder = Path(folder)
    existed = folder.exists()
    try:
        yield folder
    except BaseException:
        if not existed and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
        raise


# The search settings' names (ddsm_core.spec, REST field names) as `ddsm search` / `ddsm demo` spell them.
SPEC_OPTIONS = {
    "n_images": "--images",
    "final_images": "--final-images",
    "class_label": "--class",
    "mutation_rate": "--mutation-rate",
    "eval_seed": "--eval-seed",
    "final_seed": "--final-seed",
    "batch_size": "--batch-size",
    "population": "--population",
    "generations": "--generations",
    "rungs": "--rungs",
    "promote": "--promote",
    "rung_metric": "--rung-metric",
    "weight": "--weight",
    "pick_rule": "--pick-rule",
}
_LEADING_ONLY = {"steps": "--steps", "seed": "--seed", "guidance": "--guidance", "sampler": "--sampler",
                 "tolerance": "--tolerance"}  # fmt: skip
"""Plain words elsewhere in a message ("image i uses seed ...", the pick rule "tolerance"): renamed
only where they lead it."""


@contextlib.contextmanager
def spec_errors_as_options(options: dict[str, str] | None = None) -> Iterator[None]:
    """A ConfigError of the search settings names the command's options: ``n_images must be in [2, ...]``
    reads ``--images must be in [2, ...]`` to whoever typed ``--images 0``.

    :param options: names to rename instead of the search settings' (``SPEC_OPTIONS``, and the
        ``_LEADING_ONLY`` words where they lead a message), e.g. ``{"TrainConfig.steps": "--steps"}``.
    """
    import re

    names = SPEC_OPTIONS if options is None else options
    try:
        yield
    except ConfigError as exc:
        text = str(exc)
        first = text.split(" ", 1)[0]
        if options is None and first in _LEADING_ONLY:
            text = _LEADING_ONLY[first] + text[len(first) :]
        if names:  # an empty alternation would match everywhere
            pattern = r"(?<![\w-])(" + "|".join(map(re.escape, names)) + r")\b"
            text = re.sub(pattern, lambda m: names[m.group(1)], text)
        if text == str(exc):
            raise
        raise ConfigError(text) from None
