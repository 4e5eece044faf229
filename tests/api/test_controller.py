from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from api.artifacts import FEATURES_METRIC, ArtifactStore
from api.controller import MAX_TICK_ERRORS, SearchController
from api.db.models import CandidateState, JobStatus
from api.db.repository import Repository
from api.settings import Settings
from ddsm_core.costs import CostTable
from ddsm_core.fid import FeatureStats
from ddsm_core.floor import compute_floors, floors_of, with_floors
from ddsm_core.paired import paired_vs_full
from ddsm_core.pick import probe_verdict, run_bisection
from ddsm_core.spec import SearchSpec
from tests.factories import (
    IN_PROCESS,
    TABLE,
    Outbox,
    comparable,
    complete_sent,
    drive,
    local_front,
    local_results,
    local_run,
    make_search,
    small_spec,
    stored_front,
)
from workers.fast_eval import fast_metrics

SPEC = small_spec(population=8, generations=3, seed=3)
WEIGHTED = SPEC.replace(pick_rule="weighted")


def test_controller_gives_the_same_front_as_the_local_search(repo: Repository, tmp_path: Path) -> None:
    search, outbox = make_search(repo, SPEC), Outbox()
    drive(repo, SearchController(repo, outbox, Settings()), outbox, search)
    assert stored_front(repo, search) == local_front(SPEC, tmp_path / "local")
    result = repo.get_search(search).result  # type: ignore[union-attr]
    assert result["final"]["pick"]["fid"] is not None and result["final"]["pick"]["n_images"] == 8
    # the fast evaluator keeps no features: no probe has a paired interval, none is shown equal, so the
    # tolerance pick is full width; the weighted pick is measured beside it
    assert result["pick_rule"] == "tolerance" and result["saving"] == 0
    assert result["pick"]["genome"] == result["final"]["full"]["genome"] == list(SPEC.full_width_genome())
    probes = result["bisection"]["probes"]
    assert probes and all(not p["equal_quality"] and "no paired interval" in p["reason"] for p in probes)
    assert result["weighted_pick"]["genome"] == result["final"]["weighted"]["genome"]
    # the weighted rule picks from the search's FIDs alone
    search, outbox = make_search(repo, WEIGHTED), Outbox()
    drive(repo, SearchController(repo, outbox, Settings()), outbox, search)
    weighted = repo.get_search(search).result  # type: ignore[union-attr]
    assert (
        0 < weighted["saving"] < 1 and weighted["bisection"] is None and "weighted" not in weighted["final"]
    )
    assert weighted["pick"] == weighted["weighted_pick"] == result["weighted_pick"]


def test_the_service_and_a_local_search_write_the_same_results(repo: Repository, tmp_path: Path) -> None:
    search, outbox = make_search(repo, SPEC), Outbox()
    drive(repo, SearchController(repo, outbox, Settings()), outbox, search)
    service = repo.get_search(search).result  # type: ignore[union-attr]
    run, local = local_results(SPEC, tmp_path / "local")
    assert service["run"]["where"] == "service" and service["cost"]["search_wall_s"] > 0
    assert comparable(service, IN_PROCESS) == comparable(local, IN_PROCESS)
    assert set(service["final"]) == {"pick", "weighted", "knee", "full"}
    assert service["cost"]["final_images_sampled"] > 0


def test_every_candidate_delivered_twice_is_recorded_once(repo: Repository, tmp_path: Path) -> None:
    search, outbox = make_search(repo, SPEC), Outbox()
    drive(repo, SearchController(repo, outbox, Settings()), outbox, search, duplicate=True)
    assert stored_front(repo, search) == local_front(SPEC, tmp_path / "local")
    hashes = [c.genome_hash for c in repo.candidates(search, phase="search")]
    assert len(hashes) == len(set(hashes))


def test_a_new_controller_resumes_where_a_dead_one_stopped(repo: Repository, tmp_path: Path) -> None:
    search, outbox = make_search(repo, SPEC), Outbox()
    first = SearchController(repo, outbox, Settings(lease_ttl_s=0.05))
    for _ in range(3):
        first.tick(search)
        complete_sent(repo, outbox)
    time.sleep(0.1)  # the first controller dies; its lease expires
    second = SearchController(repo, outbox, Settings())
    first.tick(search)  # a zombie tick would steal nothing once the second holds the lease
    drive(repo, second, outbox, search)
    assert stored_front(repo, search) == local_front(SPEC, tmp_path / "local")


