"""A finished search as ``ddsm search``'s ``results.json`` + ``report.md`` (torch-free).

The same format as the local search (``ddsm_core.report.write_report``), built from the database, so a
search run on the service and one run locally are read the same way.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from api.db.models import CandidateState
from api.db.repository import CandidateRecord, Repository, SearchRecord
from api.specs import SearchSpec, cost_table
from ddsm_core.errors import DDSMError
from ddsm_core.search import SearchDriver
from ddsm_core.widths import format_width


def _record(spec: SearchSpec, genome: list[int], cand: CandidateRecord | None, table: Any) -> dict[str, Any]:
    """A finalist's metrics with every column the report prints (failed: FID None)."""
    gflops = spec.gflops(genome, table)
    calls = len(spec.strategy(genome).network_calls())
    base: dict[str, Any] = {"fid": None, "gflops": gflops, "gflops_per_call": gflops / calls}
    base.update(latency_s=math.nan, strategy=spec.strategy(genome).describe())
    base["n_images"] = cand.n_images if cand else None
    if cand is not None and cand.state == CandidateState.COMPLETE and cand.metrics:
        base.update(cand.metrics)
    elif cand is not None:
        base["reason"] = cand.error
    return {"genome": list(genome), **base}


def build_results(repo: Repository, search: SearchRecord) -> dict[str, Any]:
    if not search.result or not search.algorithm_state:
        raise DDSMError(f"search {search.id} is {search.status.value}: its report exists once it is COMPLETE")
    spec = SearchSpec.from_dict(search.config)
    net, stats = repo.get_supernet(search.supernet_id), repo.get_reference_stats(search.reference_stats_id)
    assert net is not None and net.gflops is not None and stats is not None
    table = cost_table(net.gflops)
    driver = SearchDriver.from_state_dict(search.algorithm_state)
    finals = {c.genome: c for c in repo.candidates(search.id, phase="final")}
    final = {
        name: _record(spec, entry["genome"], finals.get(tuple(entry["genome"])), table)
        for name, entry in search.result["final"].items()
    }
    uniform = {}
    for i, width in enumerate(spec.widths):
        cand = driver.lookup((i,) * spec.steps)
        if cand is not None and cand.ok:
            row = _record(spec, list(cand.genome), None, table)
            uniform[format_width(width)] = {**row, **cand.record, "n_images": spec.n_images}
    search_cands = repo.candidates(search.id, phase="search")
    elapsed = (search.ended_at or search.updated_at) - search.created_at
    return {
        "config": {
            **spec.search_config().to_dict(),
            **spec.to_dict(),
            "checkpoint": f"supernet {net.id} '{net.name}' (sha256 {net.artifact_sha256[:12]})",
            "stats": f"reference statistics {stats.id} '{stats.name}' ({stats.dataset})",
            "service_search_id": search.id,
        },
        "extractor": stats.extractor,
        "candidates": [c.to_dict() for c in driver.candidates],
        "front": [c.to_dict() for c in driver.front()],
        "pick": driver.pick(spec.weight).to_dict(),
        "knee": driver.knee().to_dict(),
        "final": final,
        "uniform": uniform,
        "full_gflops": final.get("full", {}).get("gflops"),
        "saving": search.result.get("saving"),
        "history": driver.history,
        "cost": {
            "evaluations": len(search_cands),
            "search_images_sampled": sum(c.n_images for c in search_cands),
            "final_images_sampled": sum(c.n_images for c in finals.values()),
            "retried_attempts": sum(c.attempt - 1 for c in search_cands),
            "failed_candidates": sum(c.state == CandidateState.FAILED for c in search_cands),
            "workers": len({c.worker for c in search_cands if c.worker}),
            "search_wall_s": elapsed.total_seconds(),
        },
    }


def write_search_report(out: Path, results: dict[str, Any]) -> Path:
    """results.json, report.md, pareto.png and strategy.png into ``out`` (samples.png is the caller's)."""
    from ddsm_core.plots import plot_strategy
    from ddsm_core.report import plot_pareto, write_report
    from ddsm_core.search import Candidate
    from ddsm_core.strategy import Strategy

    out.mkdir(parents=True, exist_ok=True)
    cfg = results["config"]
    cands = [Candidate.from_dict(c) for c in results["candidates"]]
    front = [Candidate.from_dict(c) for c in results["front"]]
    pick, knee = Candidate.from_dict(results["pick"]), Candidate.from_dict(results["knee"])
    plot_pareto(
        out / "pareto.png", cands, front,
        uniform={k: (v["fid"], v["gflops"]) for k, v in results["uniform"].items()},
        marked={"pick": pick.objectives, "knee": knee.objectives},  # type: ignore[dict-item]
        fid_label=f"FID ({results['extractor']})",
        title=f"{cfg['sampler']}, {cfg['steps']} steps, {cfg['n_images']} images per candidate",
    )  # fmt: skip
    widths = tuple(cfg["widths"])
    strategies = {name: Strategy(cfg["sampler"], cfg["steps"], widths, c.genome) for name, c in
                  (("pick", pick), ("knee", knee))}  # fmt: skip
    plot_strategy(strategies, out / "strategy.png", title="searched strategies (width per sampler step)")
    return write_report(out, results)
