"""The train task with the real repository (SQLite), artifact store and trainer: a SIGTERM mid-training
leaves the run INTERRUPTED with its last checkpoint, never COMPLETE, and it resumes from there."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from api.db.engine import make_engine, upgrade
from api.db.models import JobStatus
from api.db.repository import Repository
from workers import tasks

TRAIN = {"steps": 40, "batch_size": 8, "checkpoint_every": 0, "log_every": 1, "eval_images": 0,
         "sample_n": 0}  # fmt: skip
TINY = {"model_channels": 16, "num_groups": 8, "num_res_blocks": 1}


@pytest.fixture
def worker_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Repository]:
    monkeypatch.setenv("DDSM_HOME", str(tmp_path))
    monkeypatch.setenv("DDSM_DEVICE", "cpu")
    monkeypatch.setenv("DDSM_TORCH_THREADS", "1")
    for name in ("DATABASE_URL", "DDSM_DATABASE_URL", "ARTIFACT_STORE", "DDSM_ARTIFACT_STORE"):
        monkeypatch.delenv(name, raising=False)
    url = f"sqlite:///{tmp_path / 'ddsm.sqlite'}"
    upgrade(url)
    tasks.context.cache_clear()
    engine = make_engine(url)
    threads = torch.get_num_threads()
    yield Repository(engine)
    torch.set_num_threads(threads)
    tasks.context.cache_clear()
    engine.dispose()


@pytest.mark.slow  # ~35 s on 2 busy cores: trains twice and counts the supernet's GFLOPs
def test_sigterm_leaves_the_run_interrupted_not_complete_and_it_resumes(worker_env: Repository) -> None:
    repo = worker_env
    run_id = repo.create_training_run("r", {"preset": "digits", "train": TRAIN, "model": TINY}, 40)
    late: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: late.append(signum))

    def sigterm_once_training() -> None:  # the trainer's handler is in place while steps are reported
        deadline = time.time() + 120
        while time.time() < deadline:
            run = repo.get_training_run(run_id)
            if run is not None and run.status == JobStatus.RUNNING and run.step >= 3:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=sigterm_once_training, daemon=True)
    killer.start()
    try:
        assert tasks.train_supernet(run_id, 1) == "interrupted"
    finally:
        killer.join(timeout=5)
        signal.signal(signal.SIGTERM, previous)
    # the trainer took the signal, recorded the run, then handed the signal on to the worker's handler
    assert late == [signal.SIGTERM]
    run = repo.get_training_run(run_id)
    assert run is not None and run.status == JobStatus.INTERRUPTED
    assert run.supernet_id is None and repo.list_supernets() == []
    assert run.last_checkpoint_sha256 is not None and 3 <= run.step < 40
    stopped_at = run.step

    # the controller sends it again; the rerun resumes from the checkpoint and completes
    assert repo.resume_interrupted_training_runs() == [(run_id, 1)]
    steps: list[int] = []
    original = repo.training_progress

    def progress(*args, **kwargs):  # records the steps the rerun reports (the real call still runs)
        steps.append(args[3])
        return original(*args, **kwargs)

    tasks.context().repo.training_progress = progress  # type: ignore[method-assign]
    assert tasks.train_supernet(run_id, 1) == "complete"
    done = repo.get_training_run(run_id)
    assert done is not None and done.status == JobStatus.COMPLETE and done.step == 40
    assert steps and min(steps) == stopped_at + 1  # resumed, not restarted
    net = repo.get_supernet(done.supernet_id)  # type: ignore[arg-type]
    assert net is not None and net.status == JobStatus.COMPLETE
    assert net.artifact_sha256 == done.last_checkpoint_sha256
    # the loss log uploaded at the stop went on in the rerun: one record per step, none twice
    log = tasks.context().store.get_bytes(done.artifacts["log_sha256"]).decode()  # type: ignore[index]
    assert [json.loads(line)["step"] for line in log.splitlines()] == list(range(1, 41))
    assert done.artifacts["log_step"] == 40 and done.artifacts["samples"] == {}  # type: ignore[index]
