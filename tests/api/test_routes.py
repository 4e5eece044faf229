from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.controller import SearchController
from api.db.models import JobStatus
from api.db.repository import Repository
from api.settings import Settings
from ddsm_core.search import SearchDriver
from ddsm_core.spec import SearchSpec
from tests.factories import Outbox, complete_sent, drive, ready, search_body
from tests.support import KEY, local_settings


def repo_of(client: TestClient) -> Repository:
    return client.app.state.repo  # type: ignore[attr-defined,no-any-return]


def test_health_answers_without_a_key(client: TestClient) -> None:
    reply = client.get("/health")
    assert reply.status_code == 200 and reply.json()["database"] == "ok"


def test_writes_need_the_api_key_and_reads_do_not(client: TestClient) -> None:
    net, stats = ready(repo_of(client))
    assert client.post("/searches", json=search_body(net, stats)).status_code == 401
    assert (
        client.post("/searches", json=search_body(net, stats), headers={"X-API-Key": "no"}).status_code == 401
    )
    assert client.get("/searches").status_code == 200


def test_reads_can_require_the_key(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, api_key="secret", reads_need_key=True, run_controller=False)
    with TestClient(create_app(settings, dispatcher=Outbox())) as c:  # type: ignore[arg-type]
        assert c.get("/searches").status_code == 401
        assert c.get("/searches", headers=KEY).status_code == 200


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({"supernet_id": 999}, 404, "supernet 999 not found"),
        ({"reference_stats_id": 999}, 404, "not found"),
        ({"sampler": "euler"}, 422, "dpm-solver++"),
        ({"widths": [0.3, 1.0]}, 422, "not offered"),
        ({"population": 2}, 422, "population"),
        ({"steps": 1}, 422, "steps"),
        ({"crossover": "magic"}, 422, "crossover"),
        ({"rungs": list(range(2, 20)), "n_images": 64}, 422, "at most 16"),
        ({"rungs": [4]}, 422, "rungs must be increasing"),
    ],
)
def test_user_mistakes_in_a_search_get_a_4xx_with_a_message(
    client: TestClient, change: dict[str, object], code: int, words: str
) -> None:
    net, stats = ready(repo_of(client))
    reply = client.post("/searches", json=search_body(net, stats, **change), headers=KEY)
    assert reply.status_code == code, reply.text
    assert words in reply.text


def test_a_rungs_search_is_accepted_and_shows_each_rungs_progress(client: TestClient, outbox: Outbox) -> None:
    net, stats = ready(repo_of(client))
    body = search_body(net, stats, n_images=16, rungs=[4, 8], promote=0.5)
    reply = client.post("/searches", json=body, headers=KEY)
    assert reply.status_code == 201, reply.text
    sid = reply.json()["id"]
    assert reply.json()["config"]["rungs"] == [4, 8]
    SearchController(repo_of(client), outbox, Settings()).tick(sid)  # type: ignore[arg-type]
    progress = client.get(f"/searches/{sid}").json()["progress"]
    rungs = [(r["n_images"], r["phase"]) for r in progress["rungs"]]
    assert rungs == [(4, "rung0"), (8, "rung1"), (16, "search")]
    assert progress["candidates"]["WAITING"] == progress["rungs"][0]["candidates"]["WAITING"] > 0
    assert progress["rungs"][1]["candidates"]["WAITING"] == 0
    items = client.get(f"/searches/{sid}/candidates").json()["items"]
    assert {(c["phase"], c["n_images"]) for c in items} == {("rung0", 4)}
    flat = client.post("/searches", json=search_body(net, stats), headers=KEY).json()
    assert client.get(f"/searches/{flat['id']}").json()["progress"]["rungs"] is None


def test_search_on_a_supernet_not_ready_is_a_conflict(client: TestClient) -> None:
    repo = repo_of(client)
    _, stats = ready(repo)
    pending = repo.create_supernet("p", "c" * 64, {})
    reply = client.post("/searches", json=search_body(pending, stats), headers=KEY)
    assert reply.status_code == 409 and "PENDING" in reply.text