def test_dead_worker_candidate_runs_again_then_fails_with_penalty(repo: Repository) -> None:
    search, outbox = make_search(repo, SPEC), Outbox()
    controller = SearchController(repo, outbox, Settings(stale_after_s=0.01, max_attempts=2))
    controller.tick(search)
    victim, attempt = outbox.evaluations()[0]
    assert repo.claim_candidate(victim, attempt, "doomed")  # and never heartbeats again
    outbox.sent.remove(("evaluate", (victim, attempt)))
    complete_sent(repo, outbox)
    time.sleep(0.05)
    controller.tick(search)
    assert (victim, 2) in outbox.evaluations()
    assert repo.claim_candidate(victim, 2, "doomed-too")
    outbox.sent.clear()
    time.sleep(0.05)
    controller.tick(search)
    cand = repo.get_candidate(victim)
    assert cand is not None and cand.state == CandidateState.FAILED and cand.attempt == 2
    drive(repo, controller, outbox, search)  # the search goes on with a penalty for the victim
    result = repo.get_search(search).result  # type: ignore[union-attr]
    assert list(cand.genome) not in [p["genome"] for p in result["front"]]


def test_cancel_stops_dispatch_and_resume_continues(repo: Repository, tmp_path: Path) -> None:
    search, outbox = make_search(repo, SPEC), Outbox()
    controller = SearchController(repo, outbox, Settings())
    controller.tick(search)
    assert repo.cancel_search(search)
    assert complete_sent(repo, outbox) == 0  # claims fail on a cancelled search
    controller.tick(search)
    assert outbox.evaluations() == []
    assert repo.resume_search(search)
    drive(repo, controller, outbox, search)
    assert stored_front(repo, search) == local_front(SPEC, tmp_path / "local")


DIM = 6


def _features(genome: tuple[int, ...], n: int, dim: int) -> np.ndarray:
    """Per-image features of a finalist: shared noise (the same seeds) plus a genome-dependent shift,
    as the images of two strategies from the same seeds are."""
    common = np.random.default_rng(0).normal(size=(n, dim))
    shift = 0.1 * sum((3 - g) * (i + 1) for i, g in enumerate(genome))
    return common + shift + 0.05 * np.random.default_rng(len(genome) + sum(genome)).normal(size=(n, dim))


def _floored_search(
    repo: Repository, store: ArtifactStore, tmp_path: Path, spec: SearchSpec = WEIGHTED
) -> tuple[int, FeatureStats]:
    """A search on statistics with real-data floors, stored in ``store`` and registered with them."""
    real = np.random.default_rng(1).normal(size=(400, DIM))
    stats = FeatureStats.from_features(real[:300], "domain:test")
    stats = with_floors(stats, compute_floors(real[300:], stats, "test", counts=(20, 50)))
    floors = [f.to_dict() for f in floors_of(stats)]
    sha = store.put_file(stats.save(tmp_path / "stats.npz"))
    net = repo.create_supernet("net", "a" * 64, {})
    repo.supernet_ready(net, dict(TABLE), {})
    sid = repo.create_reference_stats("s", "digits", stats.extractor, artifact_sha256=sha, floors=floors)
    assert repo.get_reference_stats(sid).floors == floors  # type: ignore[union-attr]
    return repo.create_search("s", net, sid, spec.to_dict()), stats


def _drive_keeping_features(
    repo: Repository,
    controller: SearchController,
    outbox: Outbox,
    search: int,
    store: ArtifactStore,
    tmp_path: Path,
    lose: bool = False,
) -> dict[tuple[int, ...], np.ndarray]:
    """A worker whose finalists keep their features (``lose``: it names an artifact nobody stored)."""
    kept: dict[tuple[int, ...], np.ndarray] = {}
    for _ in range(200):
        controller.tick(search)
        for cid, attempt in outbox.take_evaluations():
            assert repo.claim_candidate(cid, attempt, "w")
            cand = repo.get_candidate(cid)
            assert cand is not None
            metrics = fast_metrics(SPEC, cand.genome, CostTable.from_dict(TABLE))
            if cand.phase == "final":
                kept[cand.genome] = _features(cand.genome, cand.n_images, DIM)
                np.save(tmp_path / "f.npy", kept[cand.genome])
                metrics[FEATURES_METRIC] = "0" * 64 if lose else store.put_file(tmp_path / "f.npy")
            assert repo.complete_candidate(cid, attempt, "w", metrics)
        if repo.get_search(search).status == JobStatus.COMPLETE:  # type: ignore[union-attr]
            return kept
    raise AssertionError("search did not complete")


