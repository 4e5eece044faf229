from __future__ import annotations

import io
from typing import Any

from fastapi import APIRouter, Response

from api import services
from api.deps import Read, RepoDep
from api.schemas import StrategyTransfer
from ddsm_core.strategy import Strategy, strategy_of_document

router = APIRouter(tags=["strategies"])
PNG = {200: {"content": {"image/png": {}}}}


def _png(strategy: Strategy, title: str) -> Response:
    from ddsm_core.plots import plot_strategy

    buf = io.BytesIO()
    plot_strategy(strategy, buf, title=title)
    return Response(buf.getvalue(), media_type="image/png")


@router.get("/candidates/{candidate_id}/strategy", dependencies=[Read])
def candidate_strategy(candidate_id: int, repo: RepoDep) -> dict[str, Any]:
    """The candidate's strategy as JSON (use it with `ddsm sample --strategy file.json`)."""
    return services.candidate_strategy(repo, candidate_id).to_dict()


@router.get("/candidates/{candidate_id}/strategy/plot.png", dependencies=[Read], responses=PNG)
def candidate_strategy_png(candidate_id: int, repo: RepoDep) -> Response:
    return _png(services.candidate_strategy(repo, candidate_id), f"candidate {candidate_id}")


SEARCH_STRATEGY = {
    404: {"description": "No such search, or no finalist of that name (the message lists the search's)"},
    409: {"description": "The search is not COMPLETE yet"},
}


@router.get(
    "/searches/{search_id}/strategies/{which}",
    dependencies=[Read],
    response_class=Response,
    responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}, **SEARCH_STRATEGY},
)
def search_strategy(search_id: int, which: str, repo: RepoDep) -> Response:
    """A finished search's finalist as a strategy file, byte for byte the ``<which>.json`` that
    ``ddsm search`` writes in its report folder (use it with ``ddsm sample --strategy``, ``ddsm eval``,
    ``ddsm strategy transfer`` or as a warm start): ``pick`` (chosen by the search's ``pick_rule``),
    ``knee``, ``full`` (width) and, with the tolerance rule, ``weighted`` (the weighted pick, argmin
    FID + weight x cost, shown beside the pick): the names of the report's ``final``."""
    strategy = services.search_strategy(repo, search_id, which)
    return Response(strategy.file_text(), media_type="application/json")


@router.get(
    "/searches/{search_id}/strategies/{which}/plot.png",
    dependencies=[Read],
    responses={**PNG, **SEARCH_STRATEGY},
)
def search_strategy_png(search_id: int, which: str, repo: RepoDep) -> Response:
    """The line plot of that finalist's strategy (width per sampler step)."""
    return _png(services.search_strategy(repo, search_id, which), f"search {search_id}: {which}")


@router.post("/strategies", dependencies=[Read])
def check_strategy(body: dict[str, Any]) -> dict[str, Any]:
    """A strategy file as is (``pick.json`` of a report folder, or a report's ``results.json`` for its
    pick): validated, with its width per step and network calls; 422 with the reason if it is not."""
    strategy = strategy_of_document(body)
    return {**strategy.to_dict(), "describe": strategy.describe(), "network_calls": strategy.n_calls}


@router.post("/strategies/plot.png", dependencies=[Read], responses=PNG)
def strategy_png(body: dict[str, Any]) -> Response:
    """The line plot of a strategy file (``pick.json``, or a report's ``results.json``)."""
    strategy = strategy_of_document(body)
    return _png(strategy, strategy.describe())


@router.post("/strategies/transfer", dependencies=[Read])
def transfer_strategy(body: StrategyTransfer, repo: RepoDep) -> dict[str, Any]:
    """A strategy (or a results.json's pick) mapped to another sampler and step count by noise level:
    the strategy file ``ddsm strategy transfer --out`` writes, usable as is as a warm start."""
    return services.transferred_strategy(repo, body)[1].to_dict()


@router.post("/strategies/transfer/plot.png", dependencies=[Read], responses=PNG)
def transfer_strategy_png(body: StrategyTransfer, repo: RepoDep) -> Response:
    """Both strategies of a transfer against log-SNR (``ddsm strategy transfer --plot``)."""
    from ddsm_core.plots import plot_strategy

    source, target, schedule = services.transferred_strategy(repo, body)
    buf = io.BytesIO()
    plot_strategy(
        {f"source {source.sampler}/{source.steps}": source,
         f"transferred {target.sampler}/{target.steps}": target},
        buf, x="log_snr", schedule=schedule, title="strategy transfer: width against noise level",
    )  # fmt: skip
    return Response(buf.getvalue(), media_type="image/png")