def test_unknown_ids_are_404(client: TestClient) -> None:
    for path in (
        "/searches/5",
        "/supernets/5",
        "/reference-stats/5",
        "/training-runs/5",
        "/searches/5/candidates",
        "/candidates/5/strategy",
    ):
        assert client.get(path).status_code == 404, path


def test_register_missing_checkpoint_is_a_4xx(tmp_path: Path, outbox: Outbox) -> None:
    roots = tmp_path / "ckpts"
    roots.mkdir()
    settings = local_settings(tmp_path / "home", api_key="secret", run_controller=False,
                              checkpoint_roots=str(roots))  # fmt: skip
    with TestClient(create_app(settings, dispatcher=outbox)) as client:  # type: ignore[arg-type]
        reply = client.post(
            "/supernets", json={"name": "x", "checkpoint_path": str(roots / "nope")}, headers=KEY
        )
        assert reply.status_code == 422 and "does not exist" in reply.text
        (roots / "empty").mkdir()
        reply = client.post(
            "/supernets", json={"name": "x", "checkpoint_path": str(roots / "empty")}, headers=KEY
        )
        assert reply.status_code == 400 and "manifest" in reply.text


def test_training_run_is_queued_and_can_be_cancelled_once(client: TestClient, outbox: Outbox) -> None:
    reply = client.post("/training-runs", json={"preset": "digits", "train": {"steps": 20}}, headers=KEY)
    assert reply.status_code == 202, reply.text
    run = reply.json()
    assert (
        run["status"] == "PENDING" and run["total_steps"] == 20 and ("train", (run["id"], 1)) in outbox.sent
    )
    assert client.post(f"/training-runs/{run['id']}/cancel", headers=KEY).json()["status"] == "CANCELLED"
    assert client.post(f"/training-runs/{run['id']}/cancel", headers=KEY).status_code == 409
    assert client.post("/training-runs", json={"preset": "imagenet"}, headers=KEY).status_code == 422


def test_reference_stats_are_computed_on_a_worker(client: TestClient, outbox: Outbox) -> None:
    reply = client.post("/reference-stats", json={"name": "d", "dataset": "digits"}, headers=KEY)
    assert reply.status_code == 202 and reply.json()["status"] == "PENDING"
    assert ("stats", (reply.json()["id"],)) in outbox.sent


def test_registered_statistics_show_their_real_data_floors(tmp_path: Path, outbox: Outbox) -> None:
    import numpy as np

    from ddsm_core.fid import FeatureStats
    from ddsm_core.floor import compute_floors, with_floors

    roots = tmp_path / "stats"
    real = np.random.default_rng(0).normal(size=(120, 4))
    plain = FeatureStats.from_features(real[:80], "domain:test")
    plain.save(roots / "plain.npz")
    with_floors(plain, compute_floors(real[80:], plain, "test", counts=(10,))).save(roots / "floors.npz")
    settings = local_settings(tmp_path / "home", api_key="secret", run_controller=False,
                              checkpoint_roots=str(roots))  # fmt: skip
    with TestClient(create_app(settings, dispatcher=outbox)) as client:  # type: ignore[arg-type]
        shown = {}
        for name in ("plain", "floors"):
            body = {"name": name, "dataset": "digits", "path": str(roots / f"{name}.npz")}
            reply = client.post("/reference-stats", json=body, headers=KEY)
            assert reply.status_code == 202, reply.text
            shown[name] = client.get(f"/reference-stats/{reply.json()['id']}").json()
    assert shown["plain"]["floors"] is None and shown["floors"]["status"] == "COMPLETE"
    floors = shown["floors"]["floors"]
    assert [(f["n_images"], f["split"], f["subsets"]) for f in floors] == [(10, "test", 5), (40, "test", 1)]
    assert all(f["fid"] > 0 for f in floors)


def _no_algorithm_reads(mp: pytest.MonkeyPatch) -> None:
    """Make any rebuild of the search algorithm from its stored state fail loudly."""

    def refuse(*args: object, **kw: object) -> None:
        raise AssertionError("a read path rebuilt the algorithm state")

    mp.setattr(SearchDriver, "load_state_dict", refuse)


