"""A training run whose worker dies resumes from its last uploaded checkpoint on another worker."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest

from .conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAIN = {"steps": 12, "batch_size": 8, "checkpoint_every": 3, "sample_every": 0, "eval_every": 0,
         "log_every": 1, "eval_images": 8, "sample_n": 1, "sample_steps": 2}  # fmt: skip
TINY = {"model_channels": 32, "num_groups": 8, "num_res_blocks": 1}


def test_killed_trainer_resumes_from_its_last_checkpoint_on_another_worker(
    stack_factory: Callable[..., Stack],
) -> None:
    stack = stack_factory(n_workers=2, device="cpu")
    seen: list[tuple[int, int]] = []
    with stack.client() as http:
        run = http.post(
            "/training-runs", json={"name": "r", "preset": "digits", "train": TRAIN, "model": TINY}
        )
        path = f"/training-runs/{run.json()['id']}"

        def checkpointed() -> dict[str, object] | None:
            row = http.get(path).json()
            ok = row["last_checkpoint_sha256"] and row["status"] == "RUNNING" and row["step"] >= 7
            return row if ok else None

        row = stack.wait_for("the checkpoint of step 6", checkpointed, timeout=180)
        os.kill(int(row["worker"].rsplit(":", 1)[1]), signal.SIGKILL)  # type: ignore[union-attr]

        def finished() -> bool:
            row = http.get(path).json()
            seen.append((row["attempt"], row["step"]))
            assert row["status"] not in ("FAILED", "CANCELLED"), row["error"]
            return row["status"] == "COMPLETE"

        stack.wait_for("the run to complete", finished, timeout=180)
        done = http.get(path).json()
        net = http.get(f"/supernets/{done['supernet_id']}").json()
        curves = http.get(f"{path}/losses").json()
        grid = http.get(f"{path}/samples.png")
    assert done["attempt"] == 2 and done["step"] == TRAIN["steps"]
    second = [step for attempt, step in seen if attempt == 2 and step > 0]
    assert second and min(second) >= 6  # resumed from the step-6 checkpoint, not restarted
    assert net["status"] == "COMPLETE" and len(net["gflops"]["widths"]) == 7
    # the loss curves cover the whole run: the second worker went on from the log uploaded with the
    # checkpoint it resumed from; the final step's grid (sample_n: 1 per width) was uploaded at the end
    assert curves["steps"] == list(range(1, TRAIN["steps"] + 1)) and curves["log_step"] == TRAIN["steps"]
    narrowest, full = f"{min(net['gflops']['widths']):g}", "1"  # trained at every step (sandwich rule)
    assert all(
        len(v) == TRAIN["steps"] and None not in v
        for v in (curves["losses"][narrowest], curves["losses"][full])
    )
    assert done["sample_steps"] == [TRAIN["steps"]] and done["loss_log_step"] == TRAIN["steps"]
    assert grid.status_code == 200 and grid.headers["content-type"] == "image/png"
    assert grid.content.startswith(b"\x89PNG")


def test_sigterm_to_the_trainer_leaves_the_run_interrupted_and_another_worker_finishes_it(
    stack_factory: Callable[..., Stack],
) -> None:
    stack = stack_factory(n_workers=2, device="cpu")
    seen: list[tuple[str, str | None, int]] = []
    with stack.client() as http:
        run = http.post(
            "/training-runs", json={"name": "r", "preset": "digits", "train": TRAIN, "model": TINY}
        )
        path = f"/training-runs/{run.json()['id']}"

        def training() -> dict[str, object] | None:
            row = http.get(path).json()
            return row if row["status"] == "RUNNING" and row["step"] >= 4 else None

        row = stack.wait_for("step 4", training, timeout=180)
        assert 0 <= row["heartbeat_age_s"] < 4  # type: ignore[operator]  # a live worker beats
        pid = int(row["worker"].rsplit(":", 1)[1])  # type: ignore[union-attr]
        first = next(p for p in stack.workers if p.pid == pid)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0  # checkpointed, recorded, then the worker shut down cleanly

        def finished() -> bool:
            row = http.get(path).json()
            seen.append((row["status"], row["worker"], row["step"]))
            assert row["status"] not in ("FAILED", "CANCELLED"), row["error"]
            return row["status"] == "COMPLETE"

        stack.wait_for("the run to complete", finished, timeout=180)
        done = http.get(path).json()
        nets = http.get("/supernets").json()
    assert done["attempt"] == 1 and done["step"] == TRAIN["steps"]  # not counted as a lost worker
    ours = [n for n in nets if n["training_run_id"] == done["id"]]
    assert [n["id"] for n in ours] == [done["supernet_id"]]  # one supernet: the finished run's
    resumed = [step for status, worker, step in seen if status == "RUNNING" and worker != row["worker"]]
    assert resumed and min(resumed) >= int(row["step"])  # type: ignore[call-overload]
