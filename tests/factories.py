"""Test data for the service's tests and benchmarks: one copy of each, written through the repository.

- ``TABLE``: a supernet cost table (4 widths) the searches' GFLOPs come from;
- ``ready(repo)``: a COMPLETE supernet and reference statistics; ``make_search(repo, spec)`` adds a search;
- ``search_body(net, stats)``: a small search as POSTed to ``/searches``; ``small_spec()`` the same search
  as a spec;
- ``Outbox``: a fake dispatcher that remembers what was sent (nothing is delivered);
- ``complete_sent(repo, outbox)``: a simulated worker (claim -> fast evaluation -> complete);
- ``local_run(spec, tmp)`` / ``local_front(spec, tmp)``: the search ``ddsm search``'s driver runs locally
  with the fast evaluator (multi-fidelity rungs included, the pick by the spec's rule: no features, so
  no probe is shown equal), and its front; ``front_of(points)`` the
  service's front in the same form.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from api.db.models import JobStatus
from api.db.repository import Repository
from ddsm_core.costs import CostTable
from ddsm_core.latency import LatencyTable
from ddsm_core.pick import run_bisection
from ddsm_core.results import build_results, front_points
from ddsm_core.search import Evaluation, SearchRun, run_search
from ddsm_core.spec import SearchSpec
from workers.fast_eval import fast_metrics
from workers.tasks import with_cost

if TYPE_CHECKING:
    from api.controller import SearchController

TABLE: dict[str, Any] = {
    "widths": [0.25, 0.5, 0.75, 1.0],
    "gflops": [1.0, 2.0, 3.0, 4.0],
    "gflops_conv_linear": None,
}
SEARCH = {"sampler": "ddim", "steps": 4, "population": 6, "generations": 2, "n_images": 4,
          "final_images": 8, "weight": 2.0, "mutation_rate": 0.2}  # fmt: skip

Front = list[tuple[list[int], float, float]]  # (genome, FID, GFLOPs) per point


def ready(repo: Repository, table: Mapping[str, Any] = TABLE) -> tuple[int, int]:
    """A COMPLETE supernet with cost ``table`` and COMPLETE reference statistics: their ids."""
    net = repo.create_supernet("net", "a" * 64, {})
    repo.supernet_ready(net, dict(table), {})
    return net, repo.create_reference_stats("digits", "digits", "domain", artifact_sha256="b" * 64)


def small_spec(**change: Any) -> SearchSpec:
    """The search of ``search_body`` over all of TABLE's widths."""
    return SearchSpec(widths=tuple(TABLE["widths"]), **{**SEARCH, **change})


def make_search(repo: Repository, spec: SearchSpec, table: Mapping[str, Any] = TABLE) -> int:
    """A RUNNING search of ``spec`` on a ready supernet and statistics (as POST /searches leaves it)."""
    net, stats = ready(repo, table)
    return repo.create_search("s", net, stats, spec.to_dict())


def search_body(net: int, stats: int, **change: object) -> dict[str, object]:
    return {"supernet_id": net, "reference_stats_id": stats, **SEARCH, **change}


