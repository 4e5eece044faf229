"""``ddsm sample``: images from a trained supernet with a (step-aware) width strategy.

Image ``i`` is drawn from seed ``--seed + i`` alone (initial noise, per-step noise and, for a
class-conditional model without ``--class``, its label ``(seed + i) % classes``), so the same command
writes byte-identical files, and a different ``--batch-size`` gives the same images.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ddsm_core.spec import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLER_HELP


def sample(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Checkpoint or training run directory."),
    sampler: str | None = typer.Option(
        None, "--sampler", help=f"{SAMPLER_HELP}. Default: the strategy file's, else {DEFAULT_SAMPLER}."
    ),
    steps: int | None = typer.Option(
        None, "--steps", help=f"Sampler steps. Default: the strategy file's, else {DEFAULT_STEPS}."
    ),
    strategy: str = typer.Option(
        "uniform:8/8",
        "--strategy",
        help="uniform:<width>, piecewise:<w1>,<w2>,..., a strategy JSON (a report's pick.json) or a "
        "report's results.json (its pick).",
    ),
    n: int = typer.Option(64, "--n", help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="Image i uses seed + i."),
    out: Path = typer.Option(Path("samples.png"), "--out", help="Grid PNG to write."),
    npz: Path | None = typer.Option(
        None, "--npz", help="Also write the images as uint8 NHWC arr_0 in an .npz."
    ),
    png_dir: Path | None = typer.Option(None, "--png-dir", help="Also write each image as a PNG here."),
    label: str | None = typer.Option(
        None,
        "--class",
        help="Class-conditional models: a class label for every image, or 'random' "
        "(the default: image i gets (seed + i) % classes).",
    ),
    guidance: float | None = typer.Option(
        None,
        "--guidance",
        help="Classifier-free guidance weight (1 = conditional model, 0 = "
        "unconditional; needs a model trained with --label-dropout). Twice the network passes.",
    ),
    eta: float | None = typer.Option(None, "--eta", help="DDIM eta (ddim only) [0]."),
    batch_size: int = typer.Option(256, "--batch-size", help="Images per batch (does not change them)."),
    raw: bool = typer.Option(False, "--raw", help="Use the raw weights instead of the EMA."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    threads: int | None = typer.Option(
        None, "--threads", help="Torch CPU threads (default 1 or $DDSM_TORCH_THREADS; 0 = all cores)."
    ),
    cuda_graphs: bool = typer.Option(
        True,
        "--cuda-graphs/--no-cuda-graphs",
        help="On a GPU, replay one CUDA graph per width and batch size (same images, less launch time).",
    ),  # fmt: skip
    scripted: bool = typer.Option(
        False,
        "--scripted/--no-scripted",
        help="Run each width as a frozen TorchScript graph of its static sub-network (faster small "
        "calls on a CPU; images equal the default's up to float rounding). CUDA graphs take precedence.",
    ),
) -> None:
    """Sample images with one width per sampler step; write a grid (and optionally .npz / PNGs)."""
    from ddsm_core.threads import set_threads

    set_threads(threads)
    import torch

    from ddsm_core.checkpoint import load_checkpoint
    from ddsm_core.cli.checks import (
        check_checkpoint,
        check_min,
        check_steps,
        check_suffix,
        check_writable_parent,
    )
    from ddsm_core.data import save_image_grid
    from ddsm_core.device import pick_device
    from ddsm_core.errors import ConfigError
    from ddsm_core.inference import GraphedWidths, ScriptedWidths, prepare_for_inference
    from ddsm_core.sampling import model_denoiser, seed_labels
    from ddsm_core.sampling import sample as run_sample
    from ddsm_core.spec import strategy_from_arg

    check_min("--n", n, 1)
    check_min("--eta", eta, 0)
    check_min("--batch-size", batch_size, 1)
    check_steps("--steps", steps)
    fixed = _class_arg(label)
    check_suffix(out, "--out", ".png", "a PNG grid")
    check_suffix(npz, "--npz", ".npz", "an .npz archive")
    check_checkpoint(checkpoint)
    for path, option in ((out, "--out"), (npz, "--npz"), (png_dir, "--png-dir")):
        if path is not None:
            check_writable_parent(path, option)
    dev = pick_device(device)
    model, schedule, manifest = load_checkpoint(checkpoint, use_ema=not raw, map_location=str(dev))
    cfg = model.config
    prepare_for_inference(model)
    strat = strategy_from_arg(str(strategy), sampler, steps, cfg.widths)
    check_steps("--steps", strat.steps)
    if eta is not None and strat.sampler != "ddim":  # before the progress bar starts
        raise ConfigError(f"--eta applies to the ddim sampler only, not {strat.sampler}")
    seeds = list(range(seed, seed + n))
    y = None
    if cfg.num_classes:
        y = seed_labels(seeds, cfg.num_classes, fixed)
    elif fixed is not None:
        raise ConfigError("--class given, but the checkpoint's model is not class-conditional")
    net = model
    if cuda_graphs and dev.type == "cuda":
        net = GraphedWidths(model)
    elif scripted:
        net = ScriptedWidths(model)
    denoiser = model_denoiser(net, schedule, guidance=guidance)
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    bar = _bar(progress, total=-(-n // batch_size) * strat.steps)
    with torch.inference_mode():
        images = run_sample(
            denoiser, strat, shape, seeds, y=y, device=dev, batch_size=batch_size, eta=eta,
            callback=(lambda info: bar.update(1)) if bar else None,
        ).cpu()  # fmt: skip
    if bar:
        bar.close()
    save_image_grid(images, out, nrow=max(1, round(n**0.5)))
    guided = "" if guidance is None else f", guidance {guidance:g}"
    typer.echo(f"{n} images, {strat.describe()}{guided}, checkpoint step {manifest['step']} -> {out}")
    if npz is not None:
        write_npz(npz, to_uint8(images))
        typer.echo(f"wrote {npz}")
    if png_dir is not None:
        write_pngs(png_dir, to_uint8(images), seed)
        typer.echo(f"wrote {n} PNGs to {png_dir}")


def _class_arg(text: str | None) -> int | None:
    """``--class``: an integer label, or ``random`` / absent for the seed-derived labels."""
    from ddsm_core.errors import ConfigError

    if text is None or text.strip().lower() == "random":
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--class must be an integer label or 'random', got {text!r}") from None


def to_uint8(images):  # Tensor [N,C,H,W] in [-1,1] -> numpy uint8 [N,H,W,C]
    """The FID's rounding (:func:`ddsm_core.fid.to_uint8`, half up), so the files score what was measured."""
    from ddsm_core.fid import to_uint8 as quantize_uint8

    return quantize_uint8(images).permute(0, 2, 3, 1).numpy()


def write_npz(path: Path, array) -> None:
    """An .npz with ``arr_0`` (uint8 NHWC, guided-diffusion's sample format), byte-identical per content.

    ``numpy.savez`` stamps the zip entry with the current time; a fixed stamp keeps the file's sha256 a
    function of the images only (content-addressed artifacts).
    """
    import io
    import zipfile

    import numpy as np

    from ddsm_core.atomic import atomic_path

    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(zipfile.ZipInfo("arr_0.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())


def write_pngs(folder: Path, array, seed: int) -> None:
    """One PNG per image, named by its seed; all of them land or none (a failure half-way leaves
    ``folder`` as it was)."""
    from PIL import Image

    from ddsm_core.atomic import atomic_folder

    with atomic_folder(folder) as tmp:
        for i, img in enumerate(array):
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(tmp / f"seed{seed + i:06d}.png")


def _bar(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sample", unit="step", dynamic_ncols=True)


def register(app: typer.Typer) -> None:
    app.command("sample")(sample)
