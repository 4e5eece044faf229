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
from ddsm_core.spec import SearchSpec
from tests.factories import front_of, local_front, ready, search_body

from .conftest import Stack

pytestmark = pytest.mark.integration


def post_search(http: httpx.Client, repo: Repository) -> dict[str, Any]:
    """A small search (seed 5) on a ready supernet and statistics, created over REST."""
    net, stats = ready(repo)
    reply = http.post("/searches", json=search_body(net, stats, seed=5))
    assert reply.status_code == 201, reply.text
    return reply.json()  # type: ignore[no-any-return]


def assert_front_is_the_local_one(done: dict[str, Any], config: dict[str, object], tmp_path: Path) -> None:
    """The service's front equals the one `ddsm search` finds locally with the same seed."""
    assert front_of(done["front"]) == local_front(SearchSpec.from_dict(config), tmp_path / "local")


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
    with stack.client() as http:
        search = post_search(http, repo)
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
    with stack.client() as http:
        search = post_search(http, repo)
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
    with stack.client() as http:
        search = post_search(http, repo)
        sid = search["id"]
        stack.wait_for("the second generation", lambda: repo.get_search(sid).generation >= 1, timeout=60)  # type: ignore[union-attr]
        stack.restart_api()
        done = wait_until_complete(stack, http, sid, timeout=120)
    assert_front_is_the_local_one(done, search["config"], tmp_path)
