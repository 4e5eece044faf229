"""Stranded work on the real stack (fast evaluator): a worker that cannot reach the database, a worker
killed before its claim, and a database outage. Nothing is lost, failed or run twice."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from api.db.models import CandidateState
from api.db.repository import Repository
from tests.support import POSTGRES_ADMIN_URL

from .conftest import Stack
from .test_service_faults import post_search, wait_until_complete

pytestmark = pytest.mark.integration

FAST = {"evaluator": "fast", "fast_eval_seconds": "0.1", "infra_backoff_s": "0.2", "infra_backoff_max_s": "1"}


def wrong_database(pg_url: str) -> str:
    return make_url(pg_url).set(database="ddsm_no_such_database").render_as_string(hide_password=False)


def assert_each_candidate_completed_once(repo: Repository, sid: int) -> None:
    cands = repo.candidates(sid)
    assert cands and all(c.state == CandidateState.COMPLETE for c in cands), [c.state for c in cands]
    assert all(c.attempt == 1 for c in cands)  # never reaped nor run again


def test_a_worker_with_a_wrong_database_url_stops_and_a_healthy_one_completes_the_search(
    stack_factory: Callable[..., Stack], repo: Repository, pg_url: str
) -> None:
    stack = stack_factory(n_workers=0, **FAST)
    # it stops at its first failure: a small search may never give it more than one message
    poison = stack.start_worker(0, DATABASE_URL=wrong_database(pg_url), DDSM_WORKER_MAX_INFRA_FAILURES="1")
    healthy = stack.start_worker(1)
    with stack.client() as http:
        sid = post_search(http, repo)["id"]
        started = time.monotonic()
        wait_until_complete(stack, http, sid, timeout=90)
        took = time.monotonic() - started
    stack.wait_for("the poison worker to stop consuming", lambda: poison.poll() is not None, timeout=60)
    assert healthy.poll() is None
    assert "stops consuming" in (stack.logs / "worker0.log").read_text()
    assert_each_candidate_completed_once(repo, sid)
    assert took < 60


def test_a_worker_killed_before_its_claim_leaves_nothing_stranded(
    stack_factory: Callable[..., Stack], repo: Repository, pg_url: str
) -> None:
    """A worker that cannot reach the database holds its message (before any claim) while it backs off;
    SIGKILLed there, its message is gone until Redis' visibility timeout (a day): the controller sends
    the never-claimed candidate again within about 2 x the heartbeat once the queue is empty."""
    stack = stack_factory(n_workers=0, **{**FAST, "infra_backoff_s": "30", "infra_backoff_max_s": "30"})
    doomed = stack.start_worker(0, DATABASE_URL=wrong_database(pg_url))
    broker = redis.Redis.from_url(stack.env["CELERY_BROKER_URL"])
    with stack.client() as http:
        sid = post_search(http, repo)["id"]
        stack.wait_for("the worker to hold a message", lambda: broker.hlen("unacked") > 0, timeout=60)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        assert all(c.state == CandidateState.WAITING for c in repo.candidates(sid))
        killed = time.monotonic()
        stack.start_worker(1)
        wait_until_complete(stack, http, sid, timeout=90)
        took = time.monotonic() - killed
    assert_each_candidate_completed_once(repo, sid)
    assert took < 60  # before: the 600 s resend (and a day for Redis to give the message back)


def test_a_short_database_outage_never_fails_a_search(
    stack_factory: Callable[..., Stack], repo: Repository, pg_url: str
) -> None:
    stack = stack_factory(n_workers=2, **{**FAST, "fast_eval_seconds": "0.5"})
    name = make_url(pg_url).database
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with stack.client() as http:
        sid = post_search(http, repo)["id"]
        stack.wait_for("a running candidate", lambda: repo.candidates(sid, state=CandidateState.RUNNING))
        try:  # ~5 s during which no one reaches this run's database
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                conn.execute(
                    text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
                    {"d": name},
                )
            time.sleep(5)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            admin.dispose()
        done = wait_until_complete(stack, http, sid, timeout=90)
    assert done["status"] == "COMPLETE"
    cands = repo.candidates(sid)
    assert all(c.state == CandidateState.COMPLETE for c in cands)
    assert all(w.poll() is None for w in stack.workers)  # an outage stops no worker