def test_the_results_carry_the_floors_and_the_paired_intervals_of_the_finalists(
    repo: Repository, tmp_path: Path
) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    search, stats = _floored_search(repo, store, tmp_path)
    outbox = Outbox()
    controller = SearchController(repo, outbox, Settings(), store=store)
    kept = _drive_keeping_features(repo, controller, outbox, search, store, tmp_path)
    result = repo.get_search(search).result  # type: ignore[union-attr]
    assert result["floors"] == [f.to_dict() for f in floors_of(stats)] and len(result["floors"]) == 3
    final = result["final"]
    assert all(FEATURES_METRIC not in rec for rec in final.values())  # bookkeeping, not a record
    assert final["pick"]["genome"] != final["full"]["genome"]
    # the numbers `ddsm search` computes from its in-process features of the same finalists
    local = paired_vs_full(final, kept, stats, seed=SPEC.eval_seed)
    assert set(result["paired"]) == {"pick", "knee"} and result["paired"] == local  # (weighted rule)
    pick = result["paired"]["pick"]
    assert pick["low"] <= pick["diff"] <= pick["high"] and pick["n_images"] == SPEC.final_images
    full_fid = stats.fid(FeatureStats.from_features(kept[tuple(final["full"]["genome"])], stats.extractor))
    assert pick["fid_a"] == pytest.approx(full_fid, rel=1e-12)  # from the stored full-width features


def test_a_lost_features_artifact_leaves_the_search_complete_without_intervals(
    repo: Repository, tmp_path: Path
) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    search, _ = _floored_search(repo, store, tmp_path)
    outbox = Outbox()
    controller = SearchController(repo, outbox, Settings(), store=store)
    _drive_keeping_features(repo, controller, outbox, search, store, tmp_path, lose=True)
    result = repo.get_search(search).result  # type: ignore[union-attr]
    assert result["paired"] == {} and len(result["floors"]) == 3 and result["final"]["pick"]["fid"]


def test_the_tolerance_pick_is_the_bisection_ddsm_search_runs_on_the_same_features(
    repo: Repository, tmp_path: Path
) -> None:
    """The service's finalist stage bisects the front with one probe task per round and decides each
    probe from the stored features; ``run_search`` deciding with the same features (as ``ddsm search``
    does with its in-process ones) probes the same members in the same order and picks the same."""
    spec = SPEC.replace(tolerance=1.0)  # (the fast scores' scale: some members pass, some do not)
    store = ArtifactStore(str(tmp_path / "store"))
    search, stats = _floored_search(repo, store, tmp_path, spec)
    outbox = Outbox()
    controller = SearchController(repo, outbox, Settings(), store=store, cache_drivers=False)
    kept = _drive_keeping_features(repo, controller, outbox, search, store, tmp_path)
    result = repo.get_search(search).result  # type: ignore[union-attr]
    full = spec.full_width_genome()
    local_full: dict[str, Any] = {}

    def judge(genome: tuple[int, ...], ev: Any) -> dict[str, Any] | None:
        features = {g: _features(g, spec.final_images, DIM) for g in (genome, full)}
        return probe_verdict(local_full, {"genome": list(genome), **ev.record}, features, stats,
                             seed=spec.eval_seed, rel_tolerance=spec.tolerance)  # fmt: skip

    local_full.update(
        {"genome": list(full), "fid": fast_metrics(spec, full, CostTable.from_dict(TABLE))["fid"]}
    )
    run = local_run(spec, tmp_path / "local", judge=judge)
    local = run_bisection(spec, run)
    assert local is not None and result["bisection"]["pick"] == local["pick"] == list(run.pick.genome)
    verdicts = [(p["genome"], p["equal_quality"], p["paired"]["high"]) for p in result["bisection"]["probes"]]
    assert verdicts == [(p["genome"], p["equal_quality"], p["paired"]["high"]) for p in local["probes"]]
    # an answer inside the front, found on evidence both ways: a probe passed and a probe failed
    assert {v for _, v, _ in verdicts} == {True, False} and result["pick"]["genome"] != list(full)
    assert result["final"]["pick"]["genome"] == local["pick"] and result["saving"] > 0
    assert result["bisection"]["tolerance"] == pytest.approx(spec.tolerance * result["final"]["full"]["fid"])
    assert result["paired"]["pick"]["equal_quality"] and "weighted" in result["final"]
    # every probe was a finalist task, evaluated once: the finalists and one probe per round
    rows = repo.candidates(search, phase="final")
    assert all(c.attempt == 1 for c in rows) and len({c.genome for c in rows}) == len(rows)
    assert {tuple(p["genome"]) for p in local["probes"]} <= {c.genome for c in rows} == set(kept)


