"""Sample grids and loss curves the workers store, served by the API (PNG / JSON, 404 when absent)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image

from api.artifacts import SAMPLES_METRIC, ArtifactStore
from api.controller import SearchController
from api.db.models import JobStatus
from api.db.repository import Repository
from api.settings import Settings
from ddsm_core.costs import CostTable
from ddsm_core.spec import SearchSpec
from ddsm_core.train_log import loss_curves, read_log
from tests.factories import Outbox, complete_sent, ready, search_body
from tests.support import KEY
from workers.fast_eval import fast_metrics
from workers.history import RunHistory


def png(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8), color=shade).save(buf, format="PNG")
    return buf.getvalue()


def grid_worker(repo: Repository, store: ArtifactStore, outbox: Outbox) -> None:
    """A worker as ``workers.tasks`` is for the fast evaluator, plus what the real one adds for a
    finalist: a sample grid (here a PNG whose shade is the candidate id) named in its metrics."""
    for cid, attempt in outbox.take_evaluations():
        assert repo.claim_candidate(cid, attempt, "w")
        cand = repo.get_candidate(cid)
        search = repo.get_search(cand.search_id)  # type: ignore[union-attr]
        net = repo.get_supernet(search.supernet_id)  # type: ignore[union-attr]
        spec = SearchSpec.from_dict(search.config)  # type: ignore[union-attr]
        metrics = fast_metrics(spec, cand.genome, CostTable.from_dict(net.gflops))  # type: ignore[union-attr]
        if cand.phase == "final":  # type: ignore[union-attr]
            metrics[SAMPLES_METRIC] = store.put_bytes(png(cid))
        assert repo.complete_candidate(cid, attempt, "w", metrics)


def run_search(client: TestClient, outbox: Outbox, grids: bool, **change: object) -> int:
    repo, store = client.app.state.repo, client.app.state.store  # type: ignore[attr-defined]
    net, stats = ready(repo)
    sid = client.post("/searches", json=search_body(net, stats, **change), headers=KEY).json()["id"]
    controller = SearchController(repo, outbox, Settings(), store=store)  # type: ignore[arg-type]
    for _ in range(100):
        controller.tick(sid)
        if repo.get_search(sid).status == JobStatus.FINISHING:
            assert client.get(f"/searches/{sid}/samples/pick.png").status_code == 409  # not COMPLETE yet
            if SearchSpec.from_dict(repo.get_search(sid).config).pick_rule == "tolerance":
                assert client.get(f"/searches/{sid}/samples/weighted.png").status_code == 409
        grid_worker(repo, store, outbox) if grids else complete_sent(repo, outbox)
        if repo.get_search(sid).status == JobStatus.COMPLETE:
            return sid
    raise AssertionError("the search did not complete")


def test_the_finalists_grids_are_served_as_png_and_kept_out_of_the_results(
    client: TestClient, outbox: Outbox
) -> None:
    sid = run_search(client, outbox, grids=True)
    repo = client.app.state.repo  # type: ignore[attr-defined]
    done = client.get(f"/searches/{sid}").json()
    finals = {tuple(c.genome): c for c in repo.candidates(sid, phase="final")}
    names = list(done["result"]["final"])
    assert names == ["pick", "weighted", "knee", "full"]  # the default rule: tolerance
    for which in names:  # every finalist a strategy file is served for
        reply = client.get(f"/searches/{sid}/samples/{which}.png")
        assert reply.status_code == 200 and reply.headers["content-type"] == "image/png"
        cand = finals[tuple(done["result"]["final"][which]["genome"])]
        assert reply.content == png(cand.id)  # that finalist's own grid
    # the search's results.json stays `ddsm search`'s: the grid is service bookkeeping
    assert SAMPLES_METRIC not in json.dumps(done["result"])
    data = client.get(f"/ui/data/searches/{sid}").json()["sample_grids"]
    assert list(data["grids"]) == names
    assert data["grids"]["weighted"]["url"] == f"/searches/{sid}/samples/weighted.png"
    assert data["seeds"] == [4, 11]  # the finalists' seeds (after the search's 0..3): all 8 in the grid
    assert data["held_out"] is True
    unknown = client.get(f"/searches/{sid}/samples/best.png")
    assert unknown.status_code == 404
    assert unknown.json()["detail"].endswith("available: pick, weighted, knee, full")
    assert client.get("/searches/999/samples/pick.png").status_code == 404
    assert client.get("/searches/abc/samples/pick.png").status_code == 422


def test_a_weighted_rule_search_has_no_weighted_grid(client: TestClient, outbox: Outbox) -> None:
    sid = run_search(client, outbox, grids=True, pick_rule="weighted")
    assert client.get(f"/searches/{sid}/samples/pick.png").status_code == 200
    reply = client.get(f"/searches/{sid}/samples/weighted.png")
    assert reply.status_code == 404
    assert "the weighted pick is its pick" in reply.json()["detail"]
    assert reply.json()["detail"].endswith("available: pick, knee, full")


def test_a_search_whose_evaluator_drew_no_images_has_no_grid(client: TestClient, outbox: Outbox) -> None:
    sid = run_search(client, outbox, grids=False)
    reply = client.get(f"/searches/{sid}/samples/pick.png")
    assert reply.status_code == 404 and "no sample grid" in reply.json()["detail"]
    assert client.get(f"/ui/data/searches/{sid}").json()["sample_grids"] is None


def test_the_routes_are_documented_as_png(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/searches/{search_id}/samples/{which}.png", "/training-runs/{run_id}/samples.png"):
        reply = paths[path]["get"]["responses"]
        assert "image/png" in reply["200"]["content"] and "404" in reply
    assert "/training-runs/{run_id}/losses" in paths


LOG = [  # as the trainer writes it: widths as ddsm_core.widths.format_width gives them
    {"step": 1, "losses": {"2/8": 0.9, "8/8": 0.8}},
    {"step": 2, "losses": {"2/8": 0.7, "8/8": 0.5}},
    {"step": 3, "losses": {"2/8": 0.6, "8/8": 0.4}},
    {"step": 2, "losses": {"2/8": 0.65, "8/8": 0.45}},  # logged again after a resume: the later wins
    {"step": 5, "losses": {"wide": 0.1}},  # not a width: skipped, never a 500
]


def write_run(folder: Path, records: list[dict], grids: dict[int, int]) -> None:
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records)
    (folder / "log.jsonl").write_text(text + '{"step": 4, "loss')  # a line torn by a kill
    for step, shade in grids.items():
        (folder / "samples" / f"step-{step:07d}.png").write_bytes(png(shade))


def test_a_runs_loss_curves_and_grids_are_served(client: TestClient, tmp_path: Path) -> None:
    repo, store = client.app.state.repo, client.app.state.store  # type: ignore[attr-defined]
    run = client.post("/training-runs", json={"name": "r"}, headers=KEY).json()["id"]
    assert client.get(f"/training-runs/{run}/losses").status_code == 404  # nothing uploaded yet
    assert client.get(f"/training-runs/{run}/samples.png").status_code == 404
    assert repo.claim_training_run(run, 1, "w")
    write_run(tmp_path / "run", LOG, {2: 20, 3: 30})
    history = RunHistory(store, tmp_path / "run", None)
    assert repo.training_progress(run, 1, "w", 3, None, 10, history.upload(checkpoint=True))

    row = client.get(f"/training-runs/{run}").json()
    assert row["sample_steps"] == [2, 3] and row["loss_log_step"] == 3
    curves = client.get(f"/training-runs/{run}/losses").json()
    assert curves["steps"] == [1, 2, 3] and curves["logged"] == 3
    assert curves["losses"] == {"0.25": [0.9, 0.65, 0.6], "1": [0.8, 0.45, 0.4]}
    latest = client.get(f"/training-runs/{run}/samples.png")
    assert latest.headers["content-type"] == "image/png" and latest.content == png(30)
    assert client.get(f"/training-runs/{run}/samples.png", params={"step": 2}).content == png(20)
    assert client.get(f"/training-runs/{run}/samples.png", params={"step": 5}).status_code == 404
    for bad in ("-1", "x", str(2**40)):
        assert client.get(f"/training-runs/{run}/samples.png", params={"step": bad}).status_code == 422
    assert client.get("/training-runs/999/losses").status_code == 404
    assert client.get("/training-runs/999/samples.png").status_code == 404
    detail = client.get(f"/ui/data/training-runs/{run}").json()
    assert detail["loss_curves"]["losses"]["1"] == [0.8, 0.45, 0.4]
    assert [g["step"] for g in detail["sample_grids"]] == [2, 3]


def test_the_history_uploads_new_grids_once_and_resumes_from_the_cut_log(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    write_run(tmp_path / "a", LOG[:3], {2: 20})
    first = RunHistory(store, tmp_path / "a", None, log_every_s=3600)
    uploaded = first.upload(checkpoint=False)  # a new grid, the log not due
    assert uploaded is not None and list(uploaded["samples"]) == ["2"] and "log_sha256" not in uploaded
    assert first.upload(checkpoint=False) is None  # nothing new
    record = first.upload(checkpoint=True)
    assert record is not None and record["log_step"] == 3
    # another worker resumes from the step-2 checkpoint: its log starts with steps 1 and 2 only
    second = RunHistory(store, tmp_path / "b", record)
    second.restore(2)
    assert sorted(read_log((tmp_path / "b" / "log.jsonl").read_text().splitlines())) == [1, 2]
    assert second.upload(checkpoint=False) is None  # the uploaded grids are known
    lost = RunHistory(store, tmp_path / "c", {**record, "log_sha256": "0" * 64})
    lost.restore(2)  # a lost log costs the curves their start, not the run
    assert not (tmp_path / "c" / "log.jsonl").exists()


def test_long_logs_are_averaged_in_buckets() -> None:
    lines = [json.dumps({"step": k, "losses": {"1": float(k)}}) for k in range(1, 11)]
    curves = loss_curves(lines, max_points=4)  # buckets of 3: (1,2,3) (4,5,6) (7,8,9) (10)
    assert curves["steps"] == [3, 6, 9, 10] and curves["losses"]["1"] == [2.0, 5.0, 8.0, 10.0]
    assert loss_curves(['{"step": 1, "losses": {"1": NaN}}', "not json"])["logged"] == 0
