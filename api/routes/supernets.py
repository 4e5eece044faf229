from __future__ import annotations

from fastapi import APIRouter, status

from api import services
from api.deps import DispatcherDep, Read, RepoDep, SettingsDep, StoreDep, Write, not_found
from api.schemas import LatencyTableOut, LatencyTableRequest, SupernetOut, SupernetRegister

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


@router.post("/{supernet_id}/latency-tables", status_code=status.HTTP_202_ACCEPTED, dependencies=[Write])
def request_latency_table(
    supernet_id: int, body: LatencyTableRequest, repo: RepoDep, sender: DispatcherDep
) -> LatencyTableOut:
    """Measure the supernet's latency table on a worker of the eval queue (its device, dtype and
    threads): seconds per network call per width and batch size, and each sampler's per-step time.
    PENDING -> RUNNING -> COMPLETE; a search with objective latency predicts from it."""
    table_id = services.request_latency_table(repo, sender, supernet_id, body)
    return LatencyTableOut.model_validate(repo.get_latency_table(table_id))


@router.get("/{supernet_id}/latency-tables", dependencies=[Read])
def list_latency_tables(supernet_id: int, repo: RepoDep) -> list[LatencyTableOut]:
    if repo.get_supernet(supernet_id) is None:
        raise not_found("supernet", supernet_id)
    return [LatencyTableOut.model_validate(t) for t in repo.list_latency_tables(supernet_id)]


@router.get("/{supernet_id}/latency-tables/{table_id}", dependencies=[Read])
def get_latency_table(supernet_id: int, table_id: int, repo: RepoDep) -> LatencyTableOut:
    table = repo.get_latency_table(table_id)
    if table is None or table.supernet_id != supernet_id:
        raise not_found("latency table", table_id)
    return LatencyTableOut.model_validate(table)
