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


def test_the_bar_says_when_training_is_in_its_final_phase() -> None:
    row = {"status": "RUNNING", "step": 800, "total_steps": 800, "heartbeat_age_s": 2.0}
    assert "final per-width evaluation" in waiting_reason(row, 60.0)
    assert waiting_reason(row | {"step": 799}, 60.0) == ""


def test_the_overall_estimate_scales_with_the_work() -> None:
    from api.demo import SEARCH_S_DEFAULT, TRAIN_S_PER_STEP, estimate_s
    from ddsm_core.spec import DEFAULTS

    assert estimate_s(DEFAULTS, None, training=False) == SEARCH_S_DEFAULT
    assert estimate_s(DEFAULTS, 100, training=True) == SEARCH_S_DEFAULT + 100 * TRAIN_S_PER_STEP
    doubled = DEFAULTS.replace(generations=2 * DEFAULTS.generations)
    assert SEARCH_S_DEFAULT < estimate_s(doubled, None, training=False) < 2 * SEARCH_S_DEFAULT
