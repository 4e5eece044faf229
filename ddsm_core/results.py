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

from ddsm_core.search import Candidate, knee_point, non_dominated, reached_top
from ddsm_core.spec import SearchSpec
from ddsm_core.widths import format_width

FinalRecords = Mapping[str, Mapping[str, Any]]
"""Finalist name -> its evaluation record (an EvalResult dict: fid (None if failed), gflops, ...)."""


def front_of(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Pareto front over every successful candidate, sorted by cost (as ``SearchDriver.front``)."""
    ok = sorted((c for c in candidates if c.ok and reached_top(c.record)), key=lambda c: c.index)
    front = [ok[i] for i in non_dominated([c.objectives for c in ok])]  # type: ignore[misc]
    return sorted(front, key=lambda c: (c.cost, c.fid))


def point(c: Candidate) -> dict[str, Any]:
    """A front point as the REST views and the dashboard show it."""
    return {"genome": list(c.genome), "fid": c.fid, "gflops": c.cost, "generation": c.generation}


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
) -> dict[str, Any]:
    """``results.json``: the config, every candidate, the front, pick, knee, the finalists re-evaluated
    (``final``, keyed by :data:`~ddsm_core.spec.FINALISTS`), uniform widths, saving and cost."""
    front = front_of(candidates)
    genomes = spec.finalists(front)
    by_genome = {c.genome: c for c in candidates}
    finals = {name: {"genome": list(genomes[name]), **dict(final[name])} for name in genomes}
    uniform = {}
    for i, width in enumerate(spec.widths):
        cand = by_genome.get((i,) * spec.steps)
        if cand is not None and cand.ok:
            uniform[format_width(width)] = dict(cand.record)
    full_gflops = finals["full"].get("gflops")
    pick_gflops = finals["pick"].get("gflops")
    distinct = list({tuple(f["genome"]): f for f in finals.values()}.values())
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
        "pick": spec.pick(front).to_dict(),
        "knee": knee_point(front).to_dict(),
        "final": finals,
        "uniform": uniform,
        "full_gflops": full_gflops,
        "saving": (1.0 - pick_gflops / full_gflops) if full_gflops and pick_gflops is not None else None,
        "history": [dict(h) for h in history],
        "cost": cost_summary(
            candidates,
            distinct,
            retried_attempts=retried_attempts,
            search_wall_s=search_wall_s,
            total_wall_s=total_wall_s,
        ),  # fmt: skip
        "run": dict(run or {}),
    }


def summary(results: Mapping[str, Any]) -> dict[str, Any]:
    """``results`` without the bulky per-candidate list (what ``GET /searches/{id}`` shows)."""
    return {k: v for k, v in results.items() if k != "candidates"}
