"""Latency tables over REST (request, list, get; 4xx on bad input) and searches with objective latency:
the table is chosen and checked at POST, the workers' metrics carry the predicted latency and the
controller's NSGA-II minimises it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.controller import SearchController
from api.db.models import JobStatus
from api.db.repository import Repository
from api.settings import Settings
from ddsm_core.latency import LatencyTable
from tests.factories import TABLE, Outbox, complete_sent, ready, search_body
from tests.support import KEY


def repo_of(client: TestClient) -> Repository:
    return client.app.state.repo  # type: ignore[attr-defined,no-any-return]


def slow_narrow(device: str = "cuda: test GPU", widths: tuple[float, ...] = tuple(TABLE["widths"])) -> dict:
    """A table where the narrowest width is 1000x slower than the others (GFLOPs favour it)."""
    seconds = [(1.0, 1.0) if i == 0 else (0.001 * i, 0.001 * i) for i in range(len(widths))]
    return LatencyTable(device=device, dtype="float32", threads=0, widths=widths, batch_sizes=(1, 8),
                        seconds=seconds, overhead={"ddim": (0.0, 0.0)}).to_dict()  # fmt: skip


def measured(repo: Repository, net: int, table: dict, worker: str = "w") -> int:
    """A latency table requested and measured (as the worker's claim and completion record it)."""
    table_id = repo.create_latency_table(net, "float32", [1, 8], 1, 0)
    assert repo.claim_latency_table(table_id, worker)
    assert not repo.claim_latency_table(table_id, "other")  # a redelivered message loses the claim
    assert repo.complete_latency_table(table_id, worker, table)
    return table_id


def test_a_requested_table_is_queued_listed_and_read(client: TestClient, outbox: Outbox) -> None:
    net, _ = ready(repo_of(client))
    body = {"dtype": "bfloat16", "batch_sizes": [64, 1], "repeats": 3}
    assert client.post(f"/supernets/{net}/latency-tables", json=body).status_code == 401
    reply = client.post(f"/supernets/{net}/latency-tables", json=body, headers=KEY)
    assert reply.status_code == 202, reply.text
    row = reply.json()
    assert (row["status"], row["dtype"], row["batch_sizes"], row["repeats"], row["warmup"]) == (
        "PENDING", "bfloat16", [1, 64], 3, 2
    )  # fmt: skip
    assert row["device"] is None and row["table"] is None
    assert outbox.sent[-1] == ("latency", (row["id"],))
    assert [t["id"] for t in client.get(f"/supernets/{net}/latency-tables").json()] == [row["id"]]
    assert client.get(f"/supernets/{net}/latency-tables/{row['id']}").json() == row


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"batch_sizes": []}, "at least 1"),
        ({"batch_sizes": [0]}, "greater than or equal to 1"),
        ({"batch_sizes": [1, 1]}, "duplicate batch sizes"),
        ({"batch_sizes": list(range(1, 10))}, "at most 8"),
        ({"batch_sizes": [5000]}, "less than or equal to 4096"),
        ({"batch_sizes": ["8"]}, "valid integer"),
        ({"dtype": "int8"}, "float32"),
        ({"repeats": 0}, "repeats"),
        ({"warmup": 21}, "warmup"),
        ({"device": "cuda"}, "Extra inputs"),
    ],
)
def test_bad_latency_requests_are_422_with_a_message(client: TestClient, body: dict, words: str) -> None:
    net, _ = ready(repo_of(client))
    reply = client.post(f"/supernets/{net}/latency-tables", json=body, headers=KEY)
    assert reply.status_code == 422 and words in reply.text, reply.text


def test_latency_tables_of_missing_or_unready_supernets(client: TestClient) -> None:
    repo = repo_of(client)
    net, _ = ready(repo)
    other, _ = ready(repo)
    pending = repo.create_supernet("p", "c" * 64, {})
    assert client.post("/supernets/999/latency-tables", json={}, headers=KEY).status_code == 404
    reply = client.post(f"/supernets/{pending}/latency-tables", json={}, headers=KEY)
    assert reply.status_code == 409 and "PENDING" in reply.text
    assert client.get("/supernets/999/latency-tables").status_code == 404
    table = measured(repo, net, slow_narrow())
    assert client.get(f"/supernets/{other}/latency-tables/{table}").status_code == 404  # not its table
    assert client.get(f"/supernets/{net}/latency-tables/{2**40}").status_code == 404


