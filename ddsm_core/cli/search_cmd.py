"""``ddsm ref-stats``, ``ddsm eval`` and ``ddsm search`` (local, no services).

Torch is imported inside the command bodies only, so ``ddsm_core.cli`` imports without it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from ddsm_core.checks import spec_errors_as_options
from ddsm_core.cli.checks import (
    check_checkpoint,
    check_file,
    check_min,
    check_steps,
    check_writable_parent,
    write_text_atomic,
)
from ddsm_core.search import RUNG_METRICS, STATE_FILE
from ddsm_core.spec import (
    DEFAULT_PROFILE,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    DEFAULTS,
    OBJECTIVES,
    PICK_RULES,
    PROFILES,
    SAMPLER_HELP,
    SearchSpec,
)

GUIDANCE_HELP = (
    "Classifier-free guidance weight (a model trained with --label-dropout; 1 = conditional model). "
    "Both passes are counted in the GFLOPs."
)
CLASS_HELP = "Class-conditional models: every image of this class (default: seed % classes)."


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


def check_data_args(dataset: str | None, image_size: int | None, model_config: Any) -> int | None:
    """Validate ``--dataset`` / ``--image-size`` against the checkpoint's model before any sampling.

    :return: the image size to read the dataset at: ``--image-size``, else the model's own.
    """
    from ddsm_core.data import check_dataset
    from ddsm_core.errors import ConfigError

    own = int(model_config.image_size)
    if image_size is not None and image_size != own:
        raise ConfigError(
            f"--image-size {image_size} differs from the checkpoint's image size {own}: FID compares "
            "images of one size (leave --image-size out to use the checkpoint's)"
        )
    if dataset is not None:
        check_dataset(dataset, own, int(model_config.in_channels))
    return own


def resolve_stats(
    stats: Path | None,
    extractor: str | None,
    dataset: str | None,
    device: Any,
    out_dir: Path | None = None,
    image_size: int | None = None,
    channels: int | None = None,
) -> tuple[Any, Any]:
    """(reference stats, extractor), checked against each other before any sampling.

    With ``stats`` the extractor defaults to the one that made them; without, the dataset's reference
    statistics are computed now (read at ``image_size`` with ``channels``: the model's) and saved to
    ``out_dir/ref_stats.npz``. The dataset is checked before any extractor is built, so a typo is
    reported as such.
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
    check_dataset(dataset, image_size, channels)
    ext = get_extractor(extractor or "auto", dataset=dataset, device=str(device))
    ref = reference_stats(dataset, ext, device=str(device), image_size=image_size, channels=channels)
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
    image_size: int | None = typer.Option(
        None, "--image-size", help="Square size to read the images at (required for a folder)."
    ),
    channels: int | None = typer.Option(None, "--channels", help="Folder images: 1 (gray) or 3 (RGB) [3]."),
    batch_size: int = typer.Option(
        250, "--batch-size", help="Images per batch (does not change the result)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    threads: int | None = typer.Option(
        None, "--threads", help="Torch CPU threads (default 1 or $DDSM_TORCH_THREADS; 0 = all cores)."
    ),
) -> None:
    """Compute reference feature statistics of a dataset for FID, and its real-data floor."""
    from ddsm_core.data import check_dataset
    from ddsm_core.device import pick_device
    from ddsm_core.features import reference_stats
    from ddsm_core.floor import floors_of

    check_dataset(dataset, image_size, channels, split=split)
    check_min("--batch-size", batch_size, 1)
    check_writable_parent(out, "--out")
    _set_threads(threads)
    stats = reference_stats(
        dataset, extractor, split=split, device=str(pick_device(device)), batch_size=batch_size,
        image_size=image_size, channels=channels,
    )  # fmt: skip
    path = stats.save(out)
    typer.echo(f"{stats.n} images of {dataset}/{split}, {stats.extractor} ({stats.dim}-d) -> {path}")
    floors = floors_of(stats)
    if floors:
        typer.echo("real-data floor (held-out real images vs these stats): FID " + ", ".join(
            f.describe() for f in reversed(floors)
        ))  # fmt: skip
    else:
        typer.echo("real-data floor: none (no held-out split to measure it on)")


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
    image_size: int | None = typer.Option(
        None, "--image-size", help="Size to read --dataset at [the checkpoint's image size]."
    ),
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
    guidance: float | None = typer.Option(None, "--guidance", help=GUIDANCE_HELP),
    label: int | None = typer.Option(None, "--class", help=CLASS_HELP),
) -> None:
    """Evaluate one strategy: FID (with its extractor), GFLOPs, measured latency."""
    from ddsm_core.evaluate import evaluate
    from ddsm_core.floor import floor_of
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
    data = _dataset_of(manifest, dataset) if stats is None else dataset
    size = check_data_args(data, image_size, model.config)
    strat = strategy_from_arg(strategy, sampler, steps, model.config.widths)
    check_steps("--steps", strat.steps)
    ref, ext = resolve_stats(stats, extractor, data, dev, image_size=size, channels=model.config.in_channels)
    result = evaluate(
        model, schedule, strat, ref, ext, images, seed, batch_size, costs=cost_table(model), device=dev,
        guidance=guidance, class_label=label,
    )  # fmt: skip
    fid = "failed: " + str(result.reason) if not result.ok else f"{result.fid:.4f}"
    floor = floor_of(ref, images)
    typer.echo(
        f"{result.strategy}: {result.label} {fid}, {result.gflops:.4f} GFLOPs/image "
        f"({result.gflops_per_call:.4f}/call), {1000 * result.latency_s:.2f} ms/image, {images} images"
        + (f"; real-data floor {floor.describe()}" if floor is not None else "")
        + (f": {result.fid / floor.fid:.2f}x" if floor is not None and result.fid and floor.fid > 0 else "")
    )
    if out is not None:
        record = {**result.to_dict(), "floor": floor.to_dict() if floor is not None else None}
        write_text_atomic(out, json.dumps(record, indent=1))
        typer.echo(f"wrote {out}")


