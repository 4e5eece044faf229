"""``ddsm demo`` follows an unfinished or interrupted training run and says why it waits."""

from __future__ import annotations

from api.demo import UNFINISHED, waiting_reason


def test_the_demo_follows_interrupted_runs_too() -> None:
    assert "INTERRUPTED" in UNFINISHED and "COMPLETE" not in UNFINISHED


def test_the_bar_says_why_training_waits() -> None:
    row = {"status": "RUNNING", "step": 120, "heartbeat_age_s": 2.0, "last_checkpoint_sha256": "a" * 64}
    assert waiting_reason(row, 60.0) == ""  # training: the bar moves
    stale = waiting_reason(row | {"heartbeat_age_s": 45.0}, 60.0)
    assert stale == "waiting for a stale worker: no heartbeat for 45 s; handed to another worker after 60 s"
    assert "resumes from step 120" in waiting_reason(row | {"status": "PENDING"}, 60.0)
    assert "interrupted at step 120" in waiting_reason(row | {"status": "INTERRUPTED"}, None)
