"""The dashboard and /docs in Chromium against `ddsm up` with the fast evaluator."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from api.artifacts import ArtifactStore
from workers.history import RunHistory

from .conftest import KEY, Browser, Service, grid_png

pytestmark = pytest.mark.ui

LONG = {"generations": 2000}  # stays RUNNING for the whole test session unless cancelled


def candidates(service: Service, search_id: int) -> list[dict[str, Any]]:
    with service.http() as http:
        return http.get(f"/searches/{search_id}/candidates", params={"limit": 1000}).json()["items"]


def test_dashboard_lists_a_running_search_and_updates_it_without_a_reload(
    ui: Browser, service: Service
) -> None:
    running = service.start_search("running search", **LONG)
    page = ui.goto("/")
    row = page.locator(f"#searches tr[data-id='{running}']")
    row.locator(".status.RUNNING").wait_for()
    generation = row.locator("td.generation")
    before = generation.inner_text()
    page.wait_for_function(  # the page polls: the generation count moves on without a reload
        "([sel, text]) => document.querySelector(sel).innerText !== text",
        arg=[f"#searches tr[data-id='{running}'] td.generation", before],
        timeout=20_000,
    )
    done = service.search(service.searches["done"])
    done_row = page.locator(f"#searches tr[data-id='{service.searches['done']}']")
    assert "COMPLETE" in done_row.inner_text()
    assert f"{100 * done['result']['saving']:.1f}%" in done_row.locator("td.saved").inner_text()
    assert "digits-tiny" in page.locator("#supernets").inner_text()
    assert "domain" in page.locator("#reference-stats").inner_text()
    ui.screenshot("dashboard")


def test_search_page_draws_one_point_per_evaluated_candidate(ui: Browser, service: Service) -> None:
    search_id = service.searches["done"]
    evaluated = [
        c for c in candidates(service, search_id) if c["phase"] == "search" and c["state"] == "COMPLETE"
    ]
    page = ui.goto(f"/ui/searches/{search_id}")
    page.locator("#pareto circle.cand").first.wait_for()
    assert page.locator("#pareto circle.cand").count() == len(evaluated) > 0
    drawn = sorted(int(i) for i in page.locator("#pareto circle.cand").evaluate_all(
        "els => els.map(e => e.dataset.id)"))  # fmt: skip
    assert drawn == sorted(c["id"] for c in evaluated)
    assert "GFLOPs" in page.locator("#pareto .x-label").text_content()
    extractor = evaluated[0]["metrics"]["extractor"]
    assert page.locator("#pareto .y-label").text_content() == f"FID ({extractor})"
    for mark in ("mark-pick", "mark-knee"):
        assert page.locator(f"#pareto g.{mark}").count() == 1
    assert page.locator("#pareto .uniform-line").count() == 1
    generations = {c["generation"] for c in evaluated}
    assert page.locator("#hypervolume circle.hv-point").count() == len(generations)
    assert page.locator("#candidates tbody tr").count() == min(15, len(candidates(service, search_id)))
    ui.screenshot("search")


def test_search_page_says_its_pick_rule_and_links_every_finalists_strategy_file(
    ui: Browser, service: Service
) -> None:
    search_id = service.searches["done"]
    final = service.search(search_id)["result"]["final"]
    assert list(final) == ["pick", "weighted", "knee", "full"]  # the default rule: tolerance
    page = ui.goto(f"/ui/searches/{search_id}")
    links = page.locator("#strategy-files a")
    links.first.wait_for()
    assert links.evaluate_all("els => els.map(e => e.textContent)") == [f"{n}.json" for n in final]
    rule = page.locator("#pick-rule").inner_text()
    assert "cheapest front member of equal quality" in rule and "5% of its FID" in rule
    assert "weighted pick = argmin FID + 3 × GFLOPs/image" in rule
    with page.expect_download() as download:
        links.filter(has_text="weighted.json").click()
    with service.http() as http:  # the file the REST API serves, which is the report folder's
        served = http.get(f"/searches/{search_id}/strategies/weighted").content
    assert Path(download.value.path()).read_bytes() == served
    assert json.loads(served)["genes"] == final["weighted"]["genome"]
    running = service.start_search("pick so far", **LONG)
    page = ui.goto(f"/ui/searches/{running}")
    page.wait_for_function("document.querySelector('#pick-rule')?.innerText.includes('pick so far = argmin')")
    assert page.locator("#strategy-files").count() == 0  # none before COMPLETE
    with service.http() as http:
        assert http.post(f"/searches/{running}/cancel").status_code == 200


LOADED = "els => els.map(e => e.complete && e.naturalWidth > 0)"


def test_search_page_shows_the_finalists_sample_grids(ui: Browser, service: Service) -> None:
    search_id = service.searches["done"]
    page = ui.goto(f"/ui/searches/{search_id}")
    grids = page.locator("#samples figure.sample-grid")
    grids.nth(3).wait_for()
    which = grids.evaluate_all("els => els.map(e => e.dataset.which)")
    assert which == ["pick", "weighted", "full", "knee"]  # every finalist, the weighted pick beside the pick
    page.wait_for_function(f"({LOADED})([...document.querySelectorAll('#samples img')]).every(Boolean)")
    assert page.locator("#samples img").evaluate_all(LOADED) == [True] * 4
    assert "seeds 4 to 11 (held out" in page.locator("#samples").inner_text()  # after the search's 0..3
    page.locator("#samples").scroll_into_view_if_needed()
    ui.screenshot("search-samples")
    other = ui.goto(f"/ui/searches/{service.searches['other seed']}")  # the fast evaluator drew none
    other.locator("#samples .note").wait_for()
    assert "No sample grids were stored" in other.locator("#samples").inner_text()


UNCOVERED = """els => els.filter(e => {
    const r = e.getBoundingClientRect();
    return document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2) === e;
}).map(e => +e.dataset.id)"""


def test_clicking_or_hovering_a_point_shows_its_strategy(ui: Browser, service: Service) -> None:
    search_id = service.searches["done"]
    genomes = {c["id"]: c["genome"] for c in candidates(service, search_id)}
    page = ui.goto(f"/ui/searches/{search_id}")
    points = page.locator("#pareto circle.cand")
    points.first.wait_for()
    clicked, hovered = points.evaluate_all(UNCOVERED)[-2:]  # points no other point hides
    page.locator(f"#pareto circle.cand[data-id='{clicked}']").click()
    strategy = page.locator("#strategy")
    page.wait_for_function(f"document.querySelector('#strategy-info').dataset.candidate === '{clicked}'")
    assert strategy.get_attribute("data-genome") == ",".join(map(str, genomes[clicked]))
    assert strategy.locator("circle.strategy-step").count() == len(genomes[clicked])
    assert "1 = noisiest" in strategy.locator(".x-label").text_content()
    # the noisiest step (genome[0]) is the leftmost point
    xs = strategy.locator("circle.strategy-step").evaluate_all("els => els.map(e => +e.getAttribute('cx'))")
    assert xs == sorted(xs) and len(set(xs)) == len(xs)
    page.locator(f"#pareto circle.cand[data-id='{hovered}']").hover()
    page.wait_for_function(f"document.querySelector('#strategy-info').dataset.candidate === '{hovered}'")
    assert strategy.get_attribute("data-genome") == ",".join(map(str, genomes[hovered]))
    page.mouse.move(5, 5)  # leaving the point goes back to the clicked one
    page.wait_for_function(f"document.querySelector('#strategy-info').dataset.candidate === '{clicked}'")


def test_cancel_is_refused_without_the_key_and_works_with_it(ui: Browser, service: Service) -> None:
    search_id = service.start_search("to cancel", **LONG)
    page = ui.goto(f"/ui/searches/{search_id}")
    page.locator("body[data-status='RUNNING']").wait_for()
    page.locator("#cancel").click()
    page.locator("#error.error").wait_for()
    assert "401" in page.locator("#error").inner_text()
    assert service.search(search_id)["status"] == "RUNNING"

    page.locator("#api-key").fill(KEY)
    page.locator("#key-save").click()
    assert page.evaluate("sessionStorage.getItem('ddsm-api-key')") == KEY
    assert page.evaluate("localStorage.length") == 0  # kept for the browser session only
    page.locator("#cancel").click()
    page.locator("body[data-status='CANCELLED']").wait_for()
    assert service.search(search_id)["status"] == "CANCELLED"
    page.locator("#resume").click()
    page.locator("body[data-status='RUNNING']").wait_for()
    assert service.search(search_id)["status"] == "RUNNING"


def test_new_search_form_shows_the_schema_error_then_starts_the_search(ui: Browser, service: Service) -> None:
    page = ui.goto("/ui/searches/new")
    page.evaluate(f"sessionStorage.setItem('ddsm-api-key', '{KEY}')")
    page.locator("#f-population").fill("1")
    page.locator("#submit").click()
    page.locator("#error.error").wait_for()
    message = page.locator("#error").inner_text()
    assert "422" in message and "population" in message and "greater than or equal to 2" in message
    ui.screenshot("new-search")
    for name, value in {"name": "from the form", "population": "6", "generations": "1", "steps": "4",
                        "n_images": "4", "final_images": "8", "widths": "0.5, 1.0"}.items():  # fmt: skip
        page.locator(f"#f-{name}").fill(value)
    page.locator("#submit").click()
    page.wait_for_url(re.compile(r".*/ui/searches/\d+$"))
    created = service.search(int(page.url.rsplit("/", 1)[1]))
    assert created["name"] == "from the form"
    assert created["config"]["population"] == 6 and created["config"]["widths"] == [0.5, 1.0]


def test_training_page_shows_progress_and_eval_losses_and_cancels(
    ui: Browser, service: Service, tmp_path: Path
) -> None:
    # a run in the state a train worker leaves it after uploading its step-40 checkpoint
    repo = service.repo
    run_id = repo.create_training_run("digits supernet", {"preset": "digits", "train": {"steps": 100}}, 100)
    assert repo.claim_training_run(run_id, 1, "worker-under-test")
    widths = [0.25, 0.5, 0.75, 1.0]
    ckpt = tmp_path / "step-0000040"
    ckpt.mkdir()
    evaluation = {"widths": widths, "overall": [0.061, 0.048, 0.044, 0.042], "t_edges": [0, 500, 1000],
                  "per_bin": [[0.09, 0.03], [0.07, 0.026], [0.065, 0.023], [0.062, 0.022]],
                  "n_images": 64, "diff_se": [0.001, 0.0008, 0.0005, 0.0]}  # fmt: skip
    (ckpt / "manifest.json").write_text(
        json.dumps({"format": "ddsm-checkpoint", "step": 40, "eval": evaluation})
    )
    store = ArtifactStore(str(service.home / "artifacts"))
    sha = store.put_dir(ckpt)
    # and its log and sample grids, uploaded by workers.history as the worker does
    run_dir = tmp_path / "run"
    (run_dir / "samples").mkdir(parents=True)
    with open(run_dir / "log.jsonl", "w") as log:
        for step in range(1, 41):
            losses = {f"{round(8 * w)}/8": (0.2 / w**0.5) * (1 + 3 / step) for w in widths}  # as the trainer
            log.write(json.dumps({"step": step, "losses": losses}) + "\n")
    for step in (20, 40):  # one row of 8 per width
        grid = grid_png(4 * 8, 2.0 - step / 20, per_row=8)
        (run_dir / "samples" / f"step-{step:07d}.png").write_bytes(grid)
    artifacts = RunHistory(store, run_dir, None).upload(checkpoint=True)
    assert repo.training_progress(run_id, 1, "worker-under-test", 40, sha, 100, artifacts)

    page = ui.goto(f"/ui/training-runs/{run_id}")
    page.locator("#eval-table").wait_for()
    curves = page.locator("#loss-curves path.loss-curve")
    assert curves.evaluate_all("els => els.map(e => e.dataset.width)") == ["0.25", "0.5", "0.75", "1"]
    assert all(d.count("L") == 39 for d in curves.evaluate_all("els => els.map(e => e.getAttribute('d'))"))
    assert page.locator("#loss-curves .x-label").text_content() == "training step"
    page.wait_for_function("document.querySelector('#grid-img').naturalWidth > 0")
    assert page.locator("#grid-step option").all_inner_texts() == ["20", "40"]
    latest = page.locator("#grid-img").get_attribute("src")
    page.locator("#grid-step").select_option(label="20")
    page.wait_for_function(f"document.querySelector('#grid-img').getAttribute('src') !== '{latest}'")
    assert "40%" in page.locator("#summary").inner_text()
    rows = page.locator("#eval-table tbody tr")
    assert rows.count() == len(widths)
    assert "0.06100" in rows.nth(0).inner_text()
    assert "step 40" in page.locator("#eval-step").inner_text()
    ui.screenshot("training-run")
    page.evaluate(f"sessionStorage.setItem('ddsm-api-key', '{KEY}')")
    page.locator("#cancel").click()
    page.locator("body[data-status='CANCELLED']").wait_for()
    assert repo.get_training_run(run_id).status.value == "CANCELLED"  # type: ignore[union-attr]


def test_compare_page_draws_the_front_of_each_chosen_search(ui: Browser, service: Service) -> None:
    ids = [service.searches["done"], service.searches["other seed"]]
    asked: list[str] = []
    ui.page.on("request", lambda r: asked.append(urlparse(r.url).path))
    page = ui.goto(f"/ui/compare?ids={ids[0]},{ids[1]}")
    page.locator("#fronts path.front").nth(1).wait_for()
    drawn = page.locator("#fronts path.front").evaluate_all("els => els.map(e => +e.dataset.search)")
    assert sorted(drawn) == sorted(ids)
    assert page.locator("#fronts .y-label").text_content().startswith("FID (")
    # the fronts and hypervolumes are the API's (GET /searches/compare), not recomputed in the page
    assert "/searches/compare" in asked
    assert not [p for p in asked if re.fullmatch(r"/searches/\d+", p)]  # no search fetched one by one
    with service.http() as http:
        body = http.get("/searches/compare", params={"ids": f"{ids[0]},{ids[1]}"}).json()
    rows = page.locator("#hv-table tbody tr")
    assert rows.count() == 2
    for row in body["searches"]:  # the same reference point, whatever the order of the ids
        shown = page.locator(f"#hv-table tbody tr[data-id='{row['id']}'] td").nth(2).inner_text()
        assert shown == f"{row['hypervolume']:.4g}"
    ui.screenshot("compare")


def test_docs_render_every_operation_without_leaving_the_machine(ui: Browser, service: Service) -> None:
    with service.http() as http:
        spec = http.get("/openapi.json").json()
    operations = sum(len(methods) for methods in spec["paths"].values())
    page = ui.goto("/docs")
    page.locator(".opblock").first.wait_for()
    assert page.locator(".opblock").count() == operations
    assert not ui.outside  # Swagger UI's assets came from the API itself
    ui.screenshot("docs")


def latency_search(service: Service) -> int:
    """A finished search with objective latency, on a supernet of its own whose latency table (as a worker
    leaves it) makes the narrowest width, the fewest GFLOPs, the slowest."""
    from ddsm_core.latency import LatencyTable

    from .conftest import TABLE

    if "latency" in service.searches:
        return service.searches["latency"]
    repo = service.repo
    net = repo.create_supernet("digits-tiny-timed", "d" * 64, {})
    repo.supernet_ready(net, TABLE, {})
    seconds = [(0.005, 0.04), (0.0015, 0.012), (0.002, 0.018), (0.003, 0.024)]  # per call at batch 1, 8
    table = LatencyTable(device="cpu: ui test", dtype="float32", threads=1, widths=tuple(TABLE["widths"]),
                         batch_sizes=(1, 8), seconds=seconds, overhead={"ddim": (0.0, 0.0)})  # fmt: skip
    table_id = repo.create_latency_table(net, "float32", [1, 8], 1, 0)
    assert repo.claim_latency_table(table_id, "w") and repo.complete_latency_table(
        table_id, "w", table.to_dict()
    )
    sid = service.start_search("latency search", supernet_id=net, objective="latency", batch_size=8)
    service.wait_for(
        "the latency search to complete", lambda: service.search(sid)["status"] == "COMPLETE", 90
    )
    service.searches["latency"] = sid
    return sid


def test_a_latency_search_is_shown_in_predicted_ms_per_image(ui: Browser, service: Service) -> None:
    sid = latency_search(service)
    report = service.search(sid)["result"]
    page = ui.goto(f"/ui/searches/{sid}")
    page.locator("#pareto circle.cand").first.wait_for()
    assert page.locator("#objective").inner_text() == "predicted ms/image"
    assert "predicted latency" in page.locator("#pareto .x-label").text_content()
    assert "(ms" in page.locator("#pareto .x-label").text_content()
    assert page.locator("#pareto .front-line").count() == 1  # the front is the one in ms/image
    pick = page.locator("#pick-text").inner_text()
    assert (
        f"{100 * report['latency_saving']:.1f}% predicted time" in pick and "ms (predicted) per image" in pick
    )
    assert f"GFLOPs {100 * report['saving']:.1f}%" in pick  # the other unit beside it
    assert page.locator("#hv-cost").inner_text() == "predicted ms/image"
    ui.screenshot("search-latency")
    # the GFLOPs axis is still there to look at, without a front line: the front is not GFLOPs'
    page.locator("#x-axis").select_option("gflops")
    page.wait_for_function("document.querySelector('#pareto .x-label').textContent.startsWith('GFLOPs')")
    assert page.locator("#pareto .front-line").count() == 0

    index = ui.goto("/")
    saved = index.locator(f"#searches tr[data-id='{sid}'] td.saved")
    saved.wait_for()
    assert f"{100 * report['latency_saving']:.1f}% predicted time" in saved.inner_text()


def test_compare_page_says_which_unit_it_compares_in(ui: Browser, service: Service) -> None:
    sid, done = latency_search(service), service.searches["done"]
    page = ui.goto(f"/ui/compare?ids={sid}")
    page.locator("#fronts path.front").first.wait_for()
    assert "predicted latency" in page.locator("#fronts .x-label").text_content()
    assert page.locator("#min-cost").inner_text() == "min ms"
    page = ui.goto(f"/ui/compare?ids={sid},{done}")  # a latency and a GFLOPs search: in GFLOPs, said so
    page.locator("#axis-note.info").wait_for()
    assert "different costs" in page.locator("#axis-note").inner_text()
    assert page.locator("#fronts .x-label").text_content().startswith("GFLOPs")
    assert page.locator("#fronts path.front").count() == 2
    page.locator("#axis").select_option("latency")  # the GFLOPs search has no predicted latency: the 422
    page.locator("#extractor-warning.error").wait_for()
    assert "has no predicted ms/image" in page.locator("#extractor-warning").inner_text()
    assert page.url.endswith("axis=latency")