class QueueOutbox(Outbox):
    """An outbox whose eval queue reports ``depth`` messages waiting."""

    depth = 0

    def eval_queue_depth(self) -> int:
        return self.depth


def test_a_candidate_sent_but_never_claimed_is_sent_again_once_the_queue_is_empty(repo: Repository) -> None:
    search, outbox = make_search(repo, SPEC), QueueOutbox()
    controller = SearchController(repo, outbox, Settings(resend_after_s=1.0))
    controller.tick(search)
    first = outbox.take_evaluations()
    assert len(first) == SPEC.population
    time.sleep(1.1)
    outbox.depth = 3  # messages still waiting: those candidates are queued, not lost
    controller.tick(search)
    assert outbox.evaluations() == []
    outbox.depth = 0  # the queue is empty and they were never claimed: their messages are lost
    controller.tick(search)
    assert sorted(outbox.take_evaluations()) == sorted(first)
    controller.tick(search)  # not again before resend_after_s
    assert outbox.evaluations() == []


def test_resend_defaults_to_twice_the_heartbeat() -> None:
    assert Settings(heartbeat_interval_s=4.0).resolved_resend_after_s() == 8.0
    assert Settings(heartbeat_interval_s=4.0, resend_after_s=30).resolved_resend_after_s() == 30


def test_the_algorithm_state_is_written_once_per_generation(repo: Repository) -> None:
    from sqlalchemy import event

    writes: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE SEARCHES") and "algorithm_state" in statement:
            writes.append(statement)

    search, outbox = make_search(repo, SPEC), Outbox()
    event.listen(repo.engine, "before_cursor_execute", count)
    try:
        drive(repo, SearchController(repo, outbox, Settings()), outbox, search)
    finally:
        event.remove(repo.engine, "before_cursor_execute", count)
    assert len(writes) == SPEC.generations + 1  # each generation's ask (+ the previous tell), finalists


