"""``ddsm train``: train (or resume) a slimmable supernet with the sandwich rule.

On a GPU box, one process per GPU through torchrun (the same command; DDP over NCCL, bf16 autocast)::

    torchrun --standalone --nproc-per-node 8 --no-python \
        ddsm train --preset cifar10 --out runs/cifar10 --data-root data --download --resume

``--batch-size`` is the global batch (split across the processes); rank 0 writes the run directory.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from ddsm_core.trainer import TrainResult


def main_train(
    *,
    preset: str,
    out_dir: str | Path,
    overrides: Mapping[str, Any],
    resume: bool = False,
    class_cond: bool = False,
    device: str | None = None,
    data_root: str | Path | None = None,
    download: bool = False,
    verify: bool = True,
    export: str | Path | None = None,
    progress: bool = True,
    echo: Callable[[str], Any] = print,
    image_size: int | None = None,
) -> TrainResult:
    """What ``ddsm train`` does: the recipe of the preset (or of the run being resumed) plus overrides.

    :param image_size: the model's resolution instead of the preset's (the dataset is read at it).
    """
    import dataclasses

    from ddsm_core import checkpoint as ckpt_io
    from ddsm_core.checks import spec_errors_as_options
    from ddsm_core.cli.checks import check_writable_parent
    from ddsm_core.data import check_dataset
    from ddsm_core.recipes import resolve_recipe
    from ddsm_core.trainer import train

    out_dir = Path(out_dir)
    existing = ckpt_io.find_resumable(out_dir) if resume and out_dir.exists() else None
    saved = ckpt_io.read_manifest(existing, verify=False).get("train_config") if existing else None
    # "TrainConfig.steps must be >= 1" reads "--steps must be >= 1" to whoever typed --steps 0
    options = {f"TrainConfig.{name}": "--" + name.replace("_", "-") for name in overrides}
    with spec_errors_as_options(options):
        model_config, config = resolve_recipe(preset, overrides, class_cond=class_cond, saved=saved)
    # before the plan is printed or the run folder made (the trainer makes it after loading the data)
    check_dataset(config.dataset, image_size if image_size is not None else model_config.image_size)
    check_writable_parent(out_dir, "--out")
    if export is not None:
        check_writable_parent(Path(export), "--export")
    if image_size is not None:  # attention stays on the same levels (resolutions are in pixels)
        levels = [model_config.resolutions.index(r) for r in model_config.attention_resolutions]
        attention = tuple(image_size // 2**k for k in levels)
        model_config = dataclasses.replace(
            model_config, image_size=image_size, attention_resolutions=attention
        )
    is_main = int(os.environ.get("RANK", "0")) == 0
    if is_main:
        where = f"resuming {existing}" if existing is not None else f"new run in {out_dir}"
        echo(
            f"{preset}: {config.dataset}, {config.steps} steps, batch {config.batch_size}, "
            f"lr {config.lr:g}; {where}"
        )
    result = train(
        model_config, config, out_dir, resume=resume, device=device, data_root=data_root,
        download=download, verify=verify, progress=progress,
    )  # fmt: skip
    if is_main and not result.interrupted:
        echo(f"done: step {result.step} in {result.wall_s:.1f} s; checkpoint {result.checkpoint}")
        if result.eval is not None:
            echo("per-width eval loss (EMA weights):\n" + result.eval.to_markdown())
        if export is not None and result.checkpoint is not None:
            echo(f"exported to {ckpt_io.copy_checkpoint(result.checkpoint, export)}")
    return result


def train(
    out: Path = typer.Option(..., "--out", help="Run directory (checkpoints, samples, logs)."),
    preset: str = typer.Option("digits", "--preset", help="Model preset and its training recipe."),
    dataset: str | None = typer.Option(
        None, "--dataset", help="digits, cifar10 or a folder of images [default: the preset's]."
    ),
    image_size: int | None = typer.Option(
        None, "--image-size", help="Model resolution; the dataset is read at it [preset's]."
    ),
    steps: int | None = typer.Option(None, "--steps", help="Total optimizer steps [preset's]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out if there is one."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Global batch size [preset's]."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate [preset's]."),
    warmup_steps: int | None = typer.Option(None, "--warmup-steps", help="LR warm-up steps [preset's]."),
    lr_schedule: str | None = typer.Option(
        None, "--lr-schedule", help="After warm-up: constant or cosine (decays to --min-lr-ratio) [preset's]."
    ),
    min_lr_ratio: float | None = typer.Option(
        None, "--min-lr-ratio", help="With cosine: final LR as a fraction of --lr [preset's]."
    ),
    ema_decay: float | None = typer.Option(None, "--ema-decay", help="EMA decay [preset's]."),
    n_middle: int | None = typer.Option(None, "--n-middle", help="Random middle widths per step [2]."),
    distill: bool | None = typer.Option(
        None, "--distill/--no-distill", help="In-place distillation of sub-widths [off]."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed of every random draw [0]."),
    sample_every: int | None = typer.Option(None, "--sample-every", help="Sample grids every N steps."),
    eval_every: int | None = typer.Option(None, "--eval-every", help="Per-width eval loss every N steps."),
    checkpoint_every: int | None = typer.Option(None, "--checkpoint-every", help="Checkpoint every N steps."),
    eval_images: int | None = typer.Option(None, "--eval-images", help="Images for the eval loss (0 = off)."),
    sample_n: int | None = typer.Option(None, "--sample-n", help="Samples per width in grids (0 = off)."),
    sample_steps: int | None = typer.Option(None, "--sample-steps", help="DDIM steps for sample grids."),
    log_every: int | None = typer.Option(None, "--log-every", help="Log losses every N steps."),
    class_cond: bool = typer.Option(False, "--class-cond", help="Class-conditional model (dataset labels)."),
    label_dropout: float | None = typer.Option(
        None,
        "--label-dropout",
        help="With --class-cond: fraction of labels replaced by the null label, "
        "for classifier-free guidance (ddsm sample --guidance) [0 = off; 0.1 is usual].",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    data_root: Path | None = typer.Option(None, "--data-root", help="Where CIFAR-10 is (or goes)."),
    download: bool = typer.Option(False, "--download", help="Download CIFAR-10 if missing (internet)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check CIFAR-10 files' md5 sums."),
    num_workers: int | None = typer.Option(None, "--num-workers", help="DataLoader worker processes [0]."),
    export: Path | None = typer.Option(
        None, "--export", help="Also copy the final checkpoint to this directory."
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="Torch CPU threads (default 1 or $DDSM_TORCH_THREADS; 0 = all cores)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train a supernet: every step trains the largest, the smallest and random middle widths."""
    from ddsm_core.threads import set_threads

    set_threads(threads)

    overrides: dict[str, Any] = {
        "dataset": dataset,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "warmup_steps": warmup_steps,
        "lr_schedule": lr_schedule,
        "min_lr_ratio": min_lr_ratio,
        "ema_decay": ema_decay,
        "n_middle": n_middle,
        "distill": distill,
        "label_dropout": label_dropout,
        "seed": seed,
        "sample_every": sample_every,
        "eval_every": eval_every,
        "checkpoint_every": checkpoint_every,
        "eval_images": eval_images,
        "sample_n": sample_n,
        "sample_steps": sample_steps,
        "log_every": log_every,
        "num_workers": num_workers,
    }
    result = main_train(
        preset=preset,
        out_dir=out,
        overrides={k: v for k, v in overrides.items() if v is not None},
        resume=resume,
        class_cond=class_cond,
        device=device,
        data_root=data_root,
        download=download,
        verify=verify,
        export=export,
        progress=progress,
        echo=typer.echo,
        image_size=image_size,
    )
    if result.interrupted:
        typer.echo(
            f"stopped at step {result.step}; checkpoint {result.checkpoint}; continue with the same "
            "command and --resume",
            err=True,
        )
        # SystemExit, not typer.Exit: with standalone_mode=False click returns typer.Exit's code instead of
        # raising it, and run_app would report success.
        raise SystemExit(128 + (result.signal or signal.SIGINT))


def register(app: typer.Typer) -> None:
    app.command("train")(train)
