"""``ddsm ref-stats``, ``ddsm eval`` and ``ddsm search`` (local, no services).

Torch is imported inside the command bodies only, so ``ddsm_core.cli`` imports without it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from ddsm_core.cli.checks import (
    check_checkpoint,
    check_file,
    check_min,
    check_steps,
    check_writable_parent,
    write_text_atomic,
)
from ddsm_core.spec import (
    DEFAULT_PROFILE,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    DEFAULTS,
    PROFILES,
    SAMPLER_HELP,
    SearchSpec,
)


def _profiles_help(name: str) -> str:
    """``cpu: 16, paper: 50``: the value of a setting in each profile, for the help texts."""
    return ", ".join(f"{p}: {getattr(spec, name)}" for p, spec in PROFILES.items())


def _load_model(checkpoint: Path, device: str) -> tuple[Any, Any, dict[str, Any], Any]:
    from ddsm_core.checkpoint import load_checkpoint
    from ddsm_core.device import pick_device

    dev = pick_device(device)
    model, schedule, manifest = load_checkpoint(checkpoint, map_location=str(dev))
    return model, schedule, manifest, dev


def _dataset_of(manifest: dict[str, Any], dataset: str | None) -> str | None:
    return dataset or (manifest.get("train_config") or {}).get("dataset")


def resolve_stats(
    stats: Path | None,
    extractor: str | None,
    dataset: str | None,
    device: Any,
    out_dir: Path | None = None,
) -> tuple[Any, Any]:
    """(reference stats, extractor), checked against each other before any sampling.

    With ``stats`` the extractor defaults to the one that made them; without, the dataset's reference
    statistics are computed now (and saved to ``out_dir/ref_stats.npz``). The dataset is checked before
    any extractor is built, so a typo is reported as such.
    """
    from ddsm_core.data import check_dataset
    from ddsm_core.errors import ConfigError
    from ddsm_core.features import get_extractor, reference_stats
    from ddsm_core.fid import FeatureStats

    if stats is not None:
        ref = FeatureStats.load(stats)
        ext = get_extractor(extractor or ref.extractor, dataset=dataset, device=str(device))
        ref.check_compatible(ext.name, ext.dim)
        return ref, ext
    if dataset is None:
        raise ConfigError("give --stats (reference statistics .npz) or --dataset to compute them")
    check_dataset(dataset)
    ext = get_extractor(extractor or "auto", dataset=dataset, device=str(device))
    ref = reference_stats(dataset, ext, device=str(device))
    if out_dir is not None:
        ref.save(out_dir / "ref_stats.npz")
    return ref, ext


def ref_stats(
    dataset: str = typer.Option("digits", "--dataset", help="digits, cifar10 or an image folder."),
    extractor: str = typer.Option(
        "auto", "--extractor", help="auto (domain if the dataset has one), domain, inception."
    ),
    out: Path = typer.Option(..., "--out", help="The .npz to write (pytorch-fid format + labels)."),
    split: str = typer.Option("train", "--split", help="Dataset split (train, test, all)."),
    batch_size: int = typer.Option(
        250, "--batch-size", help="Images per batch (does not change the result)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    threads: int | None = typer.Option(
        None, "--threads", help="Torch CPU threads (default 1 or $DDSM_TORCH_THREADS; 0 = all cores)."
    ),
) -> None:
    """Compute reference feature statistics of a dataset for FID."""
    from ddsm_core.data import check_dataset
    from ddsm_core.device import pick_device
    from ddsm_core.features import reference_stats

    check_dataset(dataset, split)
    check_min("--batch-size", batch_size, 1)
    check_writable_parent(out, "--out")
    _set_threads(threads)
    stats = reference_stats(
        dataset, extractor, split=split, device=str(pick_device(device)), batch_size=batch_size
    )
    path = stats.save(out)
    typer.echo(f"{stats.n} images of {dataset}/{split}, {stats.extractor} ({stats.dim}-d) -> {path}")


def eval_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Checkpoint or training run directory."),
    strategy: str = typer.Option(
        "uniform:8/8",
        "--strategy",
        help="uniform:6/8, piecewise:2/8,8/8, a strategy JSON (pick.json) or a report's results.json.",
    ),
    # The same defaults as `ddsm search`, so that an eval re-measures what a search reported.
    sampler: str | None = typer.Option(
        None, "--sampler", help=f"{SAMPLER_HELP}. Default: the strategy file's, else {DEFAULT_SAMPLER}."
    ),
    steps: int | None = typer.Option(
        None, "--steps", help=f"Default: the strategy file's, else {DEFAULT_STEPS}."
    ),
    stats: Path | None = typer.Option(None, "--stats", help="Reference statistics (.npz)."),
    dataset: str | None = typer.Option(None, "--dataset", help="Compute reference stats of this dataset."),
    extractor: str | None = typer.Option(None, "--extractor", help="Default: the one of --stats / auto."),
    images: int = typer.Option(1000, "--images", help="Images to sample (FID needs at least 2)."),
    seed: int = typer.Option(
        DEFAULTS.eval_seed, "--seed", help="Image i uses seed + i (a search's --eval-seed)."
    ),
    batch_size: int = typer.Option(
        DEFAULTS.batch_size, "--batch-size", help="Images per batch (does not change them)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    out: Path | None = typer.Option(None, "--json", help="Also write the result as JSON here."),
    threads: int | None = typer.Option(
        None, "--threads", help="Torch CPU threads (default 1 or $DDSM_TORCH_THREADS; 0 = all cores)."
    ),
) -> None:
    """Evaluate one strategy: FID (with its extractor), GFLOPs, measured latency."""
    from ddsm_core.evaluate import evaluate
    from ddsm_core.flops import cost_table
    from ddsm_core.spec import strategy_from_arg

    check_min("--images", images, 2)
    check_min("--batch-size", batch_size, 1)
    check_steps("--steps", steps)
    check_checkpoint(checkpoint)
    check_file(stats, "--stats", "reference statistics")
    if out is not None:
        check_writable_parent(out, "--json")
    _set_threads(threads)
    model, schedule, manifest, dev = _load_model(checkpoint, device)
    strat = strategy_from_arg(strategy, sampler, steps, model.config.widths)
    check_steps("--steps", strat.steps)
    ref, ext = resolve_stats(stats, extractor, _dataset_of(manifest, dataset), dev)
    result = evaluate(
        model, schedule, strat, ref, ext, images, seed, batch_size, costs=cost_table(model), device=dev
    )
    fid = "failed: " + str(result.reason) if not result.ok else f"{result.fid:.4f}"
    typer.echo(
        f"{result.strategy}: {result.label} {fid}, {result.gflops:.4f} GFLOPs/image "
        f"({result.gflops_per_call:.4f}/call), {1000 * result.latency_s:.2f} ms/image, {images} images"
    )
    if out is not None:
        write_text_atomic(out, json.dumps(result.to_dict(), indent=1))
        typer.echo(f"wrote {out}")


def search_to_folder(
    checkpoint: Path,
    out: Path,
    spec: SearchSpec | None = None,
    *,
    stats: Path | None = None,
    dataset: str | None = None,
    extractor: str | None = None,
    device: str = "cpu",
    progress: bool = True,
    resume: bool = True,
    n_sample_images: int = 64,
) -> dict[str, Any]:
    """A whole local search into ``out``: resumable state, results.json, plots, report.md and one
    strategy file per finalist. ``spec`` defaults to :data:`ddsm_core.spec.DEFAULTS`."""
    from ddsm_core.evaluate import GenomeEvaluator, sample_images
    from ddsm_core.flops import cost_table
    from ddsm_core.report import plot_samples, write_report_folder
    from ddsm_core.results import build_results
    from ddsm_core.search import run_search

    start = time.perf_counter()
    # every input is checked before the folder is made: a failed start leaves no empty report folder
    check_checkpoint(checkpoint)
    check_file(stats, "--stats", "reference statistics")
    check_writable_parent(out, "--out")
    model, schedule, manifest, dev = _load_model(checkpoint, device)
    spec = (spec or DEFAULTS).bind(model.config.widths)
    ref, ext = resolve_stats(stats, extractor, _dataset_of(manifest, dataset), dev)
    out.mkdir(parents=True, exist_ok=True)
    if stats is None:
        ref.save(out / "ref_stats.npz")
    evaluator = GenomeEvaluator(
        model, schedule, ref, ext, spec, costs=cost_table(model), device=dev, cache_images=spec.n_images
    )
    full = spec.full_width_genome()
    run = run_search(
        spec.search_config(), evaluator, out, seed=spec.seed, n_images=spec.n_images,
        final_images=spec.final_images, weight=spec.weight, progress=progress, resume=resume,
        finalists={"full": full},
    )  # fmt: skip
    driver = run.driver
    results = build_results(
        spec, driver.candidates, driver.history, {k: ev.record for k, ev in run.final.items()},
        extractor=ext.name, checkpoint=str(checkpoint), stats=str(stats or out / "ref_stats.npz"),
        search_wall_s=run.wall_s,
        run={"where": "local", "device": str(dev), "checkpoint_step": manifest.get("step"),
             "checkpoint_dir": str(manifest.get("path") or checkpoint),
             "resumed": run.resumed},
    )  # fmt: skip
    final = results["final"]
    seeds = list(range(spec.eval_seed, spec.eval_seed + n_sample_images))
    panels = {
        f"full width, FID {_num(final['full'].get('fid'))}": spec.strategy(full),
        f"pick, FID {_num(final['pick'].get('fid'))}": spec.strategy(run.pick.genome),
    }
    plot_samples(
        out / "samples.png",
        {k: sample_images(model, schedule, s, seeds, spec.batch_size, device=dev)[0]
         for k, s in panels.items()},
    )  # fmt: skip
    results["cost"]["total_wall_s"] = time.perf_counter() - start
    write_report_folder(out, results)
    return results


def _set_threads(threads: int | None) -> None:
    from ddsm_core.threads import set_threads  # one thread unless told otherwise (see its docstring)

    set_threads(threads)


def _num(v: float | None) -> str:
    return "failed" if v is None else f"{v:.2f}"


def search(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Checkpoint or training run directory."),
    out: Path = typer.Option(Path("runs/search"), "--out", help="Report folder (also the resume state)."),
    stats: Path | None = typer.Option(None, "--stats", help="Reference statistics (.npz)."),
    dataset: str | None = typer.Option(None, "--dataset", help="Default: the checkpoint's dataset."),
    extractor: str | None = typer.Option(None, "--extractor", help="Default: the one of --stats / auto."),
    profile: str = typer.Option(
        DEFAULT_PROFILE, "--profile", help=f"Named settings: {', '.join(PROFILES)}; options override them."
    ),
    sampler: str | None = typer.Option(None, "--sampler", help=f"{SAMPLER_HELP}; default {DEFAULT_SAMPLER}."),
    steps: int | None = typer.Option(None, "--steps", help=f"Sampler steps; default {DEFAULT_STEPS}."),
    population: int | None = typer.Option(
        None, "--population", help=f"NSGA-II population ({_profiles_help('population')})."
    ),
    generations: int | None = typer.Option(
        None, "--generations", help=f"Generations ({_profiles_help('generations')})."
    ),
    mutation_rate: float | None = typer.Option(
        None, "--mutation-rate", help=f"Per gene ({_profiles_help('mutation_rate')})."
    ),
    crossover: str | None = typer.Option(
        None, "--crossover", help=f"one_point, two_point, uniform, none; default {DEFAULTS.crossover}."
    ),
    images: int | None = typer.Option(
        None, "--images", help=f"Images per candidate ({_profiles_help('n_images')})."
    ),
    final_images: int | None = typer.Option(
        None, "--final-images", help=f"Images per finalist ({_profiles_help('final_images')})."
    ),
    weight: float | None = typer.Option(
        None, "--weight", help=f"Pick: min FID + w x GFLOPs/image ({_profiles_help('weight')})."
    ),
    seed: int | None = typer.Option(None, "--seed", help=f"Seed of NSGA-II; default {DEFAULTS.seed}."),
    eval_seed: int | None = typer.Option(
        None,
        "--eval-seed",
        help=f"Image i of every candidate uses eval_seed + i; default {DEFAULTS.eval_seed}.",
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help=f"Images per batch (does not change them); default {DEFAULTS.batch_size}."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    resume: bool = typer.Option(True, "--resume/--restart", help="Continue the search state in --out."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    threads: int | None = typer.Option(
        None, "--threads", help="Torch CPU threads (default 1 or $DDSM_TORCH_THREADS; 0 = all cores)."
    ),
) -> None:
    """Search a step-aware width strategy locally (NSGA-II) and write a report folder."""
    _set_threads(threads)
    from ddsm_core.spec import profile as named_profile

    check_steps("--steps", steps)
    spec = named_profile(profile).replace(
        sampler=sampler, steps=steps, population=population, generations=generations,
        mutation_rate=mutation_rate, crossover=crossover, n_images=images, final_images=final_images,
        weight=weight, seed=seed, eval_seed=eval_seed, batch_size=batch_size,
    )  # fmt: skip
    res = search_to_folder(
        checkpoint, out, spec, stats=stats, dataset=dataset, extractor=extractor, device=device,
        progress=progress, resume=resume,
    )  # fmt: skip
    pick, full = res["final"]["pick"], res["final"]["full"]
    saved = 1 - pick["gflops"] / full["gflops"]
    typer.echo(
        f"pick {pick['strategy']}: FID {_num(pick.get('fid'))} vs full width {_num(full.get('fid'))} "
        f"({res['extractor']}), {100 * saved:.0f}% fewer GFLOPs -> {out / 'report.md'}"
    )


def register(app: typer.Typer) -> None:
    app.command("ref-stats")(ref_stats)
    app.command("eval")(eval_cmd)
    app.command("search")(search)
