"""What the dashboard shows beyond the REST resources, computed from stored rows (torch-free).

Every number here is derived from the candidates table and the stored search result, so a page shows
the same front and pick as the REST API and the report: the front is the non-dominated set of the
completed search-phase candidates in the search's own objective (GFLOPs/image, or predicted ms/image
for ``objective: latency``), the pick the stored result's (by its ``pick_rule``; while the search runs,
the argmin FID + weight * that cost of the front so far, the weighted pick). Both units are
given wherever both are known (GFLOPs always; predicted latency with a latency table). In a
multi-fidelity search the search phase is the top rung (the lower rungs' rows, phases ``rung0``, ...,
are listed with their own image counts but never enter the front, as in ``ddsm search --rungs``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from api.artifacts import ArtifactError, ArtifactStore
from api.controller import rung_phases
from api.db.models import CandidateState, JobStatus
from api.db.repository import CandidateRecord, Repository, SearchRecord, TrainingRunRecord
from api.run_outputs import finalist_grids, run_grid_steps, run_losses
from api.schemas import utc
from api.services import NotFound
from ddsm_core.compare import hypervolume_2d
from ddsm_core.costs import CostTable
from ddsm_core.latency import LatencyTable
from ddsm_core.search import Candidate
from ddsm_core.spec import COST_UNITS, SearchSpec

GRID_IMAGES = 16  # a finalist's sample grid shows its first 16 images (workers.compute.GRID_IMAGES)

Point = tuple[float, float]  # (cost, FID): both minimised


def front_indices(points: Sequence[Point]) -> list[int]:
    """Indices of the non-dominated points, sorted by cost (ties: the lower FID first)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front: list[int] = []
    best_fid = math.inf
    for i in order:
        if points[i][1] < best_fid:
            front.append(i)
            best_fid = points[i][1]
    return front


def hypervolume_per_generation(
    cands: Sequence[CandidateRecord], objective: str = "gflops"
) -> list[dict[str, Any]]:
    """Normalised hypervolume of the front of all candidates evaluated up to each generation, on the
    search's ``objective``.

    Reference point: the worst cost and FID seen in the whole search; the objectives are scaled by
    the box between the best and worst values, so 1.0 would be a single point best in both. The area
    is ddsm_core.compare's (the same hypervolume as ``ddsm compare`` and ``GET /searches/compare``)."""
    ok: list[tuple[int, Point]] = []  # (generation, (cost, FID))
    for c in cands:
        cost = candidate_cost(c, objective) if c.state == CandidateState.COMPLETE else None
        if cost is not None and c.fid is not None and math.isfinite(c.fid):
            ok.append((c.generation, (cost, c.fid)))
    if not ok:
        return []
    costs, fids = [p[0] for _, p in ok], [p[1] for _, p in ok]
    lo, ref = (min(costs), min(fids)), (max(costs), max(fids))
    span = (ref[0] - lo[0]) * (ref[1] - lo[1])
    rows = []
    for gen in sorted({g for g, _ in ok}):
        pts = [p for g, p in ok if g <= gen]
        front = [pts[i] for i in front_indices(pts)]
        hv = hypervolume_2d(front, ref) / span if span > 0 else 0.0
        rows.append({"generation": gen, "hypervolume": hv, "front_size": len(front), "evaluated": len(pts)})
    return rows


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def predicted_ms(metrics: dict[str, Any] | None) -> float | None:
    """The predicted latency a worker recorded (``predicted_latency_s``), in ms/image; None without one."""
    seconds = (metrics or {}).get("predicted_latency_s")
    ok = isinstance(seconds, int | float) and not isinstance(seconds, bool) and math.isfinite(seconds)
    return 1e3 * float(seconds) if ok else None


def candidate_cost(c: CandidateRecord, objective: str) -> float | None:
    """A finished candidate's cost in the search's ``objective``: GFLOPs/image or predicted ms/image
    (as ``SearchSpec.cost``), None when it has none (never the other unit in its place)."""
    if objective == "latency":
        return predicted_ms(c.metrics)
    return c.gflops if _finite(c.gflops) else None


