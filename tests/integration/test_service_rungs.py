"""A multi-fidelity search on the real stack (Postgres, Redis, uvicorn, two Celery worker processes with
the fast evaluator): rungs are tasks, and the service ends where ``ddsm search --rungs`` ends locally for
the same seed and spec (the fast evaluator is deterministic per genome and image count)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from api.db.models import CandidateState
from api.db.repository import Repository
from ddsm_core.spec import SearchSpec
from tests.factories import comparable, front_of, local_results, ready, search_body

from .conftest import Stack

pytestmark = pytest.mark.integration

RUNGS = {"seed": 7, "population": 8, "generations": 3, "n_images": 64, "final_images": 128,
         "rungs": [8, 16], "promote": 0.25}  # fmt: skip


@pytest.mark.parametrize("rung_metric", ["paired", "fid"])
def test_a_rungs_search_over_rest_ends_where_the_local_one_ends(
    stack_factory: Callable[..., Stack], repo: Repository, tmp_path: Path, rung_metric: str
) -> None:
    """Both rung metrics: ``paired`` ranks the low rungs by the fast evaluator's stand-in
    ``paired_distance`` (workers/fast_eval.py), recorded by the workers and replayed by the controller."""
    stack = stack_factory(n_workers=2, evaluator="fast", fast_eval_seconds="0.05")
    net, stats = ready(repo)
    with stack.client() as http:
        reply = http.post("/searches", json=search_body(net, stats, **RUNGS, rung_metric=rung_metric))
        assert reply.status_code == 201, reply.text
        sid = reply.json()["id"]
        stack.wait_for(
            "the search to complete",
            lambda: http.get(f"/searches/{sid}").json()["status"] == "COMPLETE",
            timeout=180,
        )
        done = http.get(f"/searches/{sid}").json()
        report = http.get(f"/searches/{sid}/report").json()
    spec = SearchSpec.from_dict(done["config"])
    assert spec.rung_metric == rung_metric
    run, local = local_results(spec, tmp_path / "local")
    assert front_of(done["front"]) == [(list(c.genome), c.fid, c.cost) for c in run.driver.front()]
    assert done["result"]["pick"]["genome"] == list(run.pick.genome)
    assert comparable(report) == comparable(local)  # every candidate's told objectives, cost per rung
    # each rung ran as worker tasks: rows of its own phase and image count, each recorded once
    rows = [c for c in repo.candidates(sid) if c.phase != "final"]
    assert all(c.state == CandidateState.COMPLETE and c.attempt == 1 for c in rows)
    assert {c.phase: c.n_images for c in rows} == {"rung0": 8, "rung1": 16, "search": 64}
    counts = Counter(c.phase for c in rows)
    assert counts["rung0"] > counts["rung1"] > counts["search"]
    rungs = done["progress"]["rungs"]
    assert [r["candidates"]["COMPLETE"] for r in rungs] == [counts[p] for p in ("rung0", "rung1", "search")]
    # the low rungs' rows carry the distance their promotion was ranked by (paired only)
    paired = [c.metrics.get("paired_distance") is not None for c in rows if c.phase != "search"]
    assert all(paired) if rung_metric == "paired" else not any(paired)
