"""Warm-started searches through the service (controller on SQLite and Postgres, REST) and
``GET /searches/compare`` (fronts of several searches, one reference point, a hypervolume each)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from api import services
from api.controller import SearchController
from api.db.models import JobStatus
from api.db.repository import Repository
from api.schemas import SearchCreate
from api.settings import Settings
from ddsm_core.compare import Front, compare_fronts
from ddsm_core.costs import CostTable
from ddsm_core.spec import SearchSpec, with_warm_start
from ddsm_core.strategy import Strategy
from ddsm_core.transfer import results_strategies, transfer_strategy
from tests.factories import TABLE, Outbox, search_body, small_spec
from tests.support import KEY
from workers.fast_eval import fast_metrics

WIDTHS = (0.25, 0.5, 0.75, 1.0)
SCHEDULE = {"kind": "cosine", "T": 1000, "cosine_s": 0.008}  # not the default: the supernet's is used


def finish(
    repo: Repository, search_id: int, outbox: object, controller: SearchController | None = None
) -> None:
    """Drive a search to COMPLETE with the fast evaluator standing in for the workers."""
    controller = controller or SearchController(repo, outbox, Settings())  # type: ignore[arg-type]
    spec = SearchSpec.from_dict(repo.get_search(search_id).config)  # type: ignore[union-attr]
    for _ in range(100):
        controller.tick(search_id)
        for cand in repo.candidates(search_id):
            if cand.state.value == "WAITING" and repo.claim_candidate(cand.id, cand.attempt, "w"):
                metrics = fast_metrics(spec, cand.genome, CostTable.from_dict(TABLE))
                repo.complete_candidate(cand.id, cand.attempt, "w", metrics)
        if repo.get_search(search_id).status == JobStatus.COMPLETE:  # type: ignore[union-attr]
            return
    raise AssertionError("the search did not complete")


class Quiet:
    def evaluate_candidate(self, candidate_id: int, attempt: int) -> None:
        pass

    def train_supernet(self, run_id: int, attempt: int) -> None:
        pass


def test_a_warm_started_search_asks_its_seeds_in_the_first_generation(repo: Repository) -> None:
    net = repo.create_supernet("net", "a" * 64, {})
    repo.supernet_ready(net, TABLE, {"schedule": SCHEDULE})  # the worker's summary of the manifest
    stats = repo.create_reference_stats("r", "digits", "domain", artifact_sha256="b" * 64)
    source = SearchCreate(supernet_id=net, reference_stats_id=stats, sampler="ddpm", steps=8, population=6,
                          generations=2, n_images=4, final_images=8, mutation_rate=0.2)  # fmt: skip
    source_id = services.create_search(repo, source)
    finish(repo, source_id, Quiet())
    source_pick = repo.get_search(source_id).result["pick"]["genome"]  # type: ignore[union-attr]

    same = Strategy("ddim", 4, WIDTHS, (0, 1, 2, 3))  # on the new search's grid: taken as is
    other = Strategy("dpmpp", 12, WIDTHS, (0,) * 4 + (3,) * 8)  # transferred by log-SNR
    body = SearchCreate(supernet_id=net, reference_stats_id=stats, sampler="ddim", steps=4, population=8,
                        generations=2, n_images=4, final_images=8, mutation_rate=0.2,
                        warm_start=[same.to_dict(), other.to_dict()],
                        warm_start_searches=[source_id])  # fmt: skip
    search_id = services.create_search(repo, body)
    spec = SearchSpec.from_dict(repo.get_search(search_id).config)  # type: ignore[union-attr]
    seeds = spec.seed_genomes()
    moved = transfer_strategy(other, "ddim", 4, SCHEDULE).genes
    pick = transfer_strategy(Strategy("ddpm", 8, WIDTHS, tuple(source_pick)), "ddim", 4, SCHEDULE).genes
    assert moved != transfer_strategy(other, "ddim", 4).genes  # the supernet's schedule mattered
    assert seeds[:2] == ((0, 1, 2, 3), moved) and len(seeds) <= 8 - len(WIDTHS)
    uniform = {(i,) * 4 for i in range(len(WIDTHS))}
    assert pick in uniform or pick in seeds  # the source's pick (first of its strategies) is seeded

    controller = SearchController(repo, Quiet(), Settings())  # type: ignore[arg-type]
    controller.tick(search_id)
    first = {c.genome for c in repo.candidates(search_id, phase="search") if c.generation == 0}
    assert uniform | set(seeds) <= first and len(first) == 8
    finish(repo, search_id, Quiet(), controller)  # the driver is rebuilt from the stored state on every tick
    done = repo.get_search(search_id)
    assert done is not None and done.status == JobStatus.COMPLETE
    assert [tuple(g) for g in done.result["config"]["initial"]] == list(seeds)  # type: ignore[index]


def setup(client: TestClient, extractor: str = "domain") -> tuple[Repository, int, int]:
    repo = client.app.state.repo  # type: ignore[attr-defined]
    net = repo.create_supernet("net", "a" * 64, {})
    repo.supernet_ready(net, TABLE, {})
    stats = repo.create_reference_stats(extractor, "digits", extractor, artifact_sha256="b" * 64)
    return repo, net, stats


def test_bad_warm_starts_over_rest_are_4xx_with_a_message(client: TestClient, outbox: Outbox) -> None:
    repo, net, stats = setup(client)
    running = client.post("/searches", json=search_body(net, stats), headers=KEY).json()["id"]
    good = Strategy("ddim", 4, WIDTHS, (0, 1, 2, 3)).to_dict()
    cases = [
        ({"warm_start": [{"sampler": "ddim"}]}, 422, "warm_start[0]: strategy is missing keys"),
        ({"warm_start": [{**good, "genes": [9, 9, 9, 9]}]}, 422, "out of range"),
        ({"warm_start": [Strategy("ddim", 4, (0.3, 1.0), (0, 1, 1, 1)).to_dict()]}, 422, "unknown width"),
        ({"warm_start": "pick.json"}, 422, "warm_start"),
        ({"warm_start_searches": [999]}, 404, "warm-start search 999 not found"),
        ({"warm_start_searches": [running]}, 409, f"warm-start search {running} is RUNNING"),
    ]
    for change, code, words in cases:
        reply = client.post("/searches", json=search_body(net, stats, **change), headers=KEY)
        assert reply.status_code == code, reply.text
        assert words in reply.text
    reply = client.post("/searches", json=search_body(net, stats, warm_start=[good]), headers=KEY)
    assert reply.status_code == 201 and reply.json()["config"]["warm_start"][0]["genes"] == [0, 1, 2, 3]


def test_compare_returns_each_front_with_a_hypervolume_against_one_reference(
    client: TestClient, outbox: Outbox
) -> None:
    repo, net, stats = setup(client)
    a = client.post("/searches", json=search_body(net, stats, seed=1), headers=KEY).json()["id"]
    b = client.post("/searches", json=search_body(net, stats, seed=2, steps=5), headers=KEY).json()["id"]
    for sid in (a, b):
        finish(repo, sid, outbox)
    reply = client.get("/searches/compare", params={"ids": f"{a},{b},{a}"})  # repeats are dropped
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert [s["id"] for s in body["searches"]] == [a, b] and body["extractor"] == "domain"
    fronts = []
    for row in body["searches"]:
        stored = client.get(f"/searches/{row['id']}/report").json()["front"]
        assert sorted((p["cost"], p["fid"]) for p in row["front"]) == sorted(
            (p["objectives"][1], p["objectives"][0]) for p in stored
        )
        fronts.append(Front(row["name"], tuple((p["cost"], p["fid"]) for p in row["front"])))
    expected = compare_fronts(fronts)  # one reference point for both
    assert body["reference"] == {"cost": expected.reference[0], "fid": expected.reference[1]}
    assert [s["hypervolume"] for s in body["searches"]] == [r.hypervolume for r in expected.rows]
    assert all(0 < s["normalized"] <= 1 for s in body["searches"])
    fixed = client.get("/searches/compare", params={"ids": f"{a},{b}", "ref": "100,1000"}).json()
    assert fixed["reference"] == {"cost": 100.0, "fid": 1000.0} and fixed["axis"] == "gflops"
    png = client.get("/searches/compare/plot.png", params={"ids": f"{a},{b}"})
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert png.headers["content-type"] == "image/png"

    # errors: unknown id, no front yet, mixed extractors, malformed ids or reference point
    other_stats = repo.create_reference_stats("inc", "digits", "inception", artifact_sha256="c" * 64)
    c = client.post("/searches", json=search_body(net, other_stats), headers=KEY).json()["id"]
    assert client.get("/searches/compare", params={"ids": f"{a},{c}"}).status_code == 409
    finish(repo, c, outbox)
    cases = [
        ({"ids": f"{a},999"}, 404, "search 999 not found"),
        ({"ids": f"{a},{c}"}, 422, "different feature extractors"),
        ({"ids": "1,x"}, 422, "comma"),
        ({"ids": ""}, 422, "ids"),
        ({"ids": f"{a}", "ref": "1;2"}, 422, "COST,FID"),
    ]
    for params, code, words in cases:
        for path in ("/searches/compare", "/searches/compare/plot.png"):
            reply = client.get(path, params=params)
            assert reply.status_code == code, (path, params, reply.text)
            assert words in reply.text
    assert client.get(f"/searches/{a}").status_code == 200  # /{id} still answers


# ------------------------------------------------------------------------ POST /strategies/transfer
def _cli_transfer(tmp_path: Path, source: dict, *args: str) -> dict:
    """``ddsm strategy transfer`` on a file holding ``source``: the file it writes."""
    import json

    from ddsm_core.cli import app, run_app

    src, out = tmp_path / "source.json", tmp_path / "cli.json"
    src.write_text(json.dumps(source))
    code = run_app(app, ["strategy", "transfer", "--strategy", str(src), "--out", str(out), *args])
    assert code == 0
    return json.loads(out.read_text())


def test_transfer_over_rest_is_the_cli_transfer_and_the_identity_on_its_own_grid(
    client: TestClient, tmp_path: Path
) -> None:
    source = Strategy.piecewise("ddpm", 20, [0, 1, 3], [0.3, 0.6], widths=WIDTHS)
    same = client.post(
        "/strategies/transfer", json={"strategy": source.to_dict(), "sampler": "ddpm", "steps": 20}
    )
    assert same.status_code == 200, same.text
    assert same.json() == source.to_dict()  # identity: the same sampler and steps

    body = {"strategy": source.to_dict(), "sampler": "dpm-solver++", "steps": 10}
    cosine = ["--schedule", "cosine", "--timesteps", "200"]
    for extra, args in (({}, []), ({"schedule": "cosine", "timesteps": 200}, cosine)):
        reply = client.post("/strategies/transfer", json={**body, **extra})
        assert reply.status_code == 200, reply.text
        cli = _cli_transfer(tmp_path, source.to_dict(), "--sampler", "dpmpp", "--steps", "10", *args)
        assert reply.json() == cli
    assert reply.json() != client.post("/strategies/transfer", json=body).json()  # the schedule mattered

    # a supernet's own schedule; a results.json is read for its pick, like the CLI reads it
    repo, net, stats = setup(client)
    own = repo.create_supernet("cosine", "d" * 64, {})
    repo.supernet_ready(own, TABLE, {"schedule": SCHEDULE})
    reply = client.post("/strategies/transfer", json={**body, "supernet_id": own})
    assert Strategy.from_dict(reply.json()) == transfer_strategy(source, "dpmpp", 10, SCHEDULE)
    sid = client.post("/searches", json=search_body(net, stats), headers=KEY).json()["id"]
    finish(repo, sid, Quiet())
    results = client.get(f"/searches/{sid}/report").json()
    reply = client.post("/strategies/transfer", json={"strategy": results, "sampler": "edm", "steps": 6})
    assert reply.status_code == 200, reply.text
    assert reply.json() == _cli_transfer(tmp_path, results, "--sampler", "edm", "--steps", "6")

    png = client.post("/strategies/transfer/plot.png", json=body)
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"


def test_a_transferred_strategy_and_a_results_json_are_warm_starts_as_is(client: TestClient) -> None:
    repo, net, stats = setup(client)
    source = Strategy.piecewise("dpmpp", 12, [0, 3], widths=WIDTHS)
    moved = client.post("/strategies/transfer", json={"strategy": source.to_dict(), "sampler": "ddim",
                                                      "steps": 4}).json()  # fmt: skip
    reply = client.post("/searches", json=search_body(net, stats, warm_start=[moved]), headers=KEY)
    assert reply.status_code == 201, reply.text
    assert reply.json()["config"]["warm_start"][0]["genes"] == moved["genes"]
    sid = reply.json()["id"]
    finish(repo, sid, Quiet())
    results = client.get(f"/searches/{sid}/report").json()
    reply = client.post("/searches", json=search_body(net, stats, warm_start=[results]), headers=KEY)
    assert reply.status_code == 201, reply.text
    seeded = [tuple(s["genes"]) for s in reply.json()["config"]["warm_start"]]
    # pick, knee and front (less the uniform ones), as `ddsm search --warm-start results.json` seeds them
    expected = with_warm_start(small_spec(), results_strategies(results))[0].seed_genomes()
    assert seeded == list(expected) and seeded
    broken = {"config": {"sampler": "ddim"}, "pick": {"genome": [0]}}
    reply = client.post("/searches", json=search_body(net, stats, warm_start=[broken]), headers=KEY)
    assert reply.status_code == 422 and "warm_start[0]" in reply.text


def test_bad_transfers_are_4xx_with_a_message(client: TestClient) -> None:
    repo, net, _ = setup(client)
    pending = repo.create_supernet("pending", "c" * 64, {})
    good = Strategy.uniform("ddpm", 20, 0, widths=WIDTHS).to_dict()
    body = {"strategy": good, "sampler": "ddim", "steps": 10}
    cases = [
        ({"sampler": "euler"}, 422, "sampler"),
        ({"steps": 0}, 422, "steps"),
        ({"steps": "10"}, 422, "steps"),
        ({"strategy": {**good, "genes": [9] * 20}}, 422, "out of range"),
        ({"strategy": {"sampler": "ddpm"}}, 422, "missing keys"),
        ({"strategy": {"config": {}, "pick": {}}}, 422, "pick"),
        ({"schedule": "sigmoid"}, 422, "schedule"),
        ({"schedule": "linear", "timesteps": 100, "steps": 500}, 422, "runs 1..100 steps"),
        ({"timesteps": 1}, 422, "timesteps"),
        ({"supernet_id": 999}, 404, "supernet 999 not found"),
        ({"supernet_id": pending}, 409, "not ready"),
        ({"supernet_id": net, "schedule": "cosine"}, 422, "not both"),
        (
            {"supernet_id": net, "strategy": Strategy.uniform("ddpm", 20, 0, widths=(0.5, 1.0)).to_dict()},
            422,
            f"supernet {net} offers",
        ),  # fmt: skip
        ({"extra": 1}, 422, "extra"),
    ]
    for change, code, words in cases:
        for path in ("/strategies/transfer", "/strategies/transfer/plot.png"):
            reply = client.post(path, json={**body, **change})
            assert reply.status_code == code, (change, reply.text)
            assert words in reply.text, (change, reply.text)
