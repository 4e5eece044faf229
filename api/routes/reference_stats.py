from __future__ import annotations

from fastapi import APIRouter, status

from api import services
from api.deps import DispatcherDep, Read, RepoDep, SettingsDep, StoreDep, Write, not_found
from api.schemas import ReferenceStatsCreate, ReferenceStatsOut

router = APIRouter(prefix="/reference-stats", tags=["reference statistics"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, dependencies=[Write])
def create_reference_stats(
    body: ReferenceStatsCreate, repo: RepoDep, store: StoreDep, sender: DispatcherDep, settings: SettingsDep
) -> ReferenceStatsOut:
    """Register an existing .npz (``path``, under DDSM_CHECKPOINT_ROOTS), or compute the statistics of
    ``dataset`` on a worker."""
    if body.path is not None:
        path = services.server_path(settings, body.path)
        stats_id = services.register_stats_file(repo, store, body.name, body.dataset, str(path))
    else:
        stats_id = repo.create_reference_stats(body.name, body.dataset, body.extractor)
        sender.compute_reference_stats(stats_id)
    return ReferenceStatsOut.model_validate(repo.get_reference_stats(stats_id))


@router.get("", dependencies=[Read])
def list_reference_stats(repo: RepoDep) -> list[ReferenceStatsOut]:
    return [ReferenceStatsOut.model_validate(s) for s in repo.list_reference_stats()]


@router.get("/{stats_id}", dependencies=[Read])
def get_reference_stats(stats_id: int, repo: RepoDep) -> ReferenceStatsOut:
    stats = repo.get_reference_stats(stats_id)
    if stats is None:
        raise not_found("reference statistics", stats_id)
    return ReferenceStatsOut.model_validate(stats)
