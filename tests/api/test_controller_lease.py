"""The lease heartbeat: a tick longer than ``lease_ttl_s`` keeps its search (api.controller.LeaseHeartbeat).

The slow step is the finish's paired bootstraps (``SearchController._paired``, ~90 s at CIFAR scale),
slowed by a sleep that stands for compute time; the database stays real."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from api.controller import SearchController
from api.db.models import JobStatus, Search
from api.db.repository import Repository
from api.settings import Settings
from tests.factories import Outbox, complete_sent, make_search, small_spec

WEIGHTED = small_spec(pick_rule="weighted")  # the finish is one tick: its bootstraps, then the results
# (3 s: the heartbeat has ttl - ttl/3 = 2 s of slack, which a test process starved by its neighbours needs)
TTL_S = 3.0
SLOW_S = 6.5  # the finish's compute time: more than twice the lease


def lease_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ddsm-lease")]


def at_the_final_tick(repo: Repository, controller: SearchController, outbox: Outbox, search: int) -> None:
    """Drive ``search`` until its next tick is the finish (every finalist evaluated)."""
    for _ in range(100):
        row = repo.get_search(search)
        final = repo.candidates(search, phase="final")
        if row is not None and row.status == JobStatus.FINISHING and final and all(c.finished for c in final):
            return
        controller.tick(search)
        complete_sent(repo, outbox)
    raise AssertionError("the finalists were never all evaluated")


def slow_finish(monkeypatch: pytest.MonkeyPatch, controller: SearchController) -> threading.Event:
    """Make the next finish's bootstraps take ``SLOW_S`` (later ones run at full speed); the event is set
    when the slow step starts, i.e. while the tick holds the lease."""
    entered, real, delays = threading.Event(), controller._paired, [SLOW_S]

    def paired(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        time.sleep(delays.pop() if delays else 0.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(controller, "_paired", paired)
    return entered


def start_slow_finish(
    repo: Repository, outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, SearchController]:
    search = make_search(repo, WEIGHTED)
    controller = SearchController(repo, outbox, Settings(lease_ttl_s=TTL_S), ident="a")
    at_the_final_tick(repo, controller, outbox, search)
    entered = slow_finish(monkeypatch, controller)
    assert controller.tick_all() == [search]
    assert entered.wait(30)
    return search, controller


def warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and text in r.getMessage()]


def test_a_tick_longer_than_the_lease_keeps_it_and_leaves_no_thread_behind(
    repo: Repository, outbox: Outbox, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="api.controller")
    search, controller = start_slow_finish(repo, outbox, monkeypatch)
    try:
        refused, began = [], time.monotonic()
        while not controller.wait_ticks(0.2):  # another replica tries all along, and so does the loop
            refused.append((time.monotonic() - began, not repo.acquire_lease(search, "b", TTL_S)))
            assert controller.tick_all() == []  # still in flight: not started twice
        assert all(ok for _, ok in refused) and refused[-1][0] > 2 * TTL_S  # (tried past two lease spans)
        # the tick's writes landed: the search is complete, and the lease given back with it
        row = repo.get_search(search)
        assert row is not None and row.status == JobStatus.COMPLETE and row.controller_id is None
        assert lease_threads() == []
        assert warnings(caplog, "lease") == []  # a renewed lease is nothing to report
    finally:
        controller.stop()


def test_a_heartbeat_that_finds_its_lease_taken_stops_and_the_next_tick_takes_it_again(
    repo: Repository, outbox: Outbox, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="api.controller")
    search, controller = start_slow_finish(repo, outbox, monkeypatch)
    try:
        # another controller holds the lease now (as after a database blip longer than the lease)
        assert repo._update(
            Search, Search.id == search, controller_id="b", lease_until=repo.now() + timedelta(seconds=60)
        )
        deadline = time.monotonic() + 10
        while not warnings(caplog, "lease lost to controller b") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert search in controller._inflight  # the tick still computes: its heartbeat stopped alone
        assert lease_threads() == []
        assert controller.wait_ticks(30)
        assert len(warnings(caplog, "lease lost to controller b")) == 1
        row = repo.get_search(search)  # the tick's finish was refused: b's search, still finishing
        assert row is not None and row.status == JobStatus.FINISHING and row.controller_id == "b"
        assert controller.tick_all() == [search] and controller.wait_ticks(30)
        assert repo.get_search(search).status == JobStatus.FINISHING  # type: ignore[union-attr]
        assert repo.release_lease(search, "b")  # b stops: the next tick takes the lease as usual
        assert controller.tick_all() == [search] and controller.wait_ticks(30)
        assert repo.get_search(search).status == JobStatus.COMPLETE  # type: ignore[union-attr]
    finally:
        controller.stop()


def test_a_database_error_in_the_heartbeat_is_logged_and_never_reaches_the_tick(
    repo: Repository, outbox: Outbox, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Renewals fail (the database, for the heartbeat only): each is logged, the heartbeat stops once the
    lease may have lapsed, the controller logs the unrenewed lease once, and the tick goes on: nobody took
    the lease, so its writes land."""
    caplog.set_level(logging.WARNING, logger="api.controller")
    real = repo.acquire_lease

    def flaky(*args: Any, **kwargs: Any) -> bool:
        if threading.current_thread().name.startswith("ddsm-lease"):
            raise OperationalError("UPDATE searches", {}, ConnectionRefusedError("connection refused"))
        return real(*args, **kwargs)

    monkeypatch.setattr(repo, "acquire_lease", flaky)
    search, controller = start_slow_finish(repo, outbox, monkeypatch)
    try:
        while not controller.wait_ticks(0.1):
            controller.tick_all()  # the loop's watchdog (_overrun) sees the unrenewed lease
        assert 1 <= len(warnings(caplog, "lease could not be renewed")) <= 3
        assert len(warnings(caplog, "its lease was not renewed")) == 1
        assert lease_threads() == []
        assert repo.get_search(search).status == JobStatus.COMPLETE  # type: ignore[union-attr]
    finally:
        controller.stop()
