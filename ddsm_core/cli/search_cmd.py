"""``ddsm ref-stats``, ``ddsm eval`` and ``ddsm search`` (local, no services).

Torch is imported inside the command bodies only, so ``ddsm_core.cli`` imports without it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

# Fast local defaults for the digits supernet: a whole search takes a few minutes on 2 CPU cores
# (bench/digits_search.md). The paper's NSGA-II setting is population 50, generations 10. DDPM (not
# DDIM): its fresh noise at every step forgives the small widths' errors at the noisy start.
DEFAULT_SEARCH = {
    "sampler": "ddpm",
    "steps": 20,
    "population": 16,
    "generations": 5,
    "images": 200,
    "final_images": 500,
    "weight": 1.5,
}


def _load_model(checkpoint: Path, device: str) -> tuple[Any, Any, dict[str, Any], Any]:
    from ddsm_core.checkpoint import load_checkpoint
    from ddsm_core.train import pick_device

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
    statistics are computed now (and saved to ``out_dir/ref_stats.npz``).
    """
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
    batch_size: int = typer.Option(250, "--batch-size"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
) -> None:
    """Compute reference feature statistics of a dataset for FID."""
    from ddsm_core.features import reference_stats
    from ddsm_core.train import pick_device

    stats = reference_stats(
        dataset, extractor, split=split, device=str(pick_device(device)), batch_size=batch_size
    )
    path = stats.save(out)
    typer.echo(f"{stats.n} images of {dataset}/{split}, {stats.extractor} ({stats.dim}-d) -> {path}")


def eval_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Checkpoint or training run directory."),
    strategy: str = typer.Option(
        "uniform:8/8", "--strategy", help="uniform:6/8, piecewise:2/8,8/8 or a JSON."
    ),
    # The same defaults as `ddsm search`, so that an eval re-measures what a search reported.
    sampler: str = typer.Option("ddpm", "--sampler", help="ddpm, ddim, edm-heun, dpm-solver++."),
    steps: int = typer.Option(20, "--steps"),
    stats: Path | None = typer.Option(None, "--stats", help="Reference statistics (.npz)."),
    dataset: str | None = typer.Option(None, "--dataset", help="Compute reference stats of this dataset."),
    extractor: str | None = typer.Option(None, "--extractor", help="Default: the one of --stats / auto."),
    images: int = typer.Option(1000, "--images", help="Images to sample."),
    seed: int = typer.Option(0, "--seed", help="Image i uses seed + i (the same for every strategy)."),
    batch_size: int = typer.Option(250, "--batch-size"),
    device: str = typer.Option("cpu", "--device"),
    out: Path | None = typer.Option(None, "--json", help="Also write the result as JSON here."),
    threads: int = typer.Option(
        0, "--threads", help="Torch CPU threads (0: torch's default; 1 on a busy machine)."
    ),
) -> None:
    """Evaluate one strategy: FID (with its extractor), GFLOPs, measured latency."""
    from ddsm_core.evaluate import evaluate
    from ddsm_core.flops import cost_table
    from ddsm_core.strategy import parse_strategy_spec

    _set_threads(threads)
    model, schedule, manifest, dev = _load_model(checkpoint, device)
    strat = parse_strategy_spec(strategy, sampler, steps, model.config.widths)
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
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_dict(), indent=1))


