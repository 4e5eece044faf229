"""The report folder of a local search: results.json, pareto.png, strategy.png, samples.png, report.md.

Everything here reads plain values (candidates, evaluation records, strategies) except
:func:`plot_samples`, which takes image tensors. Matplotlib is imported lazily (Agg backend).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ddsm_core.atomic import atomic_path, write_text_atomic
from ddsm_core.results import final_seeds, finalist_strategies
from ddsm_core.search import Candidate, reached_top
from ddsm_core.spec import COST_UNITS, SearchSpec

COST_LABELS = {
    "gflops": "GFLOPs per image (sum over network calls)",
    "latency": "predicted ms per image (latency table)",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Lay out, write (120 dpi, creating the folder) and close a figure; returns its path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
    return Path(path)


def plot_pareto(
    path: str | os.PathLike[str],
    candidates: Sequence[Candidate],
    front: Sequence[Candidate],
    *,
    uniform: Mapping[str, tuple[float, float]],
    marked: Mapping[str, tuple[float, float]] | None = None,
    fid_label: str = "FID",
    title: str | None = None,
    cost_label: str = "GFLOPs per image (sum over network calls)",
) -> Path:
    """Every candidate (grey), the Pareto front (line), uniform baselines (squares, labelled by
    width) and marked points (pick, knee: stars). Points are (FID, cost: the search's objective)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ok = [c for c in candidates if c.ok and reached_top(c.record)]  # stand-in values are not drawn
    ax.scatter([c.cost for c in ok], [c.fid for c in ok], s=10, c="0.75", label="candidates")
    ax.plot([c.cost for c in front], [c.fid for c in front], "-o", ms=4, c="tab:blue", label="Pareto front")
    if uniform:
        xs = [v[1] for v in uniform.values()]
        ys = [v[0] for v in uniform.values()]
        ax.plot(xs, ys, "s--", c="tab:red", ms=6, lw=1, label="uniform widths")
        for label, (fid, gflops) in uniform.items():
            ax.annotate(label, (gflops, fid), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for i, (label, (fid, gflops)) in enumerate((marked or {}).items()):
        ax.plot([gflops], [fid], "*", ms=14, c=("tab:green", "tab:purple", "tab:orange")[i % 3], label=label)
    ax.set_xlabel(cost_label)
    ax.set_ylabel(fid_label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_samples(path: str | os.PathLike[str], panels: Mapping[str, Any], nrow: int = 8) -> Path:
    """Image grids side by side, one per ``{title: [N x C x H x W] tensor in [-1, 1]}``."""
    import torch
    from torchvision.utils import make_grid

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.8), squeeze=False)
    for ax, (title, images) in zip(axes[0], panels.items(), strict=True):
        x = images.detach().float().cpu().clamp(-1, 1)
        factor = max(1, -(-32 // x.shape[-1]))  # enlarge tiny digits (nearest neighbour)
        x = x.repeat_interleave(factor, -1).repeat_interleave(factor, -2)
        grid = make_grid((x + 1) / 2, nrow=nrow, padding=2, pad_value=1.0)
        ax.imshow(grid.permute(1, 2, 0).numpy() if grid.shape[0] == 3 else grid[0].numpy(), cmap="gray")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    del torch
    return _save(fig, path)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) >= 0.01 else f"{v:.2e}"
    return str(v)


def rows_table(
    rows: Sequence[Mapping[str, Any]],
    full_gflops: float | None,
    fid_label: str,
    floors: Sequence[Mapping[str, Any]] = (),
) -> str:
    """A markdown table of evaluation records: strategy, FID (and its ratio to the real-data floor of
    the nearest image count, when ``floors`` are given), GFLOPs, saving, latency."""
    from ddsm_core.floor import floor_of

    predicted = any(r.get("predicted_latency_s") is not None for r in rows)
    head = f"| | strategy | {fid_label} | GFLOPs/image | GFLOPs/call | saved | latency ms/image | images |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    if predicted:  # a latency table's prediction beside the measured time (which a busy machine skews)
        head = head.replace("| latency ms/image |", "| predicted ms/image | measured ms/image |")
        lines = [head, "|---" * 9 + "|"]
    for r in rows:
        saved = (1 - r["gflops"] / full_gflops) if full_gflops else None
        fid = r.get("fid")
        fid_text = _fmt(fid) + (f" ± {_fmt(r['fid_sd'])}" if r.get("fid_sd") is not None else "")
        floor = floor_of({"floors": list(floors)}, r.get("n_images"))
        if floor is not None and fid is not None and floor.fid > 0:
            fid_text += f" ({fid / floor.fid:.2f}x floor)"
        lines.append(
            f"| {r.get('name', '')} | {r.get('strategy', '')} | {fid_text if fid is not None else 'failed'} "
            "| "
            f"{_fmt(r['gflops'])} | {_fmt(r.get('gflops_per_call'), 4)} | "
            f"{'-' if saved is None else f'{100 * saved:.0f}%'} | "
            + (f"{_fmt(_ms(r.get('predicted_latency_s')), 3)} | " if predicted else "")
            + f"{_fmt(_ms(r.get('latency_s')), 2)} | "
            f"{r.get('n_images', '-')} |"
        )
    return "\n".join(lines)


def _rungs_text(cfg: Mapping[str, Any], cost: Mapping[str, Any]) -> str:
    """Multi-fidelity: the rungs, the promoted fraction and the evaluations each rung got."""
    if not cfg.get("rungs"):
        return ""
    spent = ", ".join(f"{r['evaluations']} at {r['n_images']}" for r in cost.get("rungs", []))
    return (
        f" Multi-fidelity: rungs {cfg['rungs']} images then {cfg['n_images']}, best {cfg['promote']} "
        f"promoted per rung by {_RUNG_METRIC_TEXT[cfg.get('rung_metric') or 'fid']} and cost (evaluations: "
        f"{spent}); only top-rung candidates enter the front. The uniform widths below show the rung each "
        f"one reached."
    )


_RUNG_METRIC_TEXT = {
    "paired": "paired distance (mean squared feature distance to the full width's image of the same seed)",
    "fid": "the rung's FID",
}
"""How a report names a search's rung metric (results of searches from before it existed: ``fid``)."""


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000 * seconds


def write_report(out_dir: str | os.PathLike[str], results: Mapping[str, Any]) -> Path:
    """Write ``results.json`` and ``report.md`` (the PNGs are written by the caller beforehand)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "results.json", json.dumps(results, indent=1, default=_json_default))
    write_strategy_files(out, results)
    label = f"FID ({results['extractor']})"
    full = results["final"].get("full", {}).get("gflops")
    cfg = results["config"]
    floors = results.get("floors") or []
    md = [
        "# Step-aware strategy search",
        "",
        f"Sampler **{cfg['sampler']}**, {cfg['steps']} steps, {label}.",
        "",
        *_inputs(results),
        "",
        f"NSGA-II: population {cfg['population']}, generations {cfg['generations']}, mutation rate "
        f"{cfg['mutation_rate']} per gene, {cfg['crossover']} crossover, seed {cfg['seed']}; "
        f"{cfg['n_images']} images per candidate, {cfg['final_images']} for the finalists; "
        f"{_pick_rule_text(results)}{_rungs_text(cfg, results.get('cost', {}))}",
        "",
        *_latency_lines(results),
        f"## Finalists ({cfg['final_images']} images, {_seeds_text(results)})",
        "",
        rows_table([{"name": k, **v} for k, v in results["final"].items()], full, label, floors),
        "",
        _floor_line(floors),
        "",
        *_paired_lines(results.get("paired") or {}),
        *_bisection_lines(results.get("bisection")),
        f"## Uniform widths during the search ({cfg['n_images']} images)",
        "",
        rows_table(
            [{"name": k, **v} for k, v in results["uniform"].items()],
            results.get("full_gflops"),
            label,
            floors,
        ),
        "",
        "## Pick",
        "",
        f"`{results['pick']['record'].get('strategy', results['pick']['genome'])}` "
        f"(genes {results['pick']['genome']}, noisiest step first).",
        "",
        "![pareto](pareto.png) ![strategy](strategy.png)",
        "",
        "![samples](samples.png)",
        "",
        "## Search cost",
        "",
    ]
    cost = results["cost"]
    md += [f"- {k.replace('_', ' ')}: {_fmt(v)}" for k, v in cost.items()]
    md.append("")
    return write_text_atomic(out / "report.md", "\n".join(md))


def _seeds_text(results: Mapping[str, Any]) -> str:
    """Which seeds the finalists' verdict used, and whether the search saw them (``seeds``)."""
    first, last = final_seeds(results)
    cfg, seeds = results["config"], results.get("seeds")
    # results from before held-out seeds: the finalists were measured on the search's own, from eval_seed
    seeds = seeds or {"search": [cfg["eval_seed"], cfg["eval_seed"] + cfg["n_images"] - 1], "held_out": False}
    a, b = seeds["search"]
    if seeds["held_out"]:
        return f"seeds {first}..{last}, held out: the search ranked on {a}..{b}"
    return f"seeds {first}..{last}, overlapping the search's {a}..{b}: the verdict flatters the pick"


def _inputs(results: Mapping[str, Any]) -> list[str]:
    """What the search measured: checkpoint (folder and training step), reference stats, extractor."""
    cfg, run = results["config"], results.get("run") or {}
    step = run.get("checkpoint_step")
    where = run.get("checkpoint_dir")
    ckpt = f"`{cfg.get('checkpoint')}`"
    if where and where != cfg.get("checkpoint"):
        ckpt += f" (`{where}`)"
    return [
        "Inputs:",
        f"- checkpoint: {ckpt}" + (f", training step {step}" if step is not None else ""),
        f"- reference statistics: `{cfg.get('stats')}`",
        f"- feature extractor: `{results['extractor']}`",
    ]


def _latency_lines(results: Mapping[str, Any]) -> list[str]:
    """Which latency table predicted the times (results.json's ``latency_table``), if one did."""
    table = results.get("latency_table")
    if not table:
        return []
    saving = results.get("latency_saving")
    return [
        f"Predicted latency: the supernet's latency table on {table['device']} ({table['dtype']}, "
        f"{table['threads']} thread(s), measured {table.get('date') or '-'} at batch sizes "
        f"{table['batch_sizes']}), at {table['at_batch_size']} images per batch"
        + ("" if saving is None else f"; the pick saves {100 * saving:.0f}% of full width's time")
        + ".",
        "",
    ]


def write_report_folder(out_dir: str | os.PathLike[str], results: Mapping[str, Any]) -> Path:
    """The whole report folder from a results.json dict (local or service alike): pareto.png,
    strategy.png, results.json, report.md and the finalists' strategy files (samples.png needs the
    model: the caller's). Returns report.md's path."""
    from ddsm_core.plots import plot_strategy
    from ddsm_core.strategy import Strategy

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = results["config"]
    spec = SearchSpec(objective=cfg.get("objective", "gflops"))  # how a record's cost is read
    cands = [Candidate.from_dict(c) for c in results["candidates"]]
    front = [Candidate.from_dict(c) for c in results["front"]]
    pick, knee = Candidate.from_dict(results["pick"]), Candidate.from_dict(results["knee"])
    plot_pareto(
        out / "pareto.png", cands, front,
        uniform={k: (v["fid"], spec.cost(v)) for k, v in results["uniform"].items()
                 if v.get("n_images") == cfg["n_images"]},  # multi-fidelity: top-rung ones only
        marked={"pick": pick.objectives, "knee": knee.objectives},  # type: ignore[dict-item]
        fid_label=f"FID ({results['extractor']})",
        title=f"{cfg['sampler']}, {cfg['steps']} steps; FID from {cfg['n_images']} images per candidate\n"
        f"(finalists re-measured with {cfg['final_images']}: report.md)",
        cost_label=COST_LABELS[spec.objective],
    )  # fmt: skip
    widths = tuple(cfg["widths"])
    strategies = {name: Strategy(cfg["sampler"], cfg["steps"], widths, c.genome) for name, c in
                  (("pick", pick), ("knee", knee))}  # fmt: skip
    plot_strategy(strategies, out / "strategy.png", title="searched strategies (width per sampler step)")
    return write_report(out, results)


def write_strategy_files(out_dir: str | os.PathLike[str], results: Mapping[str, Any]) -> list[Path]:
    """One strategy file per finalist, ``<name>.json`` (``pick``, ``knee``, ``full`` and, with the
    tolerance rule, ``weighted``), the format ``ddsm sample --strategy``, ``ddsm eval`` and the REST API
    take as is (sampler and steps inside); ``GET /searches/{id}/strategies/{name}`` serves the same."""
    paths = []
    for name, strategy in finalist_strategies(results).items():
        paths.append(write_text_atomic(Path(out_dir) / f"{name}.json", strategy.file_text()))
    return paths


def _floor_line(floors: Sequence[Mapping[str, Any]]) -> str:
    from ddsm_core.floor import RealDataFloor

    if not floors:
        return "Real-data floor: not recorded with these reference statistics."
    text = ", ".join(RealDataFloor.from_dict(f).describe() for f in reversed(floors))
    return f"Real-data floor (held-out real images vs the reference statistics): FID {text}."


def _pick_rule_text(results: Mapping[str, Any]) -> str:
    """How the pick was chosen; results.json from before the tolerance rule has no ``pick_rule``."""
    cfg = results["config"]
    weighted = f"argmin FID + {cfg['weight']} x {COST_UNITS[cfg.get('objective', 'gflops')]}"
    bisection = results.get("bisection")
    if results.get("pick_rule", "weighted") != "tolerance" or not bisection:
        return f"pick = {weighted}."
    absolute = bisection.get("tolerance")
    tol = f"{100 * bisection['rel_tolerance']:g}% of full width's FID" + (
        "" if absolute is None else f" ({absolute:.2f})"
    )
    return (
        f"pick = the cheapest front member of equal quality (paired interval's upper end vs full width "
        f"<= {tol}), found by bisection over the front; the weighted pick ({weighted}) is shown beside it."
    )


def _bisection_lines(bisection: Mapping[str, Any] | None) -> list[str]:
    """Every probe of the tolerance rule's bisection, in order, with its interval and verdict."""
    if not bisection:
        return []
    lines = [
        f"## Bisection over the front ({bisection['members']} members below full width)",
        "",
        "| probe | strategy | GFLOPs | search FID | FID | - full width [95%] | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, p in enumerate(bisection["probes"], 1):
        d = p.get("paired")
        interval = "-" if not d else f"{d['diff']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
        res = p.get("resolution") or {}
        if p.get("equal_quality"):
            verdict = "equal quality"
        elif not d:
            verdict = f"not equal: {p.get('reason')}"
        elif res.get("verdict") == "inconclusive":
            more = f"; about {res['images']} paired images would tell" if res.get("images") else ""
            verdict = f"inconclusive (estimate within the tolerance, upper end not){more}"
        else:
            verdict = str(res.get("verdict") or "not equal")
        lines.append(
            f"| {k} | `{p.get('strategy') or p['genome']}` | {_fmt(p.get('gflops'))} | "
            f"{_fmt(p.get('search_fid'))} | {_fmt(p.get('fid'))} | {interval} | {verdict} |"
        )
    pick = bisection.get("pick")
    lines += [
        "",
        f"Pick: genes {pick} ({len(bisection['probes'])} probe(s); full width when none passed).",
        "",
    ]
    shown = [p["paired"] for p in bisection["probes"] if p.get("paired")]
    return lines + ([_interval_note(shown[0]), ""] if shown else [])


def _paired_lines(paired: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Each finalist minus full width on the same seeds, with its interval, how it was made, and verdict."""
    if not paired:
        return []
    lines = [
        "## Paired with full width (same seeds)",
        "",
        "| finalist | FID - full width | 95% interval | method | ratio interval | "
        "equal quality (tolerance) |",
        "|---|---|---|---|---|---|",
    ]
    for name, d in paired.items():
        verdict = "yes" if d["equal_quality"] else "no"
        lines.append(
            f"| {name} | {d['diff']:+.2f} | [{d['low']:+.2f}, {d['high']:+.2f}] | {_method(d)} | "
            f"[{d['ratio_low']:.3f}, {d['ratio_high']:.3f}] | {verdict} (upper end <= {d['tolerance']:.2f}) |"
        )
    lines += ["", _interval_note(next(iter(paired.values()))), ""]
    return lines


def _method(interval: Mapping[str, Any]) -> str:
    """How a paired interval was made; results written before ``method`` existed are bootstraps."""
    return str(interval.get("method", "bootstrap"))


def _interval_note(d: Mapping[str, Any]) -> str:
    """What the paired intervals of a report are (:func:`ddsm_core.paired.interval_method`)."""
    from ddsm_core.paired import subsample_size

    reps, n = d.get("n_boot", "?"), d.get("n_images")
    if _method(d) == "subsample":
        drawn = f"{subsample_size(n)} of {n} images" if n else "half the images"
        how = (
            f"Subsampling over images ({reps} replicates of {drawn} drawn without replacement, the same "
            "for both strategies; used when there are fewer images than feature dimensions, where the "
            "bootstrap is distorted)"
        )
    else:
        how = f"Bootstrap over images ({reps} replicates, indices resampled jointly for both strategies)"
    return f"{how}; equal quality: the interval's upper end is within the tolerance."


def _json_default(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return list(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