def _candidate(c: CandidateRecord, objective: str) -> dict[str, Any]:
    metrics = c.metrics or {}
    latency = metrics.get("latency_s")
    return {
        "id": c.id,
        "phase": c.phase,
        "generation": c.generation,
        "genome": list(c.genome),
        "state": c.state.value,
        "attempt": c.attempt,
        "worker": c.worker,
        "n_images": c.n_images,
        "fid": c.fid if _finite(c.fid) else None,
        "gflops": c.gflops if _finite(c.gflops) else None,
        "predicted_ms": predicted_ms(metrics),
        "cost": candidate_cost(c, objective),
        "latency_s": latency
        if isinstance(latency, float) and math.isfinite(latency) and latency > 0
        else None,
        "intervals": {k: v for k, v in metrics.items() if _is_interval(k, v)},
        "error": c.error,
    }


def _is_interval(key: str, value: Any) -> bool:
    """A metric that is a (low, high) pair, e.g. a paired confidence interval of an FID difference."""
    named = "interval" in key or key.endswith("_ci")
    return named and isinstance(value, list | tuple) and len(value) == 2


def extractor_of(repo: Repository, search: SearchRecord, cands: Sequence[CandidateRecord]) -> str:
    """Which feature extractor produced the FIDs: the one the workers report, else the statistics'."""
    for c in cands:
        if c.metrics and isinstance(c.metrics.get("extractor"), str):
            return c.metrics["extractor"]
    stats = repo.get_reference_stats(search.reference_stats_id)
    return stats.extractor if stats is not None else "unknown extractor"


def full_width_gflops(repo: Repository, search: SearchRecord, spec: SearchSpec) -> float | None:
    net = repo.get_supernet(search.supernet_id)
    if net is None or not net.gflops:
        return None
    return spec.gflops(spec.full_width_genome(), CostTable.from_dict(net.gflops))


def full_width_costs(repo: Repository, search: SearchRecord, spec: SearchSpec) -> dict[str, float | None]:
    """Full width's cost per axis: ``gflops`` (GFLOPs/image), ``latency`` (predicted ms/image from the
    search's latency table; None without one), what the savings are relative to."""
    row = repo.get_latency_table(search.latency_table_id) if search.latency_table_id is not None else None
    ms = None
    if row is not None and row.table:
        ms = 1e3 * spec.latency(spec.full_width_genome(), LatencyTable.from_dict(row.table))
    return {"gflops": full_width_gflops(repo, search, spec), "latency": ms}


def _saving(value: float | None, full: float | None) -> float | None:
    return 1.0 - value / full if value is not None and full else None


def _marked(
    result: dict[str, Any] | None, by_genome: dict[tuple[int, ...], dict[str, Any]]
) -> dict[str, Any]:
    if not result:
        return {}
    out = {}
    for name in ("pick", "knee"):
        entry = result.get(name)
        if entry and tuple(entry["genome"]) in by_genome:
            out[name] = by_genome[tuple(entry["genome"])]["id"]
    return out


