from __future__ import annotations

import io
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response, status

from api import run_outputs, services
from api.db.models import CandidateState
from api.db.repository import MAX_ID
from api.deps import Read, RepoDep, StoreDep, Write, conflict, not_found
from api.schemas import CandidateOut, CandidatePage, SearchCreate, SearchOut
from ddsm_core.compare import parse_reference

PNG = {200: {"content": {"image/png": {}}}}

router = APIRouter(prefix="/searches", tags=["searches"])


def _view(repo: RepoDep, search_id: int) -> SearchOut:
    search = repo.get_search(search_id)
    if search is None:
        raise not_found("search", search_id)
    return SearchOut.model_validate(services.search_view(repo, search))


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=[Write])
def create_search(body: SearchCreate, repo: RepoDep) -> SearchOut:
    """Start a search; the controller asks NSGA-II for generations and dispatches candidates."""
    return _view(repo, services.create_search(repo, body))


@router.get("", dependencies=[Read])
def list_searches(repo: RepoDep) -> list[SearchOut]:
    return [SearchOut.model_validate(services.search_view(repo, s)) for s in repo.list_searches()]


Ids = Annotated[str, Query(description="Search ids, comma-separated: 1,2,3")]
Ref = Annotated[
    str | None,
    Query(description="Reference point 'COST,FID', the cost in the axis' unit (default: 1.1 x the max "
          "over all fronts)"),
]  # fmt: skip
Axis = Annotated[
    Literal["gflops", "latency"] | None,
    Query(description="Cost axis: gflops (GFLOPs/image, every search has it) or latency (predicted "
          "ms/image: 422 unless every search has it from one device's latency table). Default: the "
          "searches' own objective when they share it, else gflops (the reply's note says so)."),
]  # fmt: skip


# /compare before /{search_id}: a path route matches in declaration order
@router.get("/compare", dependencies=[Read])
def compare_searches(ids: Ids, repo: RepoDep, ref: Ref = None, axis: Axis = None) -> dict[str, Any]:
    """The Pareto fronts of several searches on one cost axis (``axis``, ``unit``; points are
    ``{cost, fid}``), with a hypervolume each against one shared reference point in that unit (the box
    both objectives are measured in); 422 when their FIDs come from different extractors."""
    _, _, body = services.compare_searches(repo, services.parse_ids(ids), parse_reference(ref), axis)
    return body


@router.get("/compare/plot.png", dependencies=[Read], responses=PNG)
def compare_searches_png(ids: Ids, repo: RepoDep, ref: Ref = None, axis: Axis = None) -> Response:
    """The fronts of several searches on one plot, the shared reference point and each hypervolume."""
    from ddsm_core.plots import plot_fronts

    fronts, comparison, body = services.compare_searches(
        repo, services.parse_ids(ids), parse_reference(ref), axis
    )
    buf = io.BytesIO()
    plot_fronts(
        fronts, buf, reference=comparison.reference,
        hypervolumes={r.name: r.hypervolume for r in comparison.rows},
        fid_label=f"FID ({body['extractor']})" if body["extractor"] else "FID",
        cost_label=comparison.unit,
    )  # fmt: skip
    return Response(buf.getvalue(), media_type="image/png")


@router.get("/{search_id}", dependencies=[Read])
def get_search(search_id: int, repo: RepoDep) -> SearchOut:
    return _view(repo, search_id)


@router.get("/{search_id}/candidates", dependencies=[Read])
def list_candidates(
    search_id: int,
    repo: RepoDep,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    state: CandidateState | None = None,
) -> CandidatePage:
    if repo.get_search(search_id) is None:
        raise not_found("search", search_id)
    total = (
        sum(repo.count_candidates(search_id).values())
        if state is None
        else len(repo.candidates(search_id, state=state))
    )
    rows = repo.candidates(search_id, state=state, offset=offset, limit=limit)
    items = [CandidateOut.model_validate({**c.__dict__, "state": c.state.value}) for c in rows]
    return CandidatePage(total=total, offset=offset, limit=limit, items=items)


@router.get("/{search_id}/report", dependencies=[Read])
def search_report(search_id: int, repo: RepoDep) -> dict[str, Any]:
    """A finished search's results.json: the same builder and format as `ddsm search` (front, pick,
    knee, finalists, uniform widths, cost)."""
    search = repo.get_search(search_id)
    if search is None:
        raise not_found("search", search_id)
    return services.search_results(search)


@router.get(
    "/{search_id}/samples/{which}.png",
    dependencies=[Read],
    responses={**PNG, 404: {"description": "No such search, no finalist of that name (the message lists "
                            "the search's), or no grid stored for that finalist"},
               409: {"description": "The search is not COMPLETE yet"}},
)  # fmt: skip
def search_samples_png(search_id: int, which: str, repo: RepoDep, store: StoreDep) -> Response:
    """A 4 x 4 grid of the first 16 final-evaluation images of a finished search's finalist: ``pick``,
    ``knee``, ``full`` (width) and, with the tolerance rule, ``weighted`` (the names of the report's
    ``final``, as ``/searches/{id}/strategies/{which}``), each image from the same seed
    (``final_seed + i``, the finalists' seeds: held out from the search's by default) for all of them:
    the strategies differ, the noise does not. Drawn by the worker that evaluated the finalist (404
    where it drew none, e.g. the fast evaluator)."""
    return Response(run_outputs.search_grid(repo, store, search_id, which), media_type="image/png")


@router.post("/{search_id}/cancel", dependencies=[Write])
def cancel_search(search_id: int, repo: RepoDep) -> SearchOut:
    view = _view(repo, search_id)
    if not repo.cancel_search(search_id):
        raise conflict(f"search {search_id} is {view.status}: only a running search can be cancelled")
    return _view(repo, search_id)


@router.post("/{search_id}/resume", dependencies=[Write])
def resume_search(search_id: int, repo: RepoDep) -> SearchOut:
    view = _view(repo, search_id)
    if not repo.resume_search(search_id):
        raise conflict(
            f"search {search_id} is {view.status}: only a cancelled or failed search can be resumed"
        )
    return _view(repo, search_id)