def search_to_folder(
    checkpoint: Path,
    out: Path,
    spec: SearchSpec | None = None,
    *,
    stats: Path | None = None,
    dataset: str | None = None,
    image_size: int | None = None,
    extractor: str | None = None,
    device: str = "cpu",
    progress: bool = True,
    resume: bool = True,
    n_sample_images: int = 64,
    warm_start: Sequence[Path] = (),
    latency_table: Path | None = None,
) -> dict[str, Any]:
    """A whole local search into ``out``: resumable state, results.json, plots, report.md and one
    strategy file per finalist. ``spec`` defaults to :data:`ddsm_core.spec.DEFAULTS`.

    ``warm_start``: strategy files or results.json files seeding the first generation (transferred
    to the search's sampler and steps with the checkpoint's noise schedule). Resuming without them
    keeps the seeds stored in the search state.

    ``latency_table``: the supernet's latency table on this machine (``ddsm latency``); without it,
    the table of this device kept in the checkpoint folder, if any. With a table every finalist
    shows its predicted latency beside its GFLOPs; objective latency needs one."""
    from ddsm_core.evaluate import GenomeEvaluator, sample_images
    from ddsm_core.floor import floors_of
    from ddsm_core.flops import cost_table
    from ddsm_core.paired import paired_vs_full
    from ddsm_core.pick import run_bisection
    from ddsm_core.report import plot_samples, write_report_folder
    from ddsm_core.results import build_results
    from ddsm_core.search import run_search

    start = time.perf_counter()
    # every input is checked before the folder is made: a failed start leaves no empty report folder
    check_checkpoint(checkpoint)
    check_file(stats, "--stats", "reference statistics")
    for path in warm_start:
        check_file(path, "--warm-start", "strategy file")
    check_file(latency_table, "--latency-table", "latency table")
    check_writable_parent(out, "--out")
    model, schedule, manifest, dev = _load_model(checkpoint, device)
    with spec_errors_as_options():
        spec = (spec or DEFAULTS).bind(model.config.widths)
        spec.check_model(model.config)  # --guidance / --class the supernet cannot run: before any stats
    latency = _latency_table(latency_table, Path(manifest["path"]), dev)
    spec.check_latency_table(latency)
    if resume:
        _check_resumed_costs(spec, out / STATE_FILE, latency)
    spec = _seeded(spec, warm_start, schedule, out / STATE_FILE if resume else None)
    data = _dataset_of(manifest, dataset) if stats is None else dataset
    size = check_data_args(data, image_size, model.config)
    ref, ext = resolve_stats(stats, extractor, data, dev, image_size=size, channels=model.config.in_channels)
    out.mkdir(parents=True, exist_ok=True)  # only now: a failed start leaves no empty report folder
    if stats is None:
        ref.save(out / "ref_stats.npz")
    evaluator = GenomeEvaluator(
        model, schedule, ref, ext, spec, costs=cost_table(model), device=dev, cache_images=spec.ladder,
        latency=latency,
    )  # fmt: skip
    full = spec.full_width_genome()
    finals_dir = out / FINALS_DIR
    if not resume:
        shutil.rmtree(finals_dir, ignore_errors=True)  # --restart: nothing of the old run is reused
    note = spec.final_seeds_note()
    if note is not None:
        typer.echo(f"warning: {note}", err=True)
    key = {"spec": spec.to_dict(), "checkpoint": str(checkpoint), "extractor": ext.name,
           "final_seeds": spec.seeds()["final"]}  # fmt: skip
    evaluate_final = _cached_finalists(finals_dir, evaluator, key)

    def judge(genome: tuple[int, ...], ev: Any) -> dict[str, Any] | None:
        from ddsm_core.pick import probe_verdict

        features = evaluator.final_features()
        full_record = {"genome": list(full), **final_by_genome[full].record}
        return probe_verdict(full_record, {"genome": list(genome), **ev.record}, features, ref,
                             seed=spec.eval_seed, rel_tolerance=spec.tolerance)  # fmt: skip

    final_by_genome: dict[tuple[int, ...], Any] = {}

    def evaluate_and_keep(genome: tuple[int, ...]) -> Any:
        final_by_genome[genome] = evaluate_final(genome)
        return final_by_genome[genome]

    run = run_search(
        spec.search_config(), evaluator, out, seed=spec.seed, n_images=spec.n_images,
        final_images=spec.final_images, weight=spec.weight, progress=progress, resume=resume,
        finalists={"full": full}, rungs=spec.rungs, promote=spec.promote, rung_metric=spec.rung_metric,
        pick_rule=spec.pick_rule, judge=judge, evaluate_final=evaluate_and_keep,
    )  # fmt: skip
    driver = run.driver
    results = build_results(
        spec, driver.candidates, driver.history, {k: ev.record for k, ev in run.final.items()},
        extractor=ext.name, checkpoint=str(checkpoint), stats=str(stats or out / "ref_stats.npz"),
        search_wall_s=run.wall_s,
        run={"where": "local", "device": str(dev), "checkpoint_step": manifest.get("step"),
             "checkpoint_dir": str(manifest.get("path") or checkpoint),
             "resumed": run.resumed},
        floors=[f.to_dict() for f in floors_of(ref)],  # every FID next to the real-data floor
        latency=latency, bisection=run_bisection(spec, run),
    )  # fmt: skip
    final = results["final"]
    # the finalists' own (held-out) seeds: samples.png shows the images their verdict was read on
    seeds = list(range(spec.final_first_seed, spec.final_first_seed + n_sample_images))
    panels = {
        f"full width, FID {_num(final['full'].get('fid'))}": spec.strategy(full),
        f"pick, FID {_num(final['pick'].get('fid'))}": spec.strategy(run.pick.genome),
    }
    plot_samples(
        out / "samples.png",
        {k: sample_images(model, schedule, s, seeds, spec.batch_size, device=dev, guidance=spec.guidance,
                          class_label=spec.class_label)[0]
         for k, s in panels.items()},
    )  # fmt: skip
    results["cost"]["total_wall_s"] = time.perf_counter() - start
    # every finalist paired with full width on the same (the finalists') seeds
    results["paired"] = paired_vs_full(
        final, evaluator.final_features(), ref, seed=spec.eval_seed, tolerance=_tolerance(spec, final)
    )
    write_report_folder(out, results)
    shutil.rmtree(out / FINALS_DIR, ignore_errors=True)  # the report holds them now
    return results


