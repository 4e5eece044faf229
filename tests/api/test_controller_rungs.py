"""Multi-fidelity searches on the service: rungs are tasks (candidate rows of one phase per rung), and the
controller ends where ``ddsm search --rungs`` ends for the same seed (same front, pick and results.json).

Workers are simulated (``tests.factories.complete_sent``: claim -> fast evaluation -> complete); the real
worker processes run the same search in tests/integration/test_service_rungs.py.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from api.controller import SearchController, _evaluation, rung_phases
from api.db.models import CandidateState
from api.db.repository import Repository
from api.settings import Settings
from ddsm_core.search import halving_step
from tests.factories import (
    IN_PROCESS,
    Outbox,
    comparable,
    complete_sent,
    drive,
    local_front,
    local_results,
    make_search,
    small_spec,
    stored_front,
)

SPEC = small_spec(
    population=8, generations=3, seed=3, n_images=64, final_images=128, rungs=(8, 16), promote=0.25
)


def test_phases_name_each_rung_and_the_top_is_the_search_phase() -> None:
    assert rung_phases(SPEC) == ("rung0", "rung1", "search")
    assert rung_phases(small_spec()) == ("search",)


def test_a_rungs_search_writes_the_results_of_the_local_search(repo: Repository, tmp_path: Path) -> None:
    search, outbox = make_search(repo, SPEC), Outbox()
    drive(repo, SearchController(repo, outbox, Settings()), outbox, search)
    service = repo.get_search(search).result  # type: ignore[union-attr]
    run, local = local_results(SPEC, tmp_path / "local")
    # candidates, front, pick, finalists, cost per rung
    assert comparable(service, IN_PROCESS) == comparable(local, IN_PROCESS)
    assert stored_front(repo, search) == local_front(SPEC, tmp_path / "again")
    assert [r["n_images"] for r in service["cost"]["rungs"]] == [8, 16, 64]
    assert any(not c["record"]["fidelity"]["top"] for c in service["candidates"])  # some stopped early


def test_each_rung_is_a_row_of_its_phase_with_its_own_images_and_metrics(repo: Repository) -> None:
    search, outbox = make_search(repo, SPEC), Outbox()
    drive(repo, SearchController(repo, outbox, Settings()), outbox, search)
    rows = [c for c in repo.candidates(search) if c.phase != "final"]
    assert all(c.state == CandidateState.COMPLETE for c in rows)
    assert {c.phase: c.n_images for c in rows} == {"rung0": 8, "rung1": 16, "search": 64}
    per_phase = Counter(c.phase for c in rows)
    assert per_phase["rung0"] > per_phase["rung1"] > per_phase["search"] >= 1
    assert len({(c.phase, c.genome_hash) for c in rows}) == len(rows)  # at most one row per rung
    by_phase = {p: {c.genome: c for c in rows if c.phase == p} for p in ("rung0", "rung1", "search")}
    assert set(by_phase["search"]) <= set(by_phase["rung1"]) <= set(by_phase["rung0"])  # promoted only
    for genome, top in by_phase["search"].items():
        low = by_phase["rung0"][genome]
        assert low.metrics["fid"] > top.metrics["fid"]  # each rung's own metrics (a biased low rung)
    result = repo.get_search(search).result  # type: ignore[union-attr]
    told = {tuple(c["genome"]): c["record"]["fidelity"] for c in result["candidates"]}
    for genome, fidelity in told.items():
        assert [e["fid"] for e in fidelity["evaluations"]] == [
            by_phase[p][genome].metrics["fid"] for p in ("rung0", "rung1", "search")[: fidelity["rung"] + 1]
        ]


def test_duplicates_a_dead_controller_and_a_dead_worker_change_nothing(
    repo: Repository, tmp_path: Path
) -> None:
    expected = local_front(SPEC, tmp_path / "local")
    search, outbox = make_search(repo, SPEC), Outbox()
    first = SearchController(repo, outbox, Settings(lease_ttl_s=0.05, stale_after_s=0.05))
    first.tick(search)
    victim, attempt = outbox.evaluations()[0]
    assert repo.claim_candidate(victim, attempt, "doomed")  # a worker that dies mid rung-0 task
    outbox.sent.remove(("evaluate", (victim, attempt)))
    for _ in range(4):
        first.tick(search)
        complete_sent(repo, outbox, duplicate=True)
    time.sleep(0.1)  # the first controller dies; its lease expires, the victim's heartbeat is stale
    second = SearchController(repo, outbox, Settings(stale_after_s=0.05))
    first.tick(search)
    drive(repo, second, outbox, search, duplicate=True)
    assert stored_front(repo, search) == expected
    again = repo.get_candidate(victim)
    assert again is not None and again.state == CandidateState.COMPLETE and again.attempt == 2


@pytest.mark.parametrize("rung_metric", ["paired", "fid"])
def test_the_controller_promotes_what_the_shared_halving_step_says(
    repo: Repository, rung_metric: str
) -> None:
    spec = SPEC.replace(rung_metric=rung_metric)
    search, outbox = make_search(repo, spec), Outbox()
    controller = SearchController(repo, outbox, Settings())
    controller.tick(search)  # generation 0 at rung 0
    gen0 = [c.genome for c in repo.candidates(search, phase="rung0")]
    assert len(gen0) == spec.population and not repo.candidates(search, phase="rung1")
    complete_sent(repo, outbox)
    controller.tick(search)  # rung 0 finished: the promoted quarter goes on to rung 1
    results = [{c.genome: _evaluation(c) for c in repo.candidates(search, phase="rung0")}]
    step = halving_step(gen0, spec.ladder, spec.promote, results, rung_metric)
    assert step.level == 1 and len(step.todo) == 2
    swapped = {"paired": "fid", "fid": "paired"}[rung_metric]
    other = halving_step(gen0, spec.ladder, spec.promote, results, swapped)
    assert set(other.todo) != set(step.todo)  # the metric decides (the fast evaluator's ranks disagree)
    assert [c.genome for c in repo.candidates(search, phase="rung1")] == step.todo
    rung1 = repo.candidates(search, phase="rung1")
    assert sorted(cid for cid, _ in outbox.evaluations()) == [c.id for c in rung1]
    assert repo.get_search(search).generation == 0  # type: ignore[union-attr]  # not told yet


def test_only_the_lease_holder_adds_rung_rows_and_never_twice(repo: Repository) -> None:
    search, outbox = make_search(repo, SPEC), Outbox()
    controller = SearchController(repo, outbox, Settings())
    controller.tick(search)
    genome = (0,) * SPEC.steps
    assert not repo.add_candidates(search, "another-controller", 0, [genome], 16, phase="rung1")
    assert repo.candidates(search, phase="rung1") == []
    assert repo.add_candidates(search, controller.id, 0, [genome, genome], 16, phase="rung1")
    assert repo.add_candidates(search, controller.id, 0, [genome], 16, phase="rung1")  # a repeated tick
    rows = repo.candidates(search, phase="rung1")
    assert [(c.genome, c.n_images, c.state) for c in rows] == [(genome, 16, CandidateState.WAITING)]