def test_searches_with_objective_latency_need_a_fitting_table(client: TestClient) -> None:
    repo = repo_of(client)
    net, stats = ready(repo)
    other, _ = ready(repo)

    def post(**change: object):  # noqa: ANN202
        body = search_body(net, stats, **{"objective": "latency", **change})
        return client.post("/searches", json=body, headers=KEY)

    reply = post()
    assert reply.status_code == 422 and "needs a latency table" in reply.text
    assert post(objective="seconds").status_code == 422
    pending = repo.create_latency_table(net, "float32", [1], 1, 0)
    assert post(latency_table_id=pending).status_code == 409
    foreign = measured(repo, other, slow_narrow())
    assert post(latency_table_id=foreign).status_code == 404
    narrow = measured(repo, net, slow_narrow("cpu: x", widths=(0.5, 1.0)))
    reply = post(latency_table_id=narrow)
    assert reply.status_code == 422 and "0.25" in reply.text  # the table lacks widths of the search
    # with one device's tables the newest is taken; with several the client must choose
    table = measured(repo, net, slow_narrow())
    assert measured(repo, net, slow_narrow("cpu: y")) and post().status_code == 422
    assert "choose one with latency_table_id" in post().text
    reply = post(latency_table_id=table)
    assert reply.status_code == 201, reply.text
    assert reply.json()["latency_table_id"] == table and reply.json()["config"]["objective"] == "latency"
    # GFLOPs: a table is optional (several devices: none is guessed)
    plain = client.post("/searches", json=search_body(net, stats), headers=KEY).json()
    assert plain["latency_table_id"] is None and plain["config"]["objective"] == "gflops"


def _run(client: TestClient, outbox: Outbox, search_id: int) -> dict:
    repo = repo_of(client)
    controller = SearchController(repo, outbox, Settings())  # type: ignore[arg-type]
    for _ in range(100):
        controller.tick(search_id)
        complete_sent(repo, outbox)
        if repo.get_search(search_id).status == JobStatus.COMPLETE:
            break
    return client.get(f"/searches/{search_id}/report").json()


def test_a_latency_search_minimises_the_tables_prediction_and_reports_both(
    client: TestClient, outbox: Outbox
) -> None:
    repo = repo_of(client)
    net, stats = ready(repo)
    table = measured(repo, net, slow_narrow())
    # a huge weight makes the weighted pick the cheapest point: GFLOPs favour the narrowest width, the
    # table makes it the slowest
    body = search_body(net, stats, weight=1e6, batch_size=8, pick_rule="weighted")
    flops = client.post("/searches", json=body, headers=KEY).json()
    lat = client.post("/searches", json={**body, "objective": "latency"}, headers=KEY).json()
    assert flops["latency_table_id"] == lat["latency_table_id"] == table  # the one device's table
    by_flops, by_latency = _run(client, outbox, flops["id"]), _run(client, outbox, lat["id"])
    assert by_flops["final"]["pick"]["genome"] == [0, 0, 0, 0]
    assert by_latency["final"]["pick"]["genome"] == [1, 1, 1, 1]
    # the cost told to NSGA-II is the predicted ms/image (4 calls of 1 ms on 8 images, no overhead)
    assert by_latency["pick"]["objectives"][1] == pytest.approx(1e3 * 4 * 0.001 / 8)
    for report in (by_flops, by_latency):  # both show GFLOPs and predicted latency, whatever the objective
        for record in report["final"].values():
            assert record["gflops"] > 0 and record["predicted_latency_s"] > 0
        assert report["latency_table"]["device"] == "cuda: test GPU"
        assert report["latency_table"]["at_batch_size"] == 8
    assert by_flops["latency_saving"] < 0 < by_latency["latency_saving"]
    front = client.get(f"/searches/{lat['id']}").json()["front"]
    assert all(p["cost"] == pytest.approx(1e3 * p["predicted_latency_s"]) for p in front)
    assert all(p["gflops"] >= 4 for p in front)  # GFLOPs, not the cost, under "gflops"
