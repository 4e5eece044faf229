"""What a search produced: the front, pick, knee, finalists, uniform baselines, cost, results.json.

The one builder of ``results.json``: ``ddsm search`` (in-process evaluations) and the service's
``GET /searches/{id}/report`` (evaluations on workers, rows in the database) both call
:func:`build_results`, so a search run either way is read the same way. Torch-free.

Execution details that differ by nature between a local and a service run (where it ran, workers,
devices, resumption) live under ``"run"``; timings are the ``*wall_s`` keys of ``"cost"`` and each
record's ``seconds`` / ``latency_s``. Everything else is a function of the spec and the evaluations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ddsm_core.latency import LatencyTable
from ddsm_core.search import Candidate, knee_point, non_dominated, reached_top
from ddsm_core.spec import SearchSpec
from ddsm_core.strategy import Strategy
from ddsm_core.widths import format_width

FinalRecords = Mapping[str, Mapping[str, Any]]
"""Finalist name -> its evaluation record (an EvalResult dict: fid (None if failed), gflops, ...)."""


def front_of(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Pareto front over every successful candidate, sorted by cost (as ``SearchDriver.front``)."""
    ok = sorted((c for c in candidates if c.ok and reached_top(c.record)), key=lambda c: c.index)
    front = [ok[i] for i in non_dominated([c.objectives for c in ok])]  # type: ignore[misc]
    return sorted(front, key=lambda c: (c.cost, c.fid))


def point(c: Candidate) -> dict[str, Any]:
    """A front point as the REST views and the dashboard show it: GFLOPs always, the predicted
    latency when a table gave one, and ``cost``, the search's objective (one of the two)."""
    return {"genome": list(c.genome), "fid": c.fid, "gflops": c.record.get("gflops", c.cost),
            "predicted_latency_s": c.record.get("predicted_latency_s"), "cost": c.cost,
            "generation": c.generation}  # fmt: skip