def pick_so_far(
    search: SearchRecord, front: Sequence[dict[str, Any]], full: dict[str, float | None] | None
) -> dict[str, Any] | None:
    """The stored pick of a finished search (finalist FID; ``rule``: its pick rule, ``weighted`` for
    results from before the rule existed), else argmin FID + w * cost of the front, the cost in the
    search's objective (``front`` entries: genome, fid, gflops, predicted_ms, cost).

    ``saving`` is the GFLOPs saving, ``latency_saving`` the predicted-time saving (None without a latency
    table), ``cost_saving`` the one of the search's objective; ``full``: full width's costs per axis."""
    result = search.result
    objective = str(search.config.get("objective", "gflops"))
    weight = float(search.config.get("weight", 0.0))
    full = full or {}
    unit = {"objective": objective, "unit": COST_UNITS[objective]}
    if result and result.get("pick"):
        pick = Candidate.from_dict(result["pick"])  # results.json (ddsm_core.results)
        final = (result.get("final") or {}).get("pick") or {}
        savings = {"gflops": result.get("saving"), "latency": result.get("latency_saving")}
        return {
            **unit,
            "genome": list(pick.genome),
            "gflops": pick.record.get("gflops", pick.cost if objective == "gflops" else None),
            "predicted_ms": predicted_ms(pick.record),
            "cost": pick.cost,
            "fid": pick.fid,
            "final_fid": final.get("fid"),
            "final_n_images": final.get("n_images"),
            "intervals": {k: v for k, v in final.items() if _is_interval(k, v)},
            "saving": savings["gflops"],
            "latency_saving": savings["latency"],
            "cost_saving": savings[objective],
            "final": True,
            "rule": result.get("pick_rule", "weighted"),
            # vs full width on the same seeds (ddsm_core.paired) and the real-data floor of its count
            "paired": (result.get("paired") or {}).get("pick"),
            "floor": _floor(result, final.get("n_images")),
        }
    if not front:
        return None
    best = min(front, key=lambda p: (p["fid"] + weight * p["cost"], p["cost"]))
    return {
        **unit,
        "genome": best["genome"],
        "gflops": best["gflops"],
        "predicted_ms": best.get("predicted_ms"),
        "cost": best["cost"],
        "fid": best["fid"],
        "final_fid": None,
        "final_n_images": None,
        "intervals": best.get("intervals", {}),
        "saving": _saving(best["gflops"], full.get("gflops")),
        "latency_saving": _saving(best.get("predicted_ms"), full.get("latency")),
        "cost_saving": _saving(best["cost"], full.get(objective)),
        "final": False,
        "rule": "weighted",  # (the front so far: no finalist is measured yet)
        "paired": None,
        "floor": None,
    }


def _floor(result: dict[str, Any], n_images: int | None) -> dict[str, Any] | None:
    from ddsm_core.floor import floor_of

    floor = floor_of({"floors": result.get("floors") or []}, n_images)
    return floor.to_dict() if floor is not None else None


def search_detail(repo: Repository, search: SearchRecord) -> dict[str, Any]:
    """Everything the search page draws: candidates, uniform baseline, front, pick/knee, hypervolume."""
    spec = SearchSpec.from_dict(search.config)
    rows = repo.candidates(search.id)
    searched = [c for c in rows if c.phase == "search"]
    cands = [_candidate(c, spec.objective) for c in rows]
    evaluated = [c for c in cands if c["phase"] == "search" and c["state"] == "COMPLETE"
                 and c["fid"] is not None and c["cost"] is not None]  # fmt: skip
    by_genome = {tuple(c["genome"]): c for c in evaluated}
    front = [evaluated[i] for i in front_indices([(c["cost"], c["fid"]) for c in evaluated])]
    uniform = []
    for i, width in enumerate(spec.widths):
        cand = by_genome.get((i,) * spec.steps)
        if cand is not None:
            uniform.append({"width": width, "candidate_id": cand["id"], "gflops": cand["gflops"],
                            "cost": cand["cost"], "fid": cand["fid"]})  # fmt: skip
    full = full_width_costs(repo, search, spec)
    pick = pick_so_far(search, front, full)
    marked = _marked(search.result, by_genome)
    if pick is not None and "pick" not in marked and tuple(pick["genome"]) in by_genome:
        marked["pick"] = by_genome[tuple(pick["genome"])]["id"]
    return {
        "id": search.id,
        "sampler": spec.sampler,
        "steps": spec.steps,
        "widths": list(spec.widths),
        "weight": spec.weight,
        "pick_rule": spec.pick_rule,
        "tolerance": spec.tolerance,
        "objective": spec.objective,
        "unit": COST_UNITS[spec.objective],
        "extractor": extractor_of(repo, search, searched),
        "full_gflops": full["gflops"],
        "full_predicted_ms": full["latency"],
        "candidates": cands,
        "evaluated": len(evaluated),
        "front": [c["id"] for c in front],
        "uniform": uniform,
        "marked": marked,
        "pick": pick,
        "hypervolume": hypervolume_per_generation(searched, spec.objective),
        "sample_grids": _search_grids(repo, search, spec),
    }


