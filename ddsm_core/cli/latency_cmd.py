"""``ddsm latency``: measure a supernet's latency table on this machine (seconds per call and step)."""

from __future__ import annotations

from pathlib import Path

import typer


def latency(
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Checkpoint or training run directory."
    ),
    preset: str | None = typer.Option(
        None, "--preset", help="Measure a preset's untrained network instead (digits, cifar10, celeba64)."
    ),
    aligned: int | None = typer.Option(
        None, "--aligned", help="With --preset: keep only the widths whose channels are multiples of this."
    ),
    batch_sizes: str = typer.Option("1,64", "--batch-sizes", help="Batch sizes to measure, e.g. 1,64,256."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    repeats: int = typer.Option(7, "--repeats", help="Timed calls per width and batch size (median)."),
    warmup: int = typer.Option(2, "--warmup", help="Untimed calls first."),
    channels_last: bool | None = typer.Option(
        None, "--channels-last/--no-channels-last", help="NHWC weights [the device's default]."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Write the table as JSON here [with --checkpoint: into the checkpoint folder, where "
        "`ddsm search` finds it].",
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="Torch CPU threads (default 1 or $DDSM_TORCH_THREADS; 0 = all cores)."
    ),
) -> None:
    """Seconds per network call per width and batch size, and each sampler's own time per step."""
    from ddsm_core.threads import set_threads

    set_threads(threads)
    import torch

    from ddsm_core.device import pick_device
    from ddsm_core.errors import ConfigError
    from ddsm_core.inference import default_channels_last, prepare_for_inference
    from ddsm_core.latency import DTYPES, measure_latency

    if (checkpoint is None) == (preset is None):
        raise ConfigError("give exactly one of --checkpoint DIR or --preset NAME")
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    sizes = _batch_sizes(batch_sizes)
    from ddsm_core.cli.checks import check_checkpoint, check_min, check_writable_parent

    check_min("--repeats", repeats, 1)
    check_min("--warmup", warmup, 0)
    if checkpoint is not None:
        ckpt = check_checkpoint(checkpoint)
        if out is None:  # the table goes into the checkpoint folder: writable, checked before measuring
            check_writable_parent(ckpt / "latency.json", "--checkpoint")
    if out is not None:
        check_writable_parent(out, "--out")
    dev = pick_device(device)
    model, schedule, info = _model(checkpoint, preset, aligned, dev)
    model = model.to(dtype=getattr(torch, dtype))
    channels_last = default_channels_last(model) if channels_last is None else channels_last
    model = prepare_for_inference(model, channels_last=channels_last)
    table = measure_latency(
        model, sizes, schedule=schedule, repeats=repeats, warmup=warmup, device=dev, dtype=dtype,
        model_info={**info, "channels_last": channels_last},
    )  # fmt: skip
    typer.echo(table.describe())
    if out is None and checkpoint is not None:
        from ddsm_core.latency import table_filename

        out = Path(info["checkpoint"]) / table_filename(table.device, dtype)
    if out is not None:
        typer.echo(f"wrote {table.save(out)}")


def _batch_sizes(text: str) -> list[int]:
    from ddsm_core.errors import ConfigError

    try:
        sizes = [int(p) for p in text.replace(" ", ",").split(",") if p]
    except ValueError:
        raise ConfigError(f"--batch-sizes takes integers like 1,64,256, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"--batch-sizes must be positive integers, got {text!r}")
    return sizes


def _model(checkpoint: Path | None, preset: str | None, aligned: int | None, dev):  # noqa: ANN202
    from ddsm_core.config import UNetConfig
    from ddsm_core.errors import ConfigError
    from ddsm_core.schedules import NoiseSchedule
    from ddsm_core.unet import SlimmableUNet

    if checkpoint is not None:
        from ddsm_core.checkpoint import MANIFEST, load_checkpoint, sha256_file

        if aligned is not None:
            raise ConfigError("--aligned goes with --preset; a checkpoint has its own width set")
        model, schedule, manifest = load_checkpoint(checkpoint, map_location=str(dev))
        # the manifest's sha256 names the checkpoint as the service does (its artifact key)
        sha = sha256_file(Path(manifest["path"]) / MANIFEST)
        return (
            model,
            schedule,
            {"checkpoint": manifest["path"], "step": manifest.get("step"), "manifest_sha256": sha},
        )
    config = UNetConfig.from_preset(str(preset))
    config = config if aligned is None else config.hardware_friendly(aligned)
    return SlimmableUNet(config).to(dev).eval(), NoiseSchedule.linear(), {"preset": preset}


def register(app: typer.Typer) -> None:
    app.command("latency")(latency)
