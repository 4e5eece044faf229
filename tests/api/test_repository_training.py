"""Training runs stopped by a signal: INTERRUPTED keeps the checkpoint, registers nothing, is sent again."""

from __future__ import annotations

from api.db.models import JobStatus
from api.db.repository import Repository


def test_an_interrupted_run_keeps_its_checkpoint_registers_no_supernet_and_is_sent_again(
    repo: Repository,
) -> None:
    run = repo.create_training_run("t", {"steps": 10}, 10)
    assert repo.claim_training_run(run, 1, "w1")
    assert repo.training_progress(run, 1, "w1", 4, "a" * 64)
    assert not repo.interrupt_training_run(run, 1, "w2", 6, "b" * 64)  # not this worker's run
    assert repo.interrupt_training_run(run, 1, "w1", 6, "b" * 64)
    record = repo.get_training_run(run)
    assert record is not None and record.status == JobStatus.INTERRUPTED
    assert (record.step, record.last_checkpoint_sha256, record.supernet_id) == (6, "b" * 64, None)
    assert repo.list_supernets() == []
    # the stopped worker's late calls change nothing
    assert not repo.training_progress(run, 1, "w1", 7)
    assert repo.complete_training_run(run, 1, "w1", "c" * 64, {}) is None
    assert repo.list_supernets() == [] and repo.reap_training_runs(0.0, 3) == []
    # the controller sends it again (same attempt: an interruption is not a lost worker), once
    assert repo.resume_interrupted_training_runs() == [(run, 1)]
    assert repo.resume_interrupted_training_runs() == []
    assert repo.get_training_run(run).status == JobStatus.PENDING  # type: ignore[union-attr]
    assert repo.claim_training_run(run, 1, "w2")
    assert repo.get_training_run(run).last_checkpoint_sha256 == "b" * 64  # type: ignore[union-attr]
    net = repo.complete_training_run(run, 1, "w2", "c" * 64, {"preset": "digits"})
    assert net is not None and repo.get_training_run(run).status == JobStatus.COMPLETE  # type: ignore[union-attr]


def test_an_interrupted_run_without_a_new_checkpoint_keeps_the_last_one_and_can_be_cancelled(
    repo: Repository,
) -> None:
    run = repo.create_training_run("t", {}, 10)
    assert repo.claim_training_run(run, 1, "w1")
    assert repo.training_progress(run, 1, "w1", 3, "a" * 64)
    assert repo.interrupt_training_run(run, 1, "w1", 5, None)
    record = repo.get_training_run(run)
    assert record is not None and (record.step, record.last_checkpoint_sha256) == (3, "a" * 64)
    assert repo.cancel_training_run(run)
    assert repo.resume_interrupted_training_runs() == []