def _tolerance(spec: SearchSpec, final: dict[str, Any]) -> float | None:
    from ddsm_core.pick import tolerance_of

    return tolerance_of(spec.tolerance, final["full"])


FINALS_DIR = "finalists"
"""Where ``ddsm search`` keeps each finalist's and probe's evaluation (record and per-image features)
until the report is written: an interrupted finalist stage resumes without redoing them."""


def _cached_finalists(folder: Path, evaluator: Any, key: dict[str, Any]) -> Any:
    """``evaluate_final(genome)``: the evaluator's finalist evaluation (``final_images`` images from
    the finalists' seeds), each result kept in ``folder`` (its record and per-image features) and read
    back, features included, when the same search (``key``: settings, checkpoint, extractor, the
    finalists' seeds) asks again: a folder from another search, or from before held-out seeds, is
    evaluated again."""
    import numpy as np

    from ddsm_core.atomic import atomic_path
    from ddsm_core.search import Evaluation

    n, first = evaluator.spec.final_images, evaluator.spec.final_first_seed
    stamp = json.dumps(key, sort_keys=True)

    def evaluate_final(genome: tuple[int, ...]) -> Evaluation:
        path = folder / f"{'-'.join(map(str, genome))}.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    meta = json.loads(str(z["meta"]))
                    features = np.asarray(z["features"]) if "features" in z.files else None
                if meta["key"] == stamp:
                    if features is not None:
                        evaluator.kept_features[(genome, n, first)] = features
                    obj = meta["objectives"]
                    return Evaluation(
                        None if obj is None else (obj[0], obj[1]), meta["reason"], meta["record"]
                    )
            except (OSError, ValueError, KeyError, TypeError):
                pass  # unreadable or another search's: evaluated again
        ev = evaluator.evaluate_final(genome)
        meta = {"key": stamp, "objectives": ev.objectives, "reason": ev.reason, "record": ev.record}
        arrays = {"meta": np.array(json.dumps(meta))}
        features = evaluator.kept_features.get((genome, n, first))
        if features is not None:
            arrays["features"] = np.asarray(features)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        return ev

    return evaluate_final