def search_to_folder(
    checkpoint: Path,
    out: Path,
    *,
    stats: Path | None = None,
    dataset: str | None = None,
    extractor: str | None = None,
    sampler: str = DEFAULT_SEARCH["sampler"],
    steps: int = DEFAULT_SEARCH["steps"],
    population: int = DEFAULT_SEARCH["population"],
    generations: int = DEFAULT_SEARCH["generations"],
    mutation_rate: float = 0.001,
    crossover: str = "one_point",
    images: int = DEFAULT_SEARCH["images"],
    final_images: int = DEFAULT_SEARCH["final_images"],
    weight: float = DEFAULT_SEARCH["weight"],
    seed: int = 0,
    eval_seed: int = 0,
    batch_size: int = 250,
    device: str = "cpu",
    progress: bool = True,
    resume: bool = True,
    n_sample_images: int = 64,
) -> dict[str, Any]:
    """A whole local search into ``out``: resumable state, results.json, plots, report.md."""
    from ddsm_core.evaluate import GenomeEvaluator, sample_images
    from ddsm_core.flops import cost_table
    from ddsm_core.plots import plot_strategy
    from ddsm_core.report import plot_pareto, plot_samples, write_report
    from ddsm_core.search import SearchConfig, run_search
    from ddsm_core.widths import format_width

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    model, schedule, manifest, dev = _load_model(checkpoint, device)
    widths = tuple(model.config.widths)
    ref, ext = resolve_stats(stats, extractor, _dataset_of(manifest, dataset), dev, out)
    config = SearchConfig(
        steps=steps, n_widths=len(widths), population=population, generations=generations,
        mutation_rate=mutation_rate, crossover=crossover,  # type: ignore[arg-type]
    )  # fmt: skip
    evaluator = GenomeEvaluator(
        model, schedule, ref, ext, sampler=sampler, steps=steps, widths=widths, eval_seed=eval_seed,
        batch_size=batch_size, costs=cost_table(model), device=dev, cache_images=images,
    )  # fmt: skip
    full = (len(widths) - 1,) * steps
    run = run_search(
        config, evaluator, out, seed=seed, n_images=images, final_images=final_images, weight=weight,
        progress=progress, resume=resume, finalists={"full": full},
    )  # fmt: skip
    driver = run.driver
    uniform = {}
    for i, w in enumerate(widths):
        cand = driver.lookup((i,) * steps)
        if cand is not None and cand.ok:
            uniform[format_width(w)] = cand.record
    final = {name: {"genome": None, **ev.record} for name, ev in run.final.items()}
    for name, genome in (("pick", run.pick.genome), ("knee", run.knee.genome), ("full", full)):
        final[name]["genome"] = list(genome)
    fid_label = f"FID ({ext.name})"
    plot_pareto(
        out / "pareto.png", driver.candidates, driver.front(),
        uniform={k: (v["fid"], v["gflops"]) for k, v in uniform.items()},
        marked={"pick": run.pick.objectives, "knee": run.knee.objectives},  # type: ignore[dict-item]
        fid_label=fid_label, title=f"{sampler}, {steps} steps, {images} images per candidate",
    )  # fmt: skip
    plot_strategy(
        {"pick": evaluator.strategy(run.pick.genome), "knee": evaluator.strategy(run.knee.genome)},
        out / "strategy.png", title="searched strategies (width per sampler step)",
    )  # fmt: skip
    seeds = list(range(eval_seed, eval_seed + n_sample_images))
    panels = {
        f"full width, FID {_num(final['full'].get('fid'))}": evaluator.strategy(full),
        f"pick, FID {_num(final['pick'].get('fid'))}": evaluator.strategy(run.pick.genome),
    }
    plot_samples(
        out / "samples.png",
        {k: sample_images(model, schedule, s, seeds, batch_size, device=dev)[0] for k, s in panels.items()},
    )
    cands = driver.candidates
    finals = list({tuple(g["genome"]): g for g in final.values()}.values())
    results = {
        "config": {
            **config.to_dict(),
            "checkpoint": str(checkpoint),
            "stats": str(stats or out / "ref_stats.npz"),
            "sampler": sampler,
            "steps": steps,
            "widths": list(widths),
            "seed": seed,
            "eval_seed": eval_seed,
            "n_images": images,
            "final_images": final_images,
            "weight": weight,
            "batch_size": batch_size,
            "device": str(dev),
            "checkpoint_step": manifest.get("step"),
        },  # fmt: skip
        "extractor": ext.name,
        "candidates": [c.to_dict() for c in driver.candidates],
        "front": [c.to_dict() for c in driver.front()],
        "pick": run.pick.to_dict(),
        "knee": run.knee.to_dict(),
        "final": final,
        "uniform": uniform,
        "full_gflops": final["full"].get("gflops"),
        "history": driver.history,
        "cost": {
            "evaluations": len(cands),
            "search_images_sampled": sum(int(c.record.get("n_images", 0)) for c in cands),
            "search_network_calls": sum(_calls(c.record) for c in cands),
            "search_network_calls_run": sum(
                round(_calls(c.record) * (1 - c.record.get("reused_fraction", 0.0))) for c in cands
            ),
            "final_images_sampled": sum(int(r.get("n_images", 0)) for r in finals),
            "final_network_calls": sum(_calls(r) for r in finals),
            "search_wall_s": run.wall_s,
            "total_wall_s": time.perf_counter() - start,
            "resumed": run.resumed,
        },
    }
    write_report(out, results)
    return results