def test_search_over_rest_runs_to_a_front_with_progress_strategies_and_report(
    client: TestClient, outbox: Outbox, tmp_path: Path
) -> None:
    net, stats = ready(repo_of(client))
    reply = client.post("/searches", json=search_body(net, stats), headers=KEY)
    assert reply.status_code == 201, reply.text
    search = reply.json()
    assert search["status"] == "RUNNING" and search["progress"]["percent"] == 0
    repo = repo_of(client)
    controller = SearchController(repo, outbox, Settings())  # type: ignore[arg-type]
    spec = SearchSpec.from_dict(search["config"])
    seen_running = False
    for _ in range(100):
        controller.tick(search["id"])
        complete_sent(repo, outbox)
        row = repo.get_search(search["id"])
        if row.status == JobStatus.RUNNING and row.result and not seen_running:
            with pytest.MonkeyPatch.context() as mp:  # the front is stored per generation
                _no_algorithm_reads(mp)
                running = client.get(f"/searches/{search['id']}").json()
                assert client.get("/searches").status_code == 200
            assert running["front"] and running["result"] is None
            assert running["progress"]["generations_done"] >= 1
            seen_running = True
        if row.status == JobStatus.COMPLETE:
            break
    assert seen_running
    with pytest.MonkeyPatch.context() as mp:
        _no_algorithm_reads(mp)
        done = client.get(f"/searches/{search['id']}").json()
        report = client.get(f"/searches/{search['id']}/report").json()
    assert done["status"] == "COMPLETE" and done["progress"]["percent"] == 100 and done["front"]
    page = client.get(f"/searches/{search['id']}/candidates", params={"limit": 3}).json()
    assert len(page["items"]) == 3 and page["total"] > 3
    pick = client.get(f"/searches/{search['id']}/strategies/pick").json()
    assert pick["genes"] == done["result"]["pick"]["genome"] and pick["sampler"] == "ddim"
    assert "candidates" not in done["result"] and done["result"]["front"] == report["front"]
    full = client.get(f"/searches/{search['id']}/strategies/full").json()
    assert full["genes"] == [len(spec.widths) - 1] * spec.steps == report["final"]["full"]["genome"]
    assert client.get(f"/searches/{search['id']}/strategies/best").status_code == 404
    assert report["front"] and set(report["final"]) == {"pick", "weighted", "knee", "full"}
    assert report["pick_rule"] == "tolerance" and report["bisection"]["probes"]  # the default rule
    from api.report import write_search_report

    path = write_search_report(tmp_path / "report", report)
    assert "Step-aware strategy search" in path.read_text() and (tmp_path / "report" / "pareto.png").exists()
    assert (tmp_path / "report" / "pick.json").read_text().strip() == json.dumps(pick, indent=1)
    for name in ("pick.json", "knee.json", "results.json"):  # the report folder's files, as is
        body = json.loads((tmp_path / "report" / name).read_text())
        checked = client.post("/strategies", json=body)
        assert checked.status_code == 200, checked.text
        assert checked.json()["genes"] == report["final"]["knee" if name == "knee.json" else "pick"]["genome"]
    assert client.post("/strategies/plot.png", json=pick).content[:4] == b"\x89PNG"
    bad = client.post("/strategies", json={**pick, "genes": [99] * spec.steps})
    assert bad.status_code == 422 and "gene" in bad.json()["detail"]
    assert client.post(f"/searches/{search['id']}/cancel", headers=KEY).status_code == 409
    assert client.post(f"/searches/{search['id']}/resume", headers=KEY).status_code == 409


