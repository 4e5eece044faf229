"""The tolerance pick on the real stack (Postgres, Redis, uvicorn, two Celery worker processes with the
fast evaluator): the finalist stage sends its bisection's probes as successive finalist tasks and ends
with the results.json ``ddsm search``'s code writes locally for the same seed and spec.

The fast evaluator keeps no per-image features, so no probe gets a paired interval: each is "not
shown equal" and the bisection climbs the front to full width, the same probes in the same order on
both executors. The real evaluator's intervals (and a pick inside the front) are compared in
test_service_search.py (slow: it trains a supernet) and, on stored features, in
tests/api/test_controller.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from api.db.models import CandidateState
from api.db.repository import Repository
from ddsm_core.spec import SearchSpec
from tests.factories import comparable, local_results, ready, search_body

from .conftest import Stack

pytestmark = pytest.mark.integration

PICK = {"seed": 5, "population": 8, "generations": 3, "n_images": 16, "final_images": 32}


def test_the_service_bisects_the_front_as_ddsm_search_does(
    stack_factory: Callable[..., Stack], repo: Repository, tmp_path: Path
) -> None:
    stack = stack_factory(n_workers=2, evaluator="fast", fast_eval_seconds="0.05")
    net, stats = ready(repo)
    with stack.client() as http:
        reply = http.post("/searches", json=search_body(net, stats, **PICK))
        assert reply.status_code == 201, reply.text
        sid = reply.json()["id"]
        done = stack.wait_status(http, f"/searches/{sid}", timeout=180)
        report = http.get(f"/searches/{sid}/report").json()
    spec = SearchSpec.from_dict(done["config"])
    assert spec.pick_rule == "tolerance" and spec.tolerance == 0.05  # the defaults
    run, local = local_results(spec, tmp_path / "local")
    assert comparable(report) == comparable(local)  # the probes, their verdicts, pick and weighted pick
    result = done["result"]
    probes = [p["genome"] for p in result["bisection"]["probes"]]
    assert len(probes) >= 2 and result["pick"]["genome"] == list(spec.full_width_genome())
    assert result["weighted_pick"]["genome"] == list(run.driver.pick(spec.weight).genome)
    assert result["final"]["weighted"]["genome"] == result["weighted_pick"]["genome"]
    # each probe was a finalist task at final_images, evaluated once; the finalists as well
    rows = {c.genome: c for c in repo.candidates(sid, phase="final")}
    assert {tuple(g) for g in probes} <= set(rows)
    assert all(
        c.state == CandidateState.COMPLETE and c.attempt == 1 and c.n_images == 32 for c in rows.values()
    )
    assert len(rows) == len({*map(tuple, probes), *(tuple(f["genome"]) for f in result["final"].values())})
