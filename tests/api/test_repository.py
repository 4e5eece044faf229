from __future__ import annotations

import math
import threading
import time

from sqlalchemy import inspect

from api.db.engine import downgrade, make_engine, upgrade
from api.db.models import CandidateState, JobStatus
from api.db.repository import Repository, genome_hash

CONTROLLER = "controller-a"


def make_search(repo: Repository, **config: object) -> int:
    """Factory: a ready supernet, stats and a RUNNING search whose lease CONTROLLER holds."""
    net = repo.create_supernet("net", "a" * 64, {"preset": "digits"})
    assert repo.supernet_ready(net, {"widths": [0.5, 1.0], "gflops": [1.0, 2.0]}, {"preset": "digits"})
    stats = repo.create_reference_stats("digits", "digits", "domain", artifact_sha256="b" * 64)
    search = repo.create_search("s", net, stats, {"population": 4, **config})
    assert repo.acquire_lease(search, CONTROLLER, 30)
    return search


def start(repo: Repository, search: int, genomes: list[tuple[int, ...]], generation: int = 0) -> None:
    assert repo.start_generation(search, CONTROLLER, generation, genomes, {"g": generation}, n_images=8)


def test_alembic_upgrades_empty_database_to_head_and_downgrades(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    tables = set(inspect(engine).get_table_names())
    assert {
        "supernets",
        "reference_stats",
        "training_runs",
        "searches",
        "candidates",
        "search_generations",
    } <= tables
    downgrade(db_url, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()


def test_claim_is_compare_and_set_and_only_one_of_two_deliveries_wins(repo: Repository) -> None:
    search = make_search(repo)
    start(repo, search, [(0, 1), (1, 1)])
    cand = repo.candidates(search)[0]
    assert repo.claim_candidate(cand.id, 1, "w1")
    assert not repo.claim_candidate(cand.id, 1, "w2")  # redelivered message loses
    assert repo.heartbeat(cand.id, 1, "w1")
    assert not repo.heartbeat(cand.id, 1, "w2")
    assert repo.complete_candidate(cand.id, 1, "w1", {"fid": 3.0, "gflops": 2.0})
    assert not repo.complete_candidate(
        cand.id, 1, "w1", {"fid": 99.0, "gflops": 2.0}
    )  # finished rows never change
    assert not repo.fail_candidate(cand.id, 1, "w1", "late")
    row = repo.get_candidate(cand.id)
    assert row is not None and row.state == CandidateState.COMPLETE and row.fid == 3.0


def test_concurrent_claims_have_exactly_one_winner(repo: Repository) -> None:
    search = make_search(repo)
    start(repo, search, [(0, 0)])
    cid = repo.candidates(search)[0].id
    wins: list[bool] = []
    threads = [
        threading.Thread(target=lambda i=i: wins.append(repo.claim_candidate(cid, 1, f"w{i}")))
        for i in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 5 + [True]


def test_nonfinite_metrics_are_stored_with_an_explicit_marker(repo: Repository) -> None:
    search = make_search(repo)
    start(repo, search, [(0, 0), (1, 0)])
    a, b = repo.candidates(search)
    for cand, fid in ((a, math.nan), (b, math.inf)):
        assert repo.claim_candidate(cand.id, 1, "w")
        assert repo.complete_candidate(cand.id, 1, "w", {"fid": fid, "gflops": 1.0})
    a2, b2 = repo.get_candidate(a.id), repo.get_candidate(b.id)
    assert a2 and b2 and a2.fid is None and b2.fid is None
    assert math.isnan(a2.metrics["fid"]) and b2.metrics["fid"] == math.inf  # type: ignore[index]


def test_genome_seen_before_is_not_a_new_candidate(repo: Repository) -> None:
    search = make_search(repo)
    start(repo, search, [(0, 1), (0, 1), (2, 2)])
    assert len(repo.candidates(search)) == 2
    start(repo, search, [(0, 1), (3, 3)], generation=1)
    assert len(repo.candidates(search)) == 3
    gen = repo.get_generation(search, 1)
    assert gen is not None and gen.genome_hashes == (genome_hash((0, 1)), genome_hash((3, 3)))


def test_generation_is_persisted_once_even_if_two_controllers_try(repo: Repository) -> None:
    search = make_search(repo)
    start(repo, search, [(0, 1)])
    assert not repo.start_generation(search, CONTROLLER, 0, [(0, 1)], {}, n_images=8)
    assert not repo.start_generation(search, "other", 1, [(1, 1)], {}, n_images=8)


def test_lease_gives_one_controller_per_search_until_it_expires(repo: Repository) -> None:
    search = make_search(repo)
    assert not repo.acquire_lease(search, "controller-b", 30)
    assert repo.acquire_lease(search, CONTROLLER, 0.01)  # renew with a tiny ttl
    time.sleep(0.05)
    assert repo.acquire_lease(search, "controller-b", 30)
    assert not repo.acquire_lease(search, CONTROLLER, 30)


def test_stale_heartbeat_is_reaped_into_a_new_attempt_then_failed_at_the_limit(repo: Repository) -> None:
    search = make_search(repo)
    start(repo, search, [(0, 1)])
    cid = repo.candidates(search)[0].id
    assert repo.claim_candidate(cid, 1, "dead")
    time.sleep(0.05)
    assert repo.reap_candidates(search, stale_after_s=0.01, max_attempts=2) == (1, 0)
    assert not repo.complete_candidate(cid, 1, "dead", {"fid": 1.0})  # the old attempt lost its claim
    assert [c.id for c in repo.candidates_to_send(search, 600)] == [cid]
    assert repo.mark_sent(cid, 2)
    assert repo.candidates_to_send(search, 600) == []
    assert repo.claim_candidate(cid, 2, "also-dead")
    time.sleep(0.05)
    assert repo.reap_candidates(search, stale_after_s=0.01, max_attempts=2) == (0, 1)
    row = repo.get_candidate(cid)
    assert row is not None and row.state == CandidateState.FAILED and "worker lost" in (row.error or "")


def test_cancelled_search_cannot_be_claimed_and_resume_resends(repo: Repository) -> None:
    search = make_search(repo)
    start(repo, search, [(0, 1)])
    cid = repo.candidates(search)[0].id
    assert repo.mark_sent(cid, 1)
    assert repo.cancel_search(search)
    assert not repo.claim_candidate(cid, 1, "w")
    assert repo.resume_search(search)
    assert [c.id for c in repo.candidates_to_send(search, 600)] == [cid]
    record = repo.get_search(search)
    assert record is not None and record.status == JobStatus.RUNNING


def test_training_run_reaped_gets_new_attempt_and_completion_registers_a_supernet(repo: Repository) -> None:
    run = repo.create_training_run("t", {"steps": 10}, 10)
    assert repo.claim_training_run(run, 1, "w1")
    assert not repo.claim_training_run(run, 1, "w2")
    assert repo.training_progress(run, 1, "w1", 5, "c" * 64)
    time.sleep(0.05)
    assert repo.reap_training_runs(0.01, 3) == [(run, 2)]
    assert not repo.training_progress(run, 1, "w1", 6)
    assert repo.claim_training_run(run, 2, "w2")
    record = repo.get_training_run(run)
    assert record is not None and record.last_checkpoint_sha256 == "c" * 64
    net = repo.complete_training_run(run, 2, "w2", "d" * 64, {"preset": "digits"})
    assert net is not None and repo.get_supernet(net).status == JobStatus.PENDING  # type: ignore[union-attr]


def test_infrastructure_releases_are_counted_and_bounded(repo: Repository) -> None:
    search = make_search(repo)
    start(repo, search, [(0, 1), (1, 1)])
    bounded, outage = (c.id for c in repo.candidates(search))
    for n in (1, 2):  # released (costs no attempt), the reason kept while it waits
        assert repo.claim_candidate(bounded, 1, "w")
        state = repo.release_candidate(bounded, 1, "w", "ConnectionError: store", max_releases=2)
        row = repo.get_candidate(bounded)
        assert state == CandidateState.WAITING and row is not None and row.attempt == 1
        assert row.metrics["infrastructure"]["releases"] == n  # type: ignore[index]
        assert "ConnectionError: store" in (row.error or "")
    assert repo.claim_candidate(bounded, 1, "w")
    assert repo.release_candidate(bounded, 1, "w", "ConnectionError: store", max_releases=2) == (
        CandidateState.FAILED
    )
    row = repo.get_candidate(bounded)
    assert row is not None and row.state == CandidateState.FAILED
    assert "infrastructure error 3 times" in (row.error or "") and "ConnectionError: store" in row.error
    assert not repo.release_candidate(bounded, 1, "w", "again")  # finished rows never change

    # an outage shorter than min_age_s never fails it, however many releases; completing clears it all
    for _ in range(4):
        assert repo.claim_candidate(outage, 1, "w")
        state = repo.release_candidate(outage, 1, "w", "OperationalError", max_releases=2, min_age_s=3600)
        assert state == CandidateState.WAITING
    assert repo.claim_candidate(outage, 1, "w")
    assert repo.complete_candidate(outage, 1, "w", {"fid": 1.0, "gflops": 2.0})
    row = repo.get_candidate(outage)
    assert row is not None and row.metrics == {"fid": 1.0, "gflops": 2.0} and row.error is None


def test_mark_sent_many_marks_only_waiting_candidates_at_their_attempt(repo: Repository) -> None:
    search = make_search(repo)
    start(repo, search, [(0, 1), (1, 1), (1, 0)])
    waiting, claimed, stale = (c.id for c in repo.candidates(search))
    assert repo.claim_candidate(claimed, 1, "w")
    assert repo.mark_sent_many([(waiting, 1), (claimed, 1), (stale, 2)]) == 1  # attempt 2 is not current
    assert [c.id for c in repo.candidates_to_send(search, 600)] == [stale]
    assert repo.get_candidate(waiting).sent_attempt == 1  # type: ignore[union-attr]


def test_any_unfinished_and_attempt_summary_count_in_the_database(repo: Repository) -> None:
    search = make_search(repo)
    start(repo, search, [(0, 1), (1, 1), (1, 0)])
    first, second, third = repo.candidates(search)
    hashes = [first.genome_hash, second.genome_hash]
    assert repo.any_unfinished(search, "search", hashes)
    assert repo.attempt_summary(search, ["search"]) == (0, 0)  # nobody claimed anything yet
    for cand in (first, second):
        assert repo.claim_candidate(cand.id, 1, "w1")
    assert repo.any_unfinished(search, "search", hashes)  # RUNNING is not finished
    assert repo.complete_candidate(first.id, 1, "w1", {"fid": 1.0})
    assert repo.fail_candidate(second.id, 1, "w1", "boom")
    assert not repo.any_unfinished(search, "search", hashes)  # COMPLETE and FAILED are
    assert repo.any_unfinished(search, "search", [*hashes, third.genome_hash])
    assert not repo.any_unfinished(search, "final", [*hashes, third.genome_hash])  # another phase
    assert repo.claim_candidate(third.id, 1, "dead")
    time.sleep(0.05)
    assert repo.reap_candidates(search, stale_after_s=0.01, max_attempts=3) == (1, 0)
    assert repo.claim_candidate(third.id, 2, "w2")
    # one retried attempt; workers w1 and w2 (the reaped attempt's worker was replaced by w2)
    assert repo.attempt_summary(search, ["search"]) == (1, 2)
    assert repo.attempt_summary(search, ["final"]) == (0, 0)
