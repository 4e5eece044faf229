"""The dashboard: static pages (vanilla JS + inline SVG, no CDN) and the read endpoints they poll.

The pages are Jinja templates under ``api/templates`` extending ``base.html`` (head, header, scripts);
they take no data, so each is rendered once. Their scripts read the REST API (with the API key kept in
the browser's sessionStorage) and the few summaries below, which no REST resource gives.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from api import dashboard
from api.deps import Read, RepoDep, StoreDep, not_found

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
STATIC = Path(__file__).resolve().parents[1] / "static"

pages = APIRouter(include_in_schema=False)
router = APIRouter(prefix="/ui/data", tags=["dashboard"])


@cache
def render_page(name: str) -> str:
    """The HTML of page ``name`` (a template in ``api/templates``)."""
    # trim_blocks: a block tag's own line break is not output, so the pages keep their plain layout
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True,
                      keep_trailing_newline=True, undefined=StrictUndefined)  # fmt: skip
    return env.get_template(f"{name}.html").render()


def _page(name: str) -> HTMLResponse:
    return HTMLResponse(render_page(name))


@pages.get("/")
def index_page() -> HTMLResponse:
    return _page("index")


@pages.get("/ui/searches/new")
def new_search_page() -> HTMLResponse:
    return _page("new_search")


@pages.get("/ui/searches/{search_id}")
def search_page(search_id: int) -> HTMLResponse:
    return _page("search")


@pages.get("/ui/training-runs/{run_id}")
def training_page(run_id: int) -> HTMLResponse:
    return _page("training")


@pages.get("/ui/compare")
def compare_page() -> HTMLResponse:
    return _page("compare")


@router.get("/overview", dependencies=[Read])
def overview(repo: RepoDep) -> list[dict[str, Any]]:
    """Every search with its progress and best pick so far (its cost and savings in the search's objective
    and in GFLOPs / predicted latency where known, FID and its extractor)."""
    return [dashboard.search_summary(repo, s) for s in repo.list_searches()]


@router.get("/searches/{search_id}", dependencies=[Read])
def search_detail(search_id: int, repo: RepoDep) -> dict[str, Any]:
    """All candidates with their generation, the uniform-width baseline, the front, pick and knee,
    and the normalised hypervolume after each generation."""
    search = repo.get_search(search_id)
    if search is None:
        raise not_found("search", search_id)
    return dashboard.search_detail(repo, search)


@router.get("/training-runs/{run_id}", dependencies=[Read])
def training_detail(run_id: int, repo: RepoDep, store: StoreDep) -> dict[str, Any]:
    """The per-width eval losses of the run's last checkpoint."""
    run = repo.get_training_run(run_id)
    if run is None:
        raise not_found("training run", run_id)
    return dashboard.training_detail(store, run)
