from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, status

from api import services
from api.db.models import JobStatus
from api.db.repository import TrainingRunRecord
from api.deps import DispatcherDep, Read, RepoDep, SettingsDep, Write, conflict, not_found
from api.schemas import TrainingRunCreate, TrainingRunOut

router = APIRouter(prefix="/training-runs", tags=["training"])


def _out(run: TrainingRunRecord, now: datetime | None = None) -> TrainingRunOut:
    progress = 100.0 * run.step / run.total_steps if run.total_steps else 0.0
    age = None
    if now is not None and run.status == JobStatus.RUNNING and run.heartbeat_at is not None:
        age = max(0.0, (now - run.heartbeat_at).total_seconds())
    return TrainingRunOut.model_validate(
        {**run.__dict__, "status": run.status.value, "progress": progress, "heartbeat_age_s": age}
    )


@router.post("", status_code=status.HTTP_202_ACCEPTED, dependencies=[Write])
def start_training(
    body: TrainingRunCreate, repo: RepoDep, sender: DispatcherDep, settings: SettingsDep
) -> TrainingRunOut:
    """Train a supernet on a `train` worker; follow it with GET; the result is registered as a supernet."""
    config = services.check_training(settings, body)
    steps = int(config["train"].get("steps", 0))  # 0: the preset's default, filled in by the worker
    run_id = repo.create_training_run(body.name, config, steps)
    sender.train_supernet(run_id, 1)
    return _out(repo.get_training_run(run_id))  # type: ignore[arg-type]


@router.get("", dependencies=[Read])
def list_training_runs(repo: RepoDep) -> list[TrainingRunOut]:
    now = repo.now()
    return [_out(r, now) for r in repo.list_training_runs()]


@router.get("/{run_id}", dependencies=[Read])
def get_training_run(run_id: int, repo: RepoDep) -> TrainingRunOut:
    run = repo.get_training_run(run_id)
    if run is None:
        raise not_found("training run", run_id)
    return _out(run, repo.now())


@router.post("/{run_id}/cancel", dependencies=[Write])
def cancel_training_run(run_id: int, repo: RepoDep) -> TrainingRunOut:
    if repo.get_training_run(run_id) is None:
        raise not_found("training run", run_id)
    if not repo.cancel_training_run(run_id):
        raise conflict(f"training run {run_id} has already finished")
    return _out(repo.get_training_run(run_id))  # type: ignore[arg-type]