@pytest.mark.parametrize("rule", ["tolerance", "weighted"])
def test_every_finalist_of_the_report_downloads_as_the_file_ddsm_search_writes(
    db_client: TestClient, outbox: Outbox, tmp_path: Path, rule: str
) -> None:
    from ddsm_core.cli import app, run_app
    from ddsm_core.report import write_strategy_files
    from ddsm_core.strategy import Strategy, parse_strategy_spec

    client = db_client  # on SQLite and Postgres
    repo = repo_of(client)
    net, stats = ready(repo)
    sid = client.post("/searches", json=search_body(net, stats, pick_rule=rule), headers=KEY).json()["id"]
    controller = SearchController(repo, outbox, Settings())  # type: ignore[arg-type]
    controller.tick(sid)
    early = client.get(f"/searches/{sid}/strategies/knee")
    assert early.status_code == 409 and "COMPLETE" in early.json()["detail"]
    unknown = client.get(f"/searches/{sid}/strategies/best")  # unknown whatever the status
    assert unknown.status_code == 404 and "knee" in unknown.json()["detail"]
    drive(repo, controller, outbox, sid)
    report = client.get(f"/searches/{sid}/report").json()
    names = ["pick", "weighted", "knee", "full"] if rule == "tolerance" else ["pick", "knee", "full"]
    assert list(report["final"]) == names

    folder = tmp_path / "report"  # what `ddsm search --out` writes for these results
    written = {path.stem: path for path in write_strategy_files(folder, report)}
    assert sorted(written) == sorted(names)
    for name, path in written.items():
        reply = client.get(f"/searches/{sid}/strategies/{name}")
        assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
        assert reply.content == path.read_bytes(), name  # byte for byte
        assert reply.json()["genes"] == report["final"][name]["genome"]
        png = client.get(f"/searches/{sid}/strategies/{name}/plot.png")
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
        # outputs are inputs: `ddsm sample --strategy FILE` and `ddsm strategy transfer` take it
        downloaded = tmp_path / f"downloaded-{name}.json"
        downloaded.write_bytes(reply.content)
        assert parse_strategy_spec(downloaded, None, None) == Strategy.from_dict(reply.json())
        moved = tmp_path / f"moved-{name}.json"
        args = ["--sampler", "ddpm", "--steps", "8", "--out", str(moved)]
        assert run_app(app, ["strategy", "transfer", "--strategy", str(downloaded), *args]) == 0
        assert Strategy.from_json(moved.read_text()).steps == 8
    if rule == "tolerance":  # the weighted pick is a finalist of its own, beside the pick
        assert report["final"]["weighted"]["genome"] == report["weighted_pick"]["genome"]
    else:  # the weighted pick is the pick: no second file, and the 404 says so
        assert report["pick"]["genome"] == report["weighted_pick"]["genome"]
        reply = client.get(f"/searches/{sid}/strategies/weighted")
        assert reply.status_code == 404 and "the weighted pick is its pick" in reply.json()["detail"]
    for which in ("best", "weighted" if rule == "weighted" else "front", "pick.json"):
        reply = client.get(f"/searches/{sid}/strategies/{which}")
        assert reply.status_code == 404, which
        assert f"available: {', '.join(names)}" in reply.json()["detail"], reply.text
        assert client.get(f"/searches/{sid}/strategies/{which}/plot.png").status_code == 404
    assert client.get("/searches/999999/strategies/pick").status_code == 404


def test_strategy_line_plot_is_a_png(client: TestClient) -> None:
    pytest.importorskip("ddsm_core.plots")
    net, stats = ready(repo_of(client))
    sid = client.post("/searches", json=search_body(net, stats), headers=KEY).json()["id"]
    repo = repo_of(client)
    SearchController(repo, Outbox(), Settings()).tick(sid)  # type: ignore[arg-type]
    cid = repo.candidates(sid)[0].id
    png = client.get(f"/candidates/{cid}/strategy/plot.png")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"


def test_cancel_then_resume_a_running_search(client: TestClient) -> None:
    net, stats = ready(repo_of(client))
    sid = client.post("/searches", json=search_body(net, stats), headers=KEY).json()["id"]
    assert client.post(f"/searches/{sid}/cancel", headers=KEY).json()["status"] == "CANCELLED"
    assert client.post(f"/searches/{sid}/resume", headers=KEY).json()["status"] == "RUNNING"


def test_the_api_process_imports_no_torch(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from fastapi.testclient import TestClient\n"
        "from api.app import create_app\n"
        "from api.settings import Settings\n"
        "import api.cli, workers.app\n"
        f"s = Settings(home={str(tmp_path)!r}, database_url='sqlite:///{tmp_path}/t.sqlite', "
        f"celery_broker_url='sqla+sqlite:///{tmp_path}/b.sqlite', artifact_store={str(tmp_path / 'a')!r})\n"
        "with TestClient(create_app(s)) as c:\n"
        "    assert c.get('/health').status_code == 200\n"
        "    assert c.get('/openapi.json').status_code == 200\n"
        "print('no torch')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "no torch" in out.stdout