class OneSlowOneBroken(SearchController):
    """A controller whose tick of search ``slow`` blocks until ``release`` is set (a huge generation, a
    lock) and whose tick of ``broken`` raises; it counts the ticks each search is in at once."""

    def __init__(self, *args: Any, slow: int, broken: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.slow, self.broken, self.release = slow, broken, threading.Event()
        self.entered: dict[int, int] = {}
        self.running: dict[int, int] = {}
        self.most_at_once: dict[int, int] = {}
        self._count = threading.Lock()

    def tick(self, search_id: int, reap: bool = True) -> None:
        with self._count:
            self.entered[search_id] = self.entered.get(search_id, 0) + 1
            self.running[search_id] = self.running.get(search_id, 0) + 1
            self.most_at_once[search_id] = max(self.most_at_once.get(search_id, 0), self.running[search_id])
        try:
            if search_id == self.slow:
                assert self.release.wait(60)
            if search_id == self.broken:
                raise RuntimeError("a search whose state cannot be read")
            super().tick(search_id, reap)
        finally:
            with self._count:
                self.running[search_id] -= 1


def sent_to(repo: Repository, outbox: Outbox) -> set[int]:
    return {repo.get_candidate(cid).search_id for cid, _ in outbox.evaluations()}  # type: ignore[union-attr]


def test_a_slow_or_failing_search_does_not_stall_another_and_no_search_ticks_twice_at_once(
    repo: Repository,
) -> None:
    slow, broken, fast = (make_search(repo, SPEC) for _ in range(3))
    outbox = Outbox()
    controller = OneSlowOneBroken(repo, outbox, Settings(controller_threads=2), slow=slow, broken=broken)
    try:
        assert set(controller.tick_all()) == {slow, broken, fast}
        for n in range(MAX_TICK_ERRORS):
            deadline = time.monotonic() + 30
            while {broken, fast} & set(controller._inflight) and time.monotonic() < deadline:
                time.sleep(0.01)
            if n < MAX_TICK_ERRORS - 1:  # the slow tick holds one of the two threads all along
                assert slow not in controller.tick_all()  # still ticking: not started again
        # the fast search went on: its first generation was sent, and the tick after it found nothing to do
        assert sent_to(repo, outbox) == {fast} and controller.entered[fast] == MAX_TICK_ERRORS
        assert repo.get_search(broken).status == JobStatus.FAILED  # type: ignore[union-attr]
        assert "cannot be read" in (repo.get_search(broken).error or "")  # type: ignore[union-attr]
        assert controller.entered[slow] == 1  # still in its first tick: never started again meanwhile
        controller.release.set()
        assert controller.wait_ticks(30)
        controller.tick_all()
        assert controller.wait_ticks(30)
        assert sent_to(repo, outbox) == {fast, slow}
        assert controller.most_at_once == {slow: 1, broken: 1, fast: 1}
    finally:
        controller.release.set()
        controller.stop()


def test_the_driver_cache_changes_no_result(repo: Repository) -> None:
    """A controller keeping its driver in memory and one rebuilding it from the stored state on every
    tell write the same results.json; the cached one rebuilds nothing."""
    outcomes = []
    for cache in (True, False):
        search, outbox = make_search(repo, SPEC), Outbox()
        controller = SearchController(repo, outbox, Settings(), cache_drivers=cache)
        drive(repo, controller, outbox, search)
        result = repo.get_search(search).result  # type: ignore[union-attr]
        outcomes.append((comparable(result, IN_PROCESS), controller.rebuilds))
    (cached, cached_rebuilds), (rebuilt, rebuilds) = outcomes
    assert cached == rebuilt
    # each tell, each tick of the finalist stage that sends a probe, and the finish
    probes = len(cached["bisection"]["probes"])
    assert cached_rebuilds == 0 and SPEC.generations + 1 <= rebuilds <= SPEC.generations + probes + 1


def test_a_cached_driver_is_dropped_once_another_replica_advanced_the_search(
    repo: Repository, tmp_path: Path
) -> None:
    """Replica A caches its driver; B takes the lease over and tells a generation; when A gets the search
    back its cache is stale (the stored generation moved on): it rebuilds from B's state and the front is
    the local search's."""
    search, outbox = make_search(repo, SPEC), Outbox()
    a = SearchController(repo, outbox, Settings(lease_ttl_s=0.05), ident="a")
    b = SearchController(repo, outbox, Settings(lease_ttl_s=0.05), ident="b")
    a.tick(search)  # generation 0 asked: A caches its driver
    complete_sent(repo, outbox)
    a.tick(search)  # generation 0 told, 1 asked (from the cache)
    complete_sent(repo, outbox)
    assert a.rebuilds == 0 and search in a._drivers
    time.sleep(0.1)  # A's lease expires
    b.tick(search)  # B tells generation 1 and asks 2 (rebuilt: it never saw this search)
    assert b.rebuilds == 1 and repo.get_search(search).generation == 2  # type: ignore[union-attr]
    complete_sent(repo, outbox)
    time.sleep(0.1)  # B's lease expires; A comes back with a driver of generation 1
    a.tick(search)
    assert a.rebuilds == 1  # the stale driver was not used
    drive(repo, a, outbox, search)
    assert a.rebuilds == 1
    assert stored_front(repo, search) == local_front(SPEC, tmp_path / "local")


def test_an_idle_tick_never_reads_the_algorithm_state(repo: Repository) -> None:
    from sqlalchemy import event

    search, outbox = make_search(repo, SPEC), Outbox()
    controller = SearchController(repo, outbox, Settings())
    controller.tick(search)  # generation 0 asked and sent; nothing finished yet
    reads: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "algorithm_state" in statement:
            reads.append(statement)

    event.listen(repo.engine, "before_cursor_execute", count)
    try:
        controller.tick(search)
        controller.tick(search)
    finally:
        event.remove(repo.engine, "before_cursor_execute", count)
    assert reads == []
