"""Searches with ``objective: latency`` in their own unit: the dashboard's live pick, front and
hypervolume are on predicted ms/image, and ``GET /searches/compare`` puts every front on one axis (the
shared objective, else GFLOPs with a note; ``axis=latency`` only where every search has predicted
latencies from one device's table)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.controller import SearchController
from api.dashboard import front_indices
from api.db.models import JobStatus
from api.db.repository import Repository
from api.settings import Settings
from tests.api.test_latency_tables import measured, slow_narrow
from tests.factories import Outbox, complete_sent, ready, search_body
from tests.support import KEY

# a huge weight makes every pick the cheapest point: with slow_narrow's table the narrowest width (the
# fewest GFLOPs) is by far the slowest, so a pick on GFLOPs and one on predicted time disagree
# the weighted pick with a huge weight: the cheapest point, live and final alike
BODY = {"weight": 1e6, "batch_size": 8, "generations": 2, "pick_rule": "weighted"}
CHEAPEST_IN_TIME, CHEAPEST_IN_GFLOPS = [1, 1, 1, 1], [0, 0, 0, 0]


def repo_of(client: TestClient) -> Repository:
    return client.app.state.repo  # type: ignore[attr-defined,no-any-return]


def post(client: TestClient, net: int, stats: int, **change: Any) -> int:
    reply = client.post("/searches", json=search_body(net, stats, **{**BODY, **change}), headers=KEY)
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


Drive = Callable[[int, Callable[[], Any]], None]


@pytest.fixture
def drive(client: TestClient, outbox: Outbox) -> Drive:
    """``drive(search, until)``: tick the search, the fast evaluator standing in for the workers, until
    ``until()``; one controller for the whole test, as in the service (another one would wait for the
    first one's lease)."""
    repo = repo_of(client)
    controller = SearchController(repo, outbox, Settings())  # type: ignore[arg-type]

    def run(search_id: int, until: Callable[[], Any]) -> None:
        for _ in range(100):
            if until():
                return
            controller.tick(search_id)
            complete_sent(repo, outbox)
        raise AssertionError("the search never got there")

    return run


def finish(client: TestClient, drive: Drive, search_id: int) -> None:
    drive(search_id, lambda: repo_of(client).get_search(search_id).status == JobStatus.COMPLETE)


def test_the_live_pick_front_and_hypervolume_of_a_latency_search_are_in_ms_per_image(
    client: TestClient, drive: Drive
) -> None:
    repo = repo_of(client)
    net, stats = ready(repo)
    measured(repo, net, slow_narrow())
    sid = post(client, net, stats, objective="latency")
    # after the first generation: still RUNNING, so the pick is the dashboard's own (not the stored one)
    drive(sid, lambda: client.get(f"/ui/data/searches/{sid}").json()["hypervolume"])
    assert client.get(f"/searches/{sid}").json()["status"] == "RUNNING"
    data = client.get(f"/ui/data/searches/{sid}").json()
    assert (data["objective"], data["unit"]) == ("latency", "predicted ms/image")
    # 4 calls of the full width's 3 ms per call over 8 images (slow_narrow: 0.001 s x index 3)
    assert data["full_predicted_ms"] == pytest.approx(1e3 * 4 * 0.003 / 8) and data["full_gflops"] == 16.0
    done = [c for c in data["candidates"] if c["phase"] == "search" and c["state"] == "COMPLETE"]
    rest = {c["id"]: c for c in client.get(f"/searches/{sid}/candidates").json()["items"]}
    for c in done:  # both units, from what the worker recorded
        assert (
            c["cost"]
            == c["predicted_ms"]
            == pytest.approx(1e3 * rest[c["id"]]["metrics"]["predicted_latency_s"])
        )
        assert c["gflops"] == rest[c["id"]]["gflops"]
    front = [done[i]["id"] for i in front_indices([(c["cost"], c["fid"]) for c in done])]
    assert data["front"] == front  # non-dominated in (ms/image, FID), not in GFLOPs
    pick = data["pick"]
    assert not pick["final"] and pick["genome"] == CHEAPEST_IN_TIME  # on GFLOPs it would be [0, 0, 0, 0]
    assert (pick["objective"], pick["unit"]) == ("latency", "predicted ms/image")
    assert pick["cost"] == pick["predicted_ms"] == pytest.approx(1e3 * 4 * 0.001 / 8)
    assert pick["gflops"] == 8.0  # both units where both are known
    assert pick["latency_saving"] == pick["cost_saving"] == pytest.approx(1 - 1 / 3)
    assert pick["saving"] == pytest.approx(1 - 8 / 16)  # the GFLOPs saving keeps its meaning
    overview = {s["id"]: s for s in client.get("/ui/data/overview").json()}[sid]
    assert overview["objective"] == "latency" and overview["pick"] == pick
    assert all(0 < h["hypervolume"] <= 1 for h in data["hypervolume"])

    finish(client, drive, sid)  # the live pick was the final pick's genome all along
    final = client.get(f"/ui/data/searches/{sid}").json()["pick"]
    assert final["final"] and final["genome"] == CHEAPEST_IN_TIME and final["objective"] == "latency"
    report = client.get(f"/searches/{sid}/report").json()
    assert (final["saving"], final["latency_saving"]) == (report["saving"], report["latency_saving"])
    assert final["cost_saving"] == report["latency_saving"]
    data = client.get(f"/ui/data/searches/{sid}").json()
    cands = {c["id"]: c for c in data["candidates"]}
    stored = client.get(f"/searches/{sid}").json()["front"]
    assert sorted(cands[i]["genome"] for i in data["front"]) == sorted(p["genome"] for p in stored)


def test_a_gflops_search_keeps_its_gflops_pick_and_shows_predicted_time_beside_it(
    client: TestClient, drive: Drive
) -> None:
    repo = repo_of(client)
    net, stats = ready(repo)
    measured(repo, net, slow_narrow())
    sid = post(client, net, stats)  # objective gflops; the supernet's one table is recorded
    drive(sid, lambda: client.get(f"/ui/data/searches/{sid}").json()["hypervolume"])
    pick = client.get(f"/ui/data/searches/{sid}").json()["pick"]
    assert pick["genome"] == CHEAPEST_IN_GFLOPS and (pick["objective"], pick["cost"]) == ("gflops", 4.0)
    assert pick["predicted_ms"] == pytest.approx(1e3 * 4 * 1.0 / 8) and pick["latency_saving"] < 0
    assert pick["cost_saving"] == pick["saving"] == pytest.approx(1 - 4 / 16)


def test_compare_puts_every_front_on_one_axis_and_says_which(client: TestClient, drive: Drive) -> None:
    repo = repo_of(client)
    net, stats = ready(repo)
    measured(repo, net, slow_narrow())
    lat_a = post(client, net, stats, objective="latency", seed=1)
    lat_b = post(client, net, stats, objective="latency", seed=2)
    flops = post(client, net, stats, seed=3)  # GFLOPs, with the table: it has predicted latencies too
    bare_net, _ = ready(repo)
    bare = post(client, bare_net, stats, seed=4)  # GFLOPs, no table: no predicted latency
    gpu_net, _ = ready(repo)
    measured(repo, gpu_net, slow_narrow("cpu: another machine"))
    other_device = post(client, gpu_net, stats, objective="latency")
    running = post(client, net, stats, objective="latency", seed=5)
    for sid in (lat_a, lat_b, flops, bare, other_device):
        finish(client, drive, sid)
    drive(running, lambda: repo_of(client).get_search(running).result)  # a front, RUNNING

    def compare(ids: list[int], **params: str) -> dict:
        reply = client.get("/searches/compare", params={"ids": ",".join(map(str, ids)), **params})
        assert reply.status_code == 200, reply.text
        return reply.json()

    # latency searches: their own unit, the reference point 1.1 x the worst ms/image of all fronts
    body = compare([lat_a, lat_b, running])
    assert (body["axis"], body["unit"], body["note"]) == ("latency", "predicted ms/image", None)
    worst = 0.0
    for row in body["searches"]:
        stored = client.get(f"/searches/{row['id']}").json()["front"]
        expected = sorted((1e3 * p["predicted_latency_s"], p["fid"]) for p in stored)
        assert [v for p in sorted((p["cost"], p["fid"]) for p in row["front"]) for v in p] == pytest.approx(
            [v for p in expected for v in p]
        )
        assert row["objective"] == "latency" and row["min_cost"] == min(p["cost"] for p in row["front"])
        worst = max([worst, *(p["cost"] for p in row["front"])])
    assert body["reference"]["cost"] == pytest.approx(1.1 * worst)
    # different objectives: compared in GFLOPs, which both have, and the reply says so
    mixed = compare([lat_a, bare])
    assert mixed["axis"] == "gflops" and mixed["unit"] == "GFLOPs/image"
    assert f"different costs ({lat_a}: search: latency, {bare}: search: gflops)" in mixed["note"]
    assert [r["objective"] for r in mixed["searches"]] == ["latency", "gflops"]
    gflops_front = {tuple(p["genome"]): p["gflops"] for p in client.get(f"/searches/{lat_a}").json()["front"]}
    assert {p["cost"] for p in mixed["searches"][0]["front"]} <= set(gflops_front.values())
    assert mixed["reference"]["cost"] == pytest.approx(
        1.1 * max(p["cost"] for r in mixed["searches"] for p in r["front"])
    )
    # asked for: latency where every search has it (a GFLOPs search with the table does), else 422
    asked = compare([lat_a, flops], axis="latency")
    assert asked["axis"] == "latency" and asked["note"] is None
    assert compare([lat_a, lat_b], axis="gflops")["axis"] == "gflops"
    cases = [
        ({"ids": f"{lat_a},{bare}", "axis": "latency"}, f"search {bare} has no predicted ms/image"),
        ({"ids": f"{lat_a},{other_device}"}, "different latency tables are not comparable"),
        ({"ids": f"{lat_a}", "axis": "seconds"}, "gflops"),
    ]
    for params, words in cases:
        for path in ("/searches/compare", "/searches/compare/plot.png"):
            reply = client.get(path, params=params)
            assert reply.status_code == 422 and words in reply.text, (path, params, reply.text)
    png = client.get("/searches/compare/plot.png", params={"ids": f"{lat_a},{lat_b}"})
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
