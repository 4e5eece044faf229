from __future__ import annotations

from fastapi import APIRouter, status

from api import services
from api.deps import DispatcherDep, Read, RepoDep, SettingsDep, StoreDep, Write, not_found
from api.schemas import SupernetOut, SupernetRegister

router = APIRouter(prefix="/supernets", tags=["supernets"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, dependencies=[Write])
def register_supernet(
    body: SupernetRegister, repo: RepoDep, store: StoreDep, sender: DispatcherDep, settings: SettingsDep
) -> SupernetOut:
    """Register a checkpoint folder under the server's checkpoint roots (DDSM_CHECKPOINT_ROOTS); a
    worker validates it and counts GFLOPs (PENDING -> COMPLETE)."""
    path = services.server_path(settings, body.checkpoint_path)
    supernet_id = services.register_supernet(repo, store, sender, body.name, str(path))
    return SupernetOut.model_validate(repo.get_supernet(supernet_id))


@router.get("", dependencies=[Read])
def list_supernets(repo: RepoDep) -> list[SupernetOut]:
    return [SupernetOut.model_validate(s) for s in repo.list_supernets()]


@router.get("/{supernet_id}", dependencies=[Read])
def get_supernet(supernet_id: int, repo: RepoDep) -> SupernetOut:
    net = repo.get_supernet(supernet_id)
    if net is None:
        raise not_found("supernet", supernet_id)
    return SupernetOut.model_validate(net)