def progress(candidates: Sequence[Candidate], history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the service stores after every generation: the front so far and the history."""
    return {"front": [c.to_dict() for c in front_of(candidates)], "history": [dict(h) for h in history]}


def front_points(stored: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The front points of a stored :func:`progress` or :func:`build_results` dict (no unpickling)."""
    if not stored:
        return []
    return [point(Candidate.from_dict(c)) for c in stored.get("front", [])]


def _calls(record: Mapping[str, Any]) -> int:
    return int(record.get("n_images") or 0) * int(record.get("network_calls") or 0)


def _spent(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The evaluations behind a candidate: one per rung reached (multi-fidelity), else the record."""
    fidelity = record.get("fidelity")
    return list(fidelity["evaluations"]) if isinstance(fidelity, Mapping) else [record]


def rung_counts(candidates: Sequence[Candidate]) -> list[dict[str, int]]:
    """Evaluations and image-steps (images x network calls) per image count, smallest first."""
    per: dict[int, dict[str, int]] = {}
    for c in candidates:
        for e in _spent(c.record):
            n = int(e.get("n_images") or 0)
            row = per.setdefault(n, {"n_images": n, "evaluations": 0, "image_steps": 0})
            row["evaluations"] += 1
            row["image_steps"] += _calls(e)
    return [per[n] for n in sorted(per)]


def cost_summary(
    candidates: Sequence[Candidate],
    finals: Sequence[Mapping[str, Any]],
    *,
    retried_attempts: int = 0,
    search_wall_s: float | None = None,
    total_wall_s: float | None = None,
) -> dict[str, Any]:
    """Work done: evaluations, images and network calls (search and distinct finalists), retries;
    ``rungs``: evaluations and image-steps (= network calls) per image count of the search."""
    spent = [e for c in candidates for e in _spent(c.record)]
    return {
        "evaluations": len(candidates),
        "failed_candidates": sum(not c.ok for c in candidates),
        "retried_attempts": retried_attempts,
        "search_images_sampled": sum(int(e.get("n_images") or 0) for e in spent),
        "search_network_calls": sum(_calls(e) for e in spent),
        "search_network_calls_run": sum(
            round(_calls(e) * (1 - (e.get("reused_fraction") or 0.0))) for e in spent
        ),
        "rungs": rung_counts(candidates),
        "final_images_sampled": sum(int(r.get("n_images") or 0) for r in finals),
        "final_network_calls": sum(_calls(r) for r in finals),
        "search_wall_s": search_wall_s,
        "total_wall_s": total_wall_s,
    }


def build_results(
    spec: SearchSpec,
    candidates: Sequence[Candidate],
    history: Sequence[Mapping[str, Any]],
    final: FinalRecords,
    *,
    extractor: str,
    checkpoint: str,
    stats: str,
    retried_attempts: int = 0,
    search_wall_s: float | None = None,
    total_wall_s: float | None = None,
    run: Mapping[str, Any] | None = None,
    floors: Sequence[Mapping[str, Any]] = (),
    paired: Mapping[str, Mapping[str, Any]] | None = None,
    latency: LatencyTable | None = None,
    bisection: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``results.json``: the config, every candidate, the front, pick, knee, the finalists re-evaluated
    (``final``, keyed by :meth:`~ddsm_core.spec.SearchSpec.finalist_names`), uniform widths, saving
    and cost.

    :param floors: the reference statistics' real-data floors (``RealDataFloor`` dicts, ``floors``).
    :param paired: finalist name -> its paired interval vs full width (``paired``; see
        :func:`ddsm_core.paired.paired_vs_full`, which needs the ``final`` records built here, so a
        caller may also fill it in afterwards).
    :param latency: the supernet's latency table on the sampling device: every finalist and uniform
        record gets its ``predicted_latency_s`` (:meth:`~ddsm_core.spec.SearchSpec.latency`), whatever
        the objective, and ``latency_table`` / ``latency_saving`` say which table and how much.
    :param bisection: the tolerance rule's ``bisection`` (:func:`ddsm_core.pick.bisection_summary`:
        tolerance, probes with their intervals and verdicts, the pick); needed with that rule.

    ``seeds`` says which seeds ranked the candidates and which gave the finalists' verdict
    (:meth:`~ddsm_core.spec.SearchSpec.seeds`: ``search``, ``final`` and ``held_out``).
    """
    front = front_of(candidates)
    if spec.pick_rule == "tolerance" and (not bisection or bisection.get("pick") is None):
        raise ValueError("the tolerance rule's results need its bisection (the pick is not known yet)")
    genomes = spec.finalists(front, None if spec.pick_rule == "weighted" else bisection["pick"])  # type: ignore[index]
    by_genome = {c.genome: c for c in candidates}
    finals = {name: {"genome": list(genomes[name]), **dict(final[name])} for name in genomes}
    uniform = {}
    for i, width in enumerate(spec.widths):
        cand = by_genome.get((i,) * spec.steps)
        if cand is not None and cand.ok:
            uniform[format_width(width)] = dict(cand.record)
    if latency is not None:
        for name, record in finals.items():
            record["predicted_latency_s"] = spec.latency(genomes[name], latency)
        for i, width in enumerate(spec.widths):
            if format_width(width) in uniform:
                uniform[format_width(width)]["predicted_latency_s"] = spec.latency((i,) * spec.steps, latency)
    full_gflops = finals["full"].get("gflops")
    pick_gflops = finals["pick"].get("gflops")
    probes = list((bisection or {}).get("probes") or ())
    distinct = list({tuple(f["genome"]): f for f in (*finals.values(), *probes)}.values())
    return {
        "config": {
            **spec.search_config().to_dict(),
            **spec.to_dict(),
            "checkpoint": checkpoint,
            "stats": stats,
        },  # fmt: skip
        "extractor": extractor,
        "candidates": [c.to_dict() for c in sorted(candidates, key=lambda c: c.index)],
        "front": [c.to_dict() for c in front],
        "pick_rule": spec.pick_rule,
        "pick": by_genome[genomes["pick"]].to_dict(),
        "weighted_pick": spec.pick(front).to_dict(),
        "bisection": None if bisection is None else dict(bisection),
        "knee": knee_point(front).to_dict(),
        "final": finals,
        "uniform": uniform,
        "full_gflops": full_gflops,
        "saving": (1.0 - pick_gflops / full_gflops) if full_gflops and pick_gflops is not None else None,
        "latency_table": None if latency is None else latency_summary(latency, spec.batch_size),
        "latency_saving": _latency_saving(finals) if latency is not None else None,
        "history": [dict(h) for h in history],
        "cost": cost_summary(
            candidates,
            distinct,
            retried_attempts=retried_attempts,
            search_wall_s=search_wall_s,
            total_wall_s=total_wall_s,
        ),  # fmt: skip
        "run": dict(run or {}),
        "floors": [dict(f) for f in floors],
        "paired": {k: dict(v) for k, v in (paired or {}).items()},
        "seeds": spec.seeds(),
    }


def final_seeds(results: Mapping[str, Any]) -> list[int]:
    """``[first, last]`` seed of a results.json's finalist images; results from before held-out seeds
    (no ``seeds``) measured their finalists on the search's seeds, from ``eval_seed``."""
    if results.get("seeds"):
        return list(results["seeds"]["final"])
    cfg = results["config"]
    return [cfg["eval_seed"], cfg["eval_seed"] + cfg["final_images"] - 1]


def latency_summary(table: LatencyTable, batch_size: int) -> dict[str, Any]:
    """Which table predicted the latencies, and at what batch size (results.json's ``latency_table``)."""
    return {"device": table.device, "dtype": table.dtype, "threads": table.threads,
            "batch_sizes": list(table.batch_sizes), "at_batch_size": batch_size,
            "model": {k: v for k, v in table.model.items() if k != "config"},
            "date": table.method.get("date")}  # fmt: skip


def _latency_saving(finals: Mapping[str, Mapping[str, Any]]) -> float | None:
    full, pick = finals["full"].get("predicted_latency_s"), finals["pick"].get("predicted_latency_s")
    return 1.0 - pick / full if full and pick is not None else None


def finalist_strategies(results: Mapping[str, Any]) -> dict[str, Strategy]:
    """Every finalist of a results.json as a strategy, keyed by its name in ``final`` (pick, knee,
    full and, with the tolerance rule, weighted): the one source of the report folder's ``<name>.json``
    files and of ``GET /searches/{id}/strategies/{name}``, so both give the same file."""
    cfg = results["config"]
    widths = tuple(cfg["widths"])
    return {name: Strategy(cfg["sampler"], cfg["steps"], widths, tuple(record["genome"]))
            for name, record in results["final"].items()}  # fmt: skip


def summary(results: Mapping[str, Any]) -> dict[str, Any]:
    """``results`` without the bulky per-candidate list (what ``GET /searches/{id}`` shows)."""
    return {k: v for k, v in results.items() if k != "candidates"}
