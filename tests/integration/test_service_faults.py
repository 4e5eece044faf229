"""Faults on the real stack with the fast evaluator: duplicate deliveries and a SIGKILLed worker."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from api.db.models import CandidateState
from api.db.repository import Repository
from api.queue import Dispatcher
from api.settings import Settings
from ddsm_core.costs import CostTable
from ddsm_core.search import Evaluation, run_search
from ddsm_core.spec import SearchSpec
from workers.fast_eval import fast_metrics

from .conftest import Stack

pytestmark = pytest.mark.integration

TABLE = {"widths": [0.25, 0.5, 0.75, 1.0], "gflops": [1.0, 2.0, 3.0, 4.0], "gflops_conv_linear": None}


def ready(repo: Repository) -> tuple[int, int]:
    net = repo.create_supernet("net", "a" * 64, {})
    repo.supernet_ready(net, TABLE, {})
    return net, repo.create_reference_stats("r", "digits", "domain", artifact_sha256="b" * 64)


def body(net: int, stats: int) -> dict[str, object]:
    return {
        "supernet_id": net,
        "reference_stats_id": stats,
        "sampler": "ddim",
        "steps": 4,
        "population": 6,
        "generations": 2,
        "n_images": 4,
        "final_images": 8,
        "weight": 2.0,
        "mutation_rate": 0.2,
        "seed": 5,
    }


def local_front(config: dict[str, object], tmp_path: Path) -> list[list[object]]:
    spec = SearchSpec.from_dict(config)

    def evaluate(genome: tuple[int, ...], n: int) -> Evaluation:
        m = fast_metrics(spec, genome, CostTable.from_dict(TABLE))
        return Evaluation((m["fid"], m["gflops"]))

    run = run_search(
        spec.search_config(),
        evaluate,
        tmp_path / "local",
        seed=spec.seed,
        n_images=spec.n_images,
        final_images=spec.final_images,
        weight=spec.weight,
        progress=False,
    )
    return [[list(c.genome), c.fid, c.cost] for c in run.driver.front()]


def assert_front_is_the_local_one(done: dict[str, Any], config: dict[str, object], tmp_path: Path) -> None:
    """The service's front equals the one `ddsm search` finds locally with the same seed."""
    assert [[p["genome"], p["fid"], p["gflops"]] for p in done["front"]] == local_front(config, tmp_path)


def wait_until_complete(stack: Stack, http: httpx.Client, sid: int, timeout: float) -> dict[str, Any]:
    stack.wait_for(
        "the search to complete",
        lambda: http.get(f"/searches/{sid}").json()["status"] == "COMPLETE",
        timeout=timeout,
    )
    return http.get(f"/searches/{sid}").json()


def test_every_message_delivered_twice_is_recorded_once(
    stack_factory: Callable[..., Stack], repo: Repository, tmp_path: Path
) -> None:
    stack = stack_factory(n_workers=2, evaluator="fast", fast_eval_seconds="0.2")
    net, stats = ready(repo)
    with stack.client() as http:
        search = http.post("/searches", json=body(net, stats)).json()
        sid = search["id"]
        duplicate = Dispatcher(Settings(celery_broker_url=stack.env["CELERY_BROKER_URL"]))
        sent: set[int] = set()

        def duplicate_new_messages() -> bool:
            for cand in repo.candidates(sid):
                if cand.id not in sent and (cand.sent_attempt or cand.state != CandidateState.WAITING):
                    duplicate.evaluate_candidate(cand.id, cand.attempt)
                    duplicate.evaluate_candidate(cand.id, cand.attempt)
                    sent.add(cand.id)
            return http.get(f"/searches/{sid}").json()["status"] == "COMPLETE"

        stack.wait_for("the search to complete", duplicate_new_messages, timeout=120)
        done = http.get(f"/searches/{sid}").json()
        before = repo.candidates(sid)
        duplicate_new_messages()  # late duplicates of finished candidates, too
        assert len(sent) == len(before)
        queue = redis.Redis.from_url(stack.env["CELERY_BROKER_URL"])
        stack.wait_for("the duplicates to be consumed", lambda: queue.llen("eval") == 0, timeout=60)
        time.sleep(1.0)
    cands = repo.candidates(sid)
    assert cands == before  # nothing recorded twice, finished rows unchanged
    assert all(c.state == CandidateState.COMPLETE and c.attempt == 1 for c in cands)
    assert len({(c.phase, c.genome_hash) for c in cands}) == len(cands)
    assert_front_is_the_local_one(done, search["config"], tmp_path)


@pytest.mark.slow
def test_worker_killed_mid_candidate_runs_it_again_and_the_search_completes(
    stack_factory: Callable[..., Stack], repo: Repository, tmp_path: Path
) -> None:
    stack = stack_factory(n_workers=2, evaluator="fast", fast_eval_seconds="1.0")
    net, stats = ready(repo)
    with stack.client() as http:
        search = http.post("/searches", json=body(net, stats)).json()
        sid = search["id"]
        running = stack.wait_for(
            "a running candidate", lambda: repo.candidates(sid, state=CandidateState.RUNNING), timeout=60
        )
        victim = running[0]
        pid = int(victim.worker.rsplit(":", 1)[1])  # type: ignore[union-attr]
        assert pid in [p.pid for p in stack.workers]
        os.kill(pid, signal.SIGKILL)
        done = wait_until_complete(stack, http, sid, timeout=150)
    again = repo.get_candidate(victim.id)
    assert again is not None and again.state == CandidateState.COMPLETE
    assert again.attempt == 2 and again.worker != victim.worker
    assert_front_is_the_local_one(done, search["config"], tmp_path)


@pytest.mark.slow
def test_api_killed_mid_search_resumes_the_search_after_restart(
    stack_factory: Callable[..., Stack], repo: Repository, tmp_path: Path
) -> None:
    stack = stack_factory(n_workers=1, evaluator="fast", fast_eval_seconds="0.3")
    net, stats = ready(repo)
    with stack.client() as http:
        search = http.post("/searches", json=body(net, stats)).json()
        sid = search["id"]
        stack.wait_for("the second generation", lambda: repo.get_search(sid).generation >= 1, timeout=60)  # type: ignore[union-attr]
        stack.restart_api()
        done = wait_until_complete(stack, http, sid, timeout=120)
    assert_front_is_the_local_one(done, search["config"], tmp_path)