def _search_grids(repo: Repository, search: SearchRecord, spec: SearchSpec) -> dict[str, Any] | None:
    """The finalists' sample grids (pick, knee, full width and, with the tolerance rule, weighted: the
    same seeds, the finalists'), None before there are any."""
    grids = finalist_grids(repo, search)
    if not grids:
        return None
    return {
        "seeds": [spec.final_first_seed, spec.final_first_seed + min(GRID_IMAGES, spec.final_images) - 1],
        "held_out": spec.seeds()["held_out"],
        "grids": {name: {"candidate_id": g["candidate_id"], "genome": g["genome"],
                         "url": f"/searches/{search.id}/samples/{name}.png"} for name, g in grids.items()},
    }  # fmt: skip


def search_summary(repo: Repository, search: SearchRecord) -> dict[str, Any]:
    """One row of the dashboard's search list: progress and the best pick so far."""
    spec = SearchSpec.from_dict(search.config)
    counts = repo.count_candidates(search.id, phase=rung_phases(spec)[0])  # one row per genome
    searched = repo.candidates(search.id, phase="search", state=CandidateState.COMPLETE)
    points = [{"genome": list(c.genome), "gflops": c.gflops, "predicted_ms": predicted_ms(c.metrics),
               "cost": candidate_cost(c, spec.objective), "fid": c.fid} for c in searched]  # fmt: skip
    points = [p for p in points if p["cost"] is not None and _finite(p["fid"])]
    front = [points[i] for i in front_indices([(p["cost"], p["fid"]) for p in points])]
    full = full_width_costs(repo, search, spec)
    state = search.algorithm_state or {}
    total = spec.generations * spec.population
    finished = counts["COMPLETE"] + counts["FAILED"]
    done = search.status == JobStatus.COMPLETE
    return {
        "id": search.id,
        "name": search.name,
        "status": search.status.value,
        "sampler": spec.sampler,
        "steps": spec.steps,
        "objective": spec.objective,
        "unit": COST_UNITS[spec.objective],
        "generation": search.generation,
        "generations_done": int(state.get("generation", 0)),
        "generations": spec.generations,
        "candidates": counts,
        "percent": 100.0 if done else min(99.0, 100.0 * finished / max(total, 1)),
        "extractor": extractor_of(repo, search, searched[:1]),
        "pick": pick_so_far(search, front, full),
        "error": search.error,
        "created_at": utc(search.created_at).isoformat(),
    }


def training_detail(store: ArtifactStore, run: TrainingRunRecord) -> dict[str, Any]:
    """The per-width eval losses saved in the run's last checkpoint manifest (None before one exists),
    the per-width training loss curves and the sample grids the worker uploaded (None before any)."""

    eval_losses, step, error = None, None, None
    if run.last_checkpoint_sha256:
        try:
            manifest = json.loads(store.get_bytes(store.tree(run.last_checkpoint_sha256)["manifest.json"]))
            eval_losses, step = manifest.get("eval"), manifest.get("step")
        except (ArtifactError, KeyError, ValueError) as exc:
            error = f"could not read the last checkpoint's manifest: {exc}"
    try:
        curves = run_losses(store, run)
    except NotFound as exc:
        curves, error = None, str(exc)
    steps = run_grid_steps(run)
    grids = [{"step": k, "url": f"/training-runs/{run.id}/samples.png?step={k}"} for k in steps]
    return {
        "id": run.id,
        "checkpoint_step": step,
        "eval": eval_losses,
        "loss_curves": curves,
        "sample_grids": grids or None,
        "error": error,
    }