class Outbox:
    """A fake dispatcher: ``sent`` holds ``(kind, args)`` per message, in order; nothing is delivered."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[int, ...]]] = []

    def evaluate_candidate(self, candidate_id: int, attempt: int) -> None:
        self.sent.append(("evaluate", (candidate_id, attempt)))

    def train_supernet(self, run_id: int, attempt: int) -> None:
        self.sent.append(("train", (run_id, attempt)))

    def compute_reference_stats(self, stats_id: int) -> None:
        self.sent.append(("stats", (stats_id,)))

    def inspect_supernet(self, supernet_id: int) -> None:
        self.sent.append(("inspect", (supernet_id,)))

    def measure_latency(self, table_id: int) -> None:
        self.sent.append(("latency", (table_id,)))

    def evaluations(self) -> list[tuple[int, int]]:
        """``(candidate_id, attempt)`` of every evaluation sent and not taken yet."""
        return [(args[0], args[1]) for kind, args in self.sent if kind == "evaluate"]

    def take_evaluations(self) -> list[tuple[int, int]]:
        taken = self.evaluations()
        self.sent = [m for m in self.sent if m[0] != "evaluate"]
        return taken


def complete_sent(
    repo: Repository, outbox: Outbox, worker: str = "w", duplicate: bool = False, sleep_s: float = 0.0
) -> int:
    """A simulated worker for every evaluation sent: claim -> fast evaluation -> complete (a loser of the
    claim is dropped). ``duplicate`` delivers each message twice. Returns how many results it recorded."""
    recorded = 0
    for cid, attempt in outbox.take_evaluations() * (2 if duplicate else 1):
        if not repo.claim_candidate(cid, attempt, worker):
            continue
        cand = repo.get_candidate(cid)
        search = repo.get_search(cand.search_id) if cand else None
        net = repo.get_supernet(search.supernet_id) if search else None
        assert cand and search and net and net.gflops
        spec = SearchSpec.from_dict(search.config)
        metrics = fast_metrics(spec, cand.genome, CostTable.from_dict(net.gflops), sleep_s, cand.n_images)
        latency = None
        if search.latency_table_id is not None:  # as the worker: the objective's cost in the metrics
            row = repo.get_latency_table(search.latency_table_id)
            latency = LatencyTable.from_dict(row.table) if row and row.table else None
        metrics = with_cost(spec, cand.genome, metrics, latency)
        recorded += repo.complete_candidate(cid, attempt, worker, metrics)
    return recorded


def local_run(
    spec: SearchSpec, folder: Path, table: Mapping[str, Any] = TABLE, judge: Any = None
) -> SearchRun:
    """The search ``ddsm search``'s driver runs locally for ``spec`` with the fast evaluator
    (``judge``: the tolerance rule's probe verdicts, see ``run_search``; default none shown equal)."""
    costs = CostTable.from_dict(dict(table))

    def evaluate(genome: tuple[int, ...], n: int) -> Evaluation:
        m = spec.costs(genome, {**fast_metrics(spec, genome, costs, n_images=n), "n_images": n})
        return Evaluation((m["fid"], m["cost"]), None, m)

    return run_search(spec.search_config(), evaluate, folder, seed=spec.seed, n_images=spec.n_images,
                      final_images=spec.final_images, weight=spec.weight, progress=False,
                      finalists={"full": spec.full_width_genome()}, rungs=spec.rungs,
                      promote=spec.promote, rung_metric=spec.rung_metric, pick_rule=spec.pick_rule,
                      judge=judge)  # fmt: skip


def local_results(spec: SearchSpec, folder: Path) -> tuple[SearchRun, dict[str, Any]]:
    """:func:`local_run` and the results.json ``ddsm search`` writes for it (paths stand-ins)."""
    run = local_run(spec, folder)
    results = build_results(
        spec, run.driver.candidates, run.driver.history, {k: ev.record for k, ev in run.final.items()},
        extractor="domain", checkpoint="here", stats="there", search_wall_s=run.wall_s,
        bisection=run_bisection(spec, run),
    )  # fmt: skip
    return run, results


# what differs by nature between the service's results and a local run's: wall times, and on real
# workers the latency of the fast evaluator's sleeps (in-process controller tests keep it: IN_PROCESS)
IN_PROCESS = ("search_wall_s", "total_wall_s")
TIMINGS = ("latency_s", *IN_PROCESS)


def comparable(results: Mapping[str, Any], timings: Iterable[str] = TIMINGS) -> Any:
    """results.json without where it ran, its paths and the ``timings`` keys (at any depth), as JSON."""
    out = json.loads(json.dumps(results))
    out.pop("run")
    for key in ("checkpoint", "stats"):
        out["config"].pop(key)
    drop = set(timings)

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in drop}
        return [clean(v) for v in value] if isinstance(value, list) else value

    return clean(out)


def local_front(spec: SearchSpec, folder: Path, table: Mapping[str, Any] = TABLE) -> Front:
    return [(list(c.genome), c.fid, c.cost) for c in local_run(spec, folder, table).driver.front()]


def front_of(points: Iterable[Mapping[str, Any]]) -> Front:
    """Front points (GET /searches/{id}'s ``front``, or ``ddsm_core.results.front_points``) in
    local_front's form."""
    return [(list(p["genome"]), p["fid"], p["gflops"]) for p in points]


def drive(
    repo: Repository, controller: SearchController, outbox: Outbox, search: int, ticks: int = 300, **kw: Any
) -> None:
    """Tick ``search`` and complete what it sent (``complete_sent``'s options in ``kw``) until COMPLETE."""
    for _ in range(ticks):
        controller.tick(search)
        complete_sent(repo, outbox, **kw)
        if repo.get_search(search).status == JobStatus.COMPLETE:  # type: ignore[union-attr]
            return
    raise AssertionError("search did not complete")


def stored_front(repo: Repository, search: int) -> Front:
    """The front the service stored for ``search``, in local_front's form."""
    return front_of(front_points(repo.get_search(search).result))  # type: ignore[union-attr]