def _check_resumed_costs(spec: SearchSpec, state: Path, latency: Any) -> None:
    """A search resumed from ``state`` must go on minimising the same cost: its first successful
    candidate's cost must be what this spec (objective) and latency table give its record."""
    import math

    from ddsm_core.errors import ConfigError

    try:
        cands = json.loads(state.read_text())["candidates"]
        first = next(c for c in cands if c.get("objectives") and isinstance(c.get("record"), dict))
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return  # no state, or nothing evaluated yet (run_search reports an unreadable state)
    cost = spec.costs(first["genome"], first["record"], latency)["cost"]
    if cost is None or not math.isclose(cost, float(first["objectives"][1]), rel_tol=1e-9):
        raise ConfigError(
            f"{state} holds a search that minimised another cost (objective or latency table) than "
            f"--objective {spec.objective} with this table: use --restart or another --out"
        )


def _latency_table(path: Path | None, checkpoint_dir: Path, device: Any) -> Any:
    """``--latency-table``, else this device's float32 table in the checkpoint folder, else None."""
    from ddsm_core.latency import LatencyTable, device_name, find_table

    if path is not None:
        table = LatencyTable.load(path)
        here = device_name(device)
        if table.device != here or table.dtype != "float32":
            note = f"the latency table was measured on {table.device} ({table.dtype}), this search runs on"
            typer.echo(f"note: {note} {here} (float32): its latencies are that device's", err=True)
        return table
    return find_table(checkpoint_dir, device_name(device))


