"""The dashboard's pages and read endpoints, without a browser (the browser tests are in tests/ui)."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from api.app import create_app
from api.controller import SearchController
from api.dashboard import front_indices, pick_so_far
from api.db.models import JobStatus
from api.settings import Settings
from ddsm_core.compare import hypervolume_2d
from tests.factories import TABLE, Outbox, complete_sent, ready, search_body
from tests.support import KEY, local_settings

PAGES = ["/", "/ui/searches/1", "/ui/training-runs/1", "/ui/compare", "/ui/searches/new"]


def run_search_to_the_end(client: TestClient, outbox: Outbox) -> int:
    """A search driven by the controller with the fast evaluator standing in for the workers."""
    repo = client.app.state.repo  # type: ignore[attr-defined]
    net, stats = ready(repo)
    search = client.post("/searches", json=search_body(net, stats, generations=3), headers=KEY).json()
    controller = SearchController(repo, outbox, Settings())  # type: ignore[arg-type]
    for _ in range(100):
        controller.tick(search["id"])
        complete_sent(repo, outbox)
        if repo.get_search(search["id"]).status == JobStatus.COMPLETE:
            return search["id"]
    raise AssertionError("the search did not complete")


def test_front_and_hypervolume_of_known_points() -> None:
    points = [(1.0, 10.0), (2.0, 5.0), (3.0, 6.0), (4.0, 1.0), (2.0, 7.0)]
    assert front_indices(points) == [0, 1, 3]
    front = [points[i] for i in front_indices(points)]
    # slabs from the reference point (5, 11): 4 x 1 + 3 x 5 + 1 x 4
    assert hypervolume_2d(front, (5.0, 11.0)) == 23.0
    assert hypervolume_2d([], (5.0, 11.0)) == 0.0


def test_search_data_match_the_stored_front_pick_and_candidates(client: TestClient, outbox: Outbox) -> None:
    sid = run_search_to_the_end(client, outbox)
    done = client.get(f"/searches/{sid}").json()
    data = client.get(f"/ui/data/searches/{sid}").json()
    cands = {c["id"]: c for c in data["candidates"]}
    rest = client.get(f"/searches/{sid}/candidates", params={"limit": 1000}).json()
    assert len(cands) == rest["total"]
    evaluated = [c for c in rest["items"] if c["phase"] == "search" and c["state"] == "COMPLETE"]
    assert data["evaluated"] == len(evaluated)
    assert [[cands[i]["genome"], cands[i]["fid"], cands[i]["gflops"]] for i in data["front"]] == [
        [p["genome"], p["fid"], p["gflops"]] for p in done["front"]
    ]
    assert cands[data["marked"]["pick"]]["genome"] == done["result"]["pick"]["genome"]
    assert cands[data["marked"]["knee"]]["genome"] == done["result"]["knee"]["genome"]
    assert data["pick"]["saving"] == done["result"]["saving"] and data["pick"]["final"]
    assert [u["width"] for u in data["uniform"]] == TABLE["widths"]
    hv = [h["hypervolume"] for h in data["hypervolume"]]
    assert len(hv) == 3 and hv == sorted(hv) and 0 < hv[-1] <= 1
    assert data["extractor"].startswith("fast-analytic")
    overview = client.get("/ui/data/overview").json()
    assert [(s["id"], s["status"], s["pick"]["saving"]) for s in overview] == [
        (sid, "COMPLETE", done["result"]["saving"])
    ]


def test_the_pick_shows_its_paired_interval_and_floor_when_the_results_have_them(
    client: TestClient, outbox: Outbox
) -> None:
    from dataclasses import replace

    sid = run_search_to_the_end(client, outbox)
    search = client.app.state.repo.get_search(sid)  # type: ignore[attr-defined]
    assert client.get(f"/ui/data/searches/{sid}").json()["pick"]["paired"] is None  # none measured
    paired = {"diff": 1.5, "low": 0.5, "high": 2.5, "level": 0.95, "n_images": 8, "equal_quality": False}
    floors = [{"fid": 15.8, "split": "test", "n_images": 297}, {"fid": 30.0, "split": "test", "n_images": 5}]
    result = {**search.result, "paired": {"pick": paired, "knee": {}}, "floors": floors}
    pick = pick_so_far(replace(search, result=result), [], None)
    assert pick is not None and pick["paired"] == paired
    assert pick["floor"]["n_images"] == 5 and pick["floor"]["fid"] == 30.0  # the count nearest 8 images


def test_pages_and_their_assets_come_from_the_api_itself(client: TestClient) -> None:
    for path in PAGES:
        page = client.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        refs = re.findall(r'(?:src|href)="([^"#]+)"', page.text)
        assert refs and all(r.startswith("/") or r.startswith("data:") for r in refs), refs
        for ref in (r for r in refs if r.startswith("/ui/static/")):
            assert client.get(ref).status_code == 200, ref
    docs = client.get("/docs").text
    assert "/static-offline-docs/swagger-ui-bundle.js" in docs and "cdn" not in docs
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    assert "/ui/data/overview" in client.get("/openapi.json").json()["paths"]


def test_every_page_has_the_one_frame_of_base_html(client: TestClient) -> None:
    from api.routes.ui import TEMPLATES

    for path in PAGES:
        page = client.get(path).text
        assert page.startswith("<!doctype html>") and page.endswith("</body>\n</html>\n")
        for once in ('<header id="top"></header>', '<script src="/ui/static/ddsm.js"></script>', "<main>"):
            assert page.count(once) == 1, (path, once)
    for template in TEMPLATES.glob("*.html"):  # the frame is written once, in base.html
        if template.name != "base.html":
            text = template.read_text()
            assert text.startswith('{% extends "base.html" %}') and "<head>" not in text, template


def test_dashboard_data_need_the_key_when_reads_do(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, api_key="secret", reads_need_key=True, run_controller=False)
    with TestClient(create_app(settings, dispatcher=Outbox())) as c:  # type: ignore[arg-type]
        assert c.get("/ui/data/overview").status_code == 401
        assert c.get("/ui/data/overview", headers=KEY).json() == []
        assert c.get("/").status_code == 200  # the page itself holds no data


def test_unknown_ids_are_404_and_a_run_without_checkpoint_has_no_eval(client: TestClient) -> None:
    assert client.get("/ui/data/searches/99").status_code == 404
    assert client.get("/ui/data/training-runs/99").status_code == 404
    run = client.post("/training-runs", json={"name": "r"}, headers=KEY).json()
    detail = client.get(f"/ui/data/training-runs/{run['id']}").json()
    assert detail["eval"] is None and detail["loss_curves"] is None and detail["error"] is None