def _set_threads(threads: int) -> None:
    # oversubscribed cores (other processes busy) make torch's spinning threads far slower than one
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def _num(v: float | None) -> str:
    return "failed" if v is None else f"{v:.2f}"


def _calls(record: dict[str, Any]) -> int:
    return int(record.get("n_images", 0)) * int(record.get("network_calls", 0))


def search(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Checkpoint or training run directory."),
    out: Path = typer.Option(Path("runs/search"), "--out", help="Report folder (also the resume state)."),
    stats: Path | None = typer.Option(None, "--stats", help="Reference statistics (.npz)."),
    dataset: str | None = typer.Option(None, "--dataset", help="Default: the checkpoint's dataset."),
    extractor: str | None = typer.Option(None, "--extractor", help="Default: the one of --stats / auto."),
    sampler: str = typer.Option(DEFAULT_SEARCH["sampler"], "--sampler"),
    steps: int = typer.Option(DEFAULT_SEARCH["steps"], "--steps"),
    population: int = typer.Option(DEFAULT_SEARCH["population"], "--population", help="Paper: 50."),
    generations: int = typer.Option(DEFAULT_SEARCH["generations"], "--generations", help="Paper: 10."),
    mutation_rate: float = typer.Option(0.001, "--mutation-rate", help="Per gene (paper: 0.001)."),
    crossover: str = typer.Option("one_point", "--crossover", help="one_point, two_point, uniform, none."),
    images: int = typer.Option(DEFAULT_SEARCH["images"], "--images", help="Images per candidate."),
    final_images: int = typer.Option(DEFAULT_SEARCH["final_images"], "--final-images"),
    weight: float = typer.Option(
        DEFAULT_SEARCH["weight"], "--weight", help="Pick: min FID + w x GFLOPs/image."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of NSGA-II."),
    eval_seed: int = typer.Option(0, "--eval-seed", help="Image i of every candidate uses eval_seed + i."),
    batch_size: int = typer.Option(250, "--batch-size"),
    device: str = typer.Option("cpu", "--device"),
    resume: bool = typer.Option(True, "--resume/--restart", help="Continue the search state in --out."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    threads: int = typer.Option(
        0, "--threads", help="Torch CPU threads (0: torch's default; 1 on a busy machine)."
    ),
) -> None:
    """Search a step-aware width strategy locally (NSGA-II) and write a report folder."""
    _set_threads(threads)
    res = search_to_folder(
        checkpoint, out, stats=stats, dataset=dataset, extractor=extractor, sampler=sampler, steps=steps,
        population=population, generations=generations, mutation_rate=mutation_rate, crossover=crossover,
        images=images, final_images=final_images, weight=weight, seed=seed, eval_seed=eval_seed,
        batch_size=batch_size, device=device, progress=progress, resume=resume,
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