def _seeded(spec: SearchSpec, files: Sequence[Path], schedule: Any, state: Path | None) -> SearchSpec:
    """``spec`` with the warm-start seeds of ``files``, or those of the search state being resumed."""
    from ddsm_core.spec import with_warm_start
    from ddsm_core.transfer import read_strategies

    if files:
        strategies = [s for f in files for s in read_strategies(f)]
        spec, notes = with_warm_start(spec, strategies, schedule)
        for note in notes:
            typer.echo(note, err=True)
        typer.echo(f"warm start: {len(spec.warm_start)} seed(s) in the first generation", err=True)
        return spec
    if spec.warm_start or state is None or not state.is_file():
        return spec
    try:  # a resume without --warm-start: the seeds the state was started with
        initial = json.loads(state.read_text())["config"]["initial"]
    except (OSError, ValueError, KeyError, TypeError):
        return spec  # run_search reports an unreadable state
    if not initial:
        return spec
    seeds = [spec.strategy(g) for g in initial]
    typer.echo(f"warm start: resuming with the {len(seeds)} seed(s) stored in {state}", err=True)
    return spec.replace(warm_start=tuple(s.to_dict() for s in seeds))


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
    image_size: int | None = typer.Option(
        None, "--image-size", help="Size to read --dataset at [the checkpoint's image size]."
    ),
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
        None,
        "--weight",
        help="Weighted pick: min FID + w x cost, the pick with --pick-rule weighted, else measured and "
        f"shown beside the pick ({_profiles_help('weight')}).",
    ),
    pick_rule: str | None = typer.Option(
        None,
        "--pick-rule",
        help=f"{' or '.join(PICK_RULES)}: the cheapest front member whose paired interval vs full width "
        "(--final-images from --final-seed, the same for both) ends within --tolerance, found by "
        "bisection; or min FID + "
        f"--weight x cost on the search's FIDs. Default {DEFAULTS.pick_rule}.",
    ),
    tolerance: float | None = typer.Option(
        None,
        "--tolerance",
        help="Equal quality: the paired interval's upper end <= this x full width's FID; "
        f"default {DEFAULTS.tolerance}.",
    ),
    objective: str | None = typer.Option(
        None,
        "--objective",
        help=f"The cost beside FID: {' or '.join(OBJECTIVES)} (predicted ms/image from the latency "
        f"table); default {DEFAULTS.objective}.",
    ),
    latency_table: Path | None = typer.Option(
        None,
        "--latency-table",
        help="Latency table JSON (`ddsm latency`) [this device's table in the checkpoint folder, if any].",
    ),
    rungs: str | None = typer.Option(
        None,
        "--rungs",
        help="Multi-fidelity: increasing image counts below --images, e.g. 64,256 "
        "(default none: every candidate at --images).",
    ),
    promote: float | None = typer.Option(
        None, "--promote", help=f"Fraction promoted per rung; default {DEFAULTS.promote}."
    ),
    rung_metric: str | None = typer.Option(
        None,
        "--rung-metric",
        help=f"What ranks a low rung: {' or '.join(RUNG_METRICS)} (paired: mean squared feature distance "
        f"to the full width's image of the same seed; fid: the rung's FID); default {DEFAULTS.rung_metric}.",
    ),
    seed: int | None = typer.Option(None, "--seed", help=f"Seed of NSGA-II; default {DEFAULTS.seed}."),
    eval_seed: int | None = typer.Option(
        None,
        "--eval-seed",
        help=f"Image i of every candidate uses eval_seed + i; default {DEFAULTS.eval_seed}.",
    ),
    final_seed: int | None = typer.Option(
        None,
        "--final-seed",
        help="Finalist image i uses final_seed + i (their FIDs, the pick's paired intervals, samples.png); "
        "default eval_seed + --images, the first seed after the search's: a verdict on images the front "
        "was not chosen on. Seeds overlapping the search's are allowed, with a warning.",
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
    warm_start: list[Path] | None = typer.Option(
        None,
        "--warm-start",
        help="Seed the first generation with a strategy file or a search's results.json (repeatable); "
        "transferred to --sampler/--steps by noise level.",
    ),
    guidance: float | None = typer.Option(None, "--guidance", help=GUIDANCE_HELP),
    label: int | None = typer.Option(None, "--class", help=CLASS_HELP),
) -> None:
    """Search a step-aware width strategy locally (NSGA-II) and write a report folder."""
    _set_threads(threads)
    from ddsm_core.spec import profile as named_profile

    check_steps("--steps", steps)
    with spec_errors_as_options():
        spec = named_profile(profile).replace(
            sampler=sampler, steps=steps, population=population, generations=generations,
            mutation_rate=mutation_rate, crossover=crossover, n_images=images, final_images=final_images,
            weight=weight, seed=seed, eval_seed=eval_seed, final_seed=final_seed, batch_size=batch_size,
            guidance=guidance, class_label=label, rungs=_parse_rungs(rungs), promote=promote,
            rung_metric=rung_metric, objective=objective, pick_rule=pick_rule, tolerance=tolerance,
        )  # fmt: skip
    res = search_to_folder(
        checkpoint, out, spec, stats=stats, dataset=dataset, image_size=image_size, extractor=extractor,
        device=device, progress=progress, resume=resume, warm_start=warm_start or (),
        latency_table=latency_table,
    )  # fmt: skip
    pick, full = res["final"]["pick"], res["final"]["full"]
    saved = 1 - pick["gflops"] / full["gflops"]
    faster = res.get("latency_saving")
    bisection = res.get("bisection")
    rule = (
        f"cheapest of equal quality, {len(bisection['probes'])} probe(s)"
        if bisection else "weighted"
    )  # fmt: skip
    typer.echo(
        f"pick ({rule}) {pick['strategy']}: FID {_num(pick.get('fid'))} vs full width "
        f"{_num(full.get('fid'))} ({res['extractor']}), {100 * saved:.0f}% fewer GFLOPs"
        + ("" if faster is None else f", {100 * faster:.0f}% less predicted time")
        + f" -> {out / 'report.md'}"
    )


def _parse_rungs(text: str | None) -> tuple[int, ...] | None:
    from ddsm_core.errors import ConfigError

    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ConfigError(f"--rungs takes comma-separated image counts, e.g. 64,256; got {text!r}") from None


def register(app: typer.Typer) -> None:
    app.command("ref-stats")(ref_stats)
    app.command("eval")(eval_cmd)
    app.command("search")(search)
