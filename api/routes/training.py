from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from api import run_outputs, services
from api.db.models import JobStatus
from api.db.repository import MAX_ID, Repository, TrainingRunRecord
from api.deps import DispatcherDep, Read, RepoDep, SettingsDep, StoreDep, Write, conflict, not_found
from api.schemas import TrainingLosses, TrainingRunCreate, TrainingRunOut

router = APIRouter(prefix="/training-runs", tags=["training"])


def _out(run: TrainingRunRecord, now: datetime | None = None) -> TrainingRunOut:
    progress = 100.0 * run.step / run.total_steps if run.total_steps else 0.0
    age = None
    if now is not None and run.status == JobStatus.RUNNING and run.heartbeat_at is not None:
        age = max(0.0, (now - run.heartbeat_at).total_seconds())
    outputs = {"sample_steps": run_outputs.run_grid_steps(run),
               "loss_log_step": (run.artifacts or {}).get("log_step")}  # fmt: skip
    return TrainingRunOut.model_validate(
        {**run.__dict__, "status": run.status.value, "progress": progress, "heartbeat_age_s": age, **outputs}
    )


def _run(repo: Repository, run_id: int) -> TrainingRunRecord:
    run = repo.get_training_run(run_id)
    if run is None:
        raise not_found("training run", run_id)
    return run


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


@router.get(
    "/{run_id}/losses",
    dependencies=[Read],
    responses={404: {"description": "No such run, or no loss log uploaded yet"}},
)
def training_losses(run_id: int, repo: RepoDep, store: StoreDep) -> TrainingLosses:
    """Per-width training loss curves (MSE of the noise prediction, each width's loss of the sandwich
    rule) from the run's log, uploaded by its worker with each checkpoint and at most every minute."""
    curves = run_outputs.run_losses(store, _run(repo, run_id))
    if curves is None:
        raise not_found("loss log of training run", run_id)
    return TrainingLosses.model_validate(curves)


@router.get(
    "/{run_id}/samples.png",
    dependencies=[Read],
    responses={200: {"content": {"image/png": {}}},
               404: {"description": "No such run, or no sample grid (of that step)"}},
)  # fmt: skip
def training_samples_png(
    run_id: int,
    repo: RepoDep,
    store: StoreDep,
    step: Annotated[int | None, Query(ge=0, le=MAX_ID, description="Default: the latest grid")] = None,
) -> Response:
    """The run's sample grid of a step (its EMA weights): one row per width, the same seeds in every
    row; the steps with a grid are the run's ``sample_steps``."""
    return Response(run_outputs.run_grid(store, _run(repo, run_id), step), media_type="image/png")
