from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from api.controller import SearchController
from api.db.models import CandidateState, JobStatus
from api.db.repository import Repository
from api.settings import Settings
from ddsm_core.costs import CostTable
from ddsm_core.results import build_results, front_points
from ddsm_core.search import Evaluation, SearchRun, run_search
from ddsm_core.spec import SearchSpec
from workers.fast_eval import fast_metrics

TABLE = {"widths": [0.25, 0.5, 0.75, 1.0], "gflops": [1.0, 2.0, 3.0, 4.0], "gflops_conv_linear": None}
SPEC = SearchSpec(
    sampler="ddim",
    steps=4,
    widths=(0.25, 0.5, 0.75, 1.0),
    population=8,
    generations=3,
    n_images=4,
    final_images=8,
    weight=2.0,
    seed=3,
    mutation_rate=0.2,
)


class Outbox:
    """A fake broker: remembers sent messages; may deliver each one twice."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, int]] = []

    def evaluate_candidate(self, candidate_id: int, attempt: int) -> None:
        self.messages.append((candidate_id, attempt))

    def train_supernet(self, run_id: int, attempt: int) -> None:
        pass


def make(repo: Repository) -> int:
    net = repo.create_supernet("net", "a" * 64, {})
    repo.supernet_ready(net, TABLE, {})
    stats = repo.create_reference_stats("r", "digits", "domain", artifact_sha256="b" * 64)
    return repo.create_search("s", net, stats, SPEC.to_dict())


def work(repo: Repository, outbox: Outbox, worker: str = "w", duplicate: bool = False) -> int:
    """A simulated worker: claim -> fast evaluation -> complete; losers of the claim are dropped."""
    recorded = 0
    messages, outbox.messages = outbox.messages, []
    for cid, attempt in messages * (2 if duplicate else 1):
        if not repo.claim_candidate(cid, attempt, worker):
            continue
        cand = repo.get_candidate(cid)
        assert cand is not None
        recorded += repo.complete_candidate(
            cid, attempt, worker, fast_metrics(SPEC, cand.genome, CostTable.from_dict(TABLE))
        )
    return recorded


def drive(repo: Repository, controller: SearchController, outbox: Outbox, search: int, **kw: bool) -> None:
    for _ in range(200):
        controller.tick(search)
        work(repo, outbox, **kw)
        if repo.get_search(search).status == JobStatus.COMPLETE:  # type: ignore[union-attr]
            return
    raise AssertionError("search did not complete")


def local_run(tmp_path: Path) -> SearchRun:
    def evaluate(genome: tuple[int, ...], n: int) -> Evaluation:
        m = {**fast_metrics(SPEC, genome, CostTable.from_dict(TABLE)), "n_images": n}
        return Evaluation((m["fid"], m["gflops"]), None, m)

    return run_search(
        SPEC.search_config(),
        evaluate,
        tmp_path / "local",
        seed=SPEC.seed,
        n_images=4,
        final_images=8,
        weight=SPEC.weight,
        progress=False,
        finalists={"full": SPEC.full_width_genome()},
    )


def local_front(tmp_path: Path) -> list[tuple[list[int], float, float]]:
    return [(list(c.genome), c.fid, c.cost) for c in local_run(tmp_path).driver.front()]


def front(repo: Repository, search: int) -> list[tuple[list[int], float, float]]:
    result = repo.get_search(search).result  # type: ignore[union-attr]
    return [(p["genome"], p["fid"], p["gflops"]) for p in front_points(result)]


def comparable(results: dict[str, Any]) -> dict[str, Any]:
    """results.json without what differs by nature: where it ran, timings and paths."""
    out = json.loads(json.dumps(results))
    out.pop("run")
    for key in ("checkpoint", "stats"):
        out["config"].pop(key)
    for key in ("search_wall_s", "total_wall_s"):
        out["cost"].pop(key)
    return out


def test_controller_gives_the_same_front_as_the_local_search(sqlite_repo: Repository, tmp_path: Path) -> None:
    search, outbox = make(sqlite_repo), Outbox()
    drive(sqlite_repo, SearchController(sqlite_repo, outbox, Settings()), outbox, search)
    assert front(sqlite_repo, search) == local_front(tmp_path)
    result = sqlite_repo.get_search(search).result  # type: ignore[union-attr]
    assert result["final"]["pick"]["fid"] is not None and result["final"]["pick"]["n_images"] == 8
    assert 0 < result["saving"] < 1


def test_the_service_and_a_local_search_write_the_same_results(
    sqlite_repo: Repository, tmp_path: Path
) -> None:
    search, outbox = make(sqlite_repo), Outbox()
    drive(sqlite_repo, SearchController(sqlite_repo, outbox, Settings()), outbox, search)
    service = sqlite_repo.get_search(search).result  # type: ignore[union-attr]
    run = local_run(tmp_path)
    local = build_results(
        SPEC, run.driver.candidates, run.driver.history, {k: ev.record for k, ev in run.final.items()},
        extractor="domain", checkpoint="here", stats="there", search_wall_s=run.wall_s,
    )  # fmt: skip
    assert service["run"]["where"] == "service" and service["cost"]["search_wall_s"] > 0
    assert comparable(service) == comparable(local)
    assert set(service["final"]) == {"pick", "knee", "full"} and service["cost"]["final_images_sampled"] > 0


def test_every_candidate_delivered_twice_is_recorded_once(sqlite_repo: Repository, tmp_path: Path) -> None:
    search, outbox = make(sqlite_repo), Outbox()
    drive(sqlite_repo, SearchController(sqlite_repo, outbox, Settings()), outbox, search, duplicate=True)
    assert front(sqlite_repo, search) == local_front(tmp_path)
    hashes = [c.genome_hash for c in sqlite_repo.candidates(search, phase="search")]
    assert len(hashes) == len(set(hashes))


def test_a_new_controller_resumes_where_a_dead_one_stopped(sqlite_repo: Repository, tmp_path: Path) -> None:
    search, outbox = make(sqlite_repo), Outbox()
    first = SearchController(sqlite_repo, outbox, Settings(lease_ttl_s=0.05))
    for _ in range(3):
        first.tick(search)
        work(sqlite_repo, outbox)
    time.sleep(0.1)  # the first controller dies; its lease expires
    second = SearchController(sqlite_repo, outbox, Settings())
    first.tick(search)  # a zombie tick would steal nothing once the second holds the lease
    drive(sqlite_repo, second, outbox, search)
    assert front(sqlite_repo, search) == local_front(tmp_path)


def test_dead_worker_candidate_runs_again_then_fails_with_penalty(sqlite_repo: Repository) -> None:
    search, outbox = make(sqlite_repo), Outbox()
    controller = SearchController(sqlite_repo, outbox, Settings(stale_after_s=0.01, max_attempts=2))
    controller.tick(search)
    victim, attempt = outbox.messages[0]
    assert sqlite_repo.claim_candidate(victim, attempt, "doomed")  # and never heartbeats again
    outbox.messages = [m for m in outbox.messages if m[0] != victim]
    work(sqlite_repo, outbox)
    time.sleep(0.05)
    controller.tick(search)
    assert (victim, 2) in outbox.messages
    assert sqlite_repo.claim_candidate(victim, 2, "doomed-too")
    outbox.messages = []
    time.sleep(0.05)
    controller.tick(search)
    cand = sqlite_repo.get_candidate(victim)
    assert cand is not None and cand.state == CandidateState.FAILED and cand.attempt == 2
    drive(sqlite_repo, controller, outbox, search)  # the search goes on with a penalty for the victim
    result = sqlite_repo.get_search(search).result  # type: ignore[union-attr]
    assert list(cand.genome) not in [p["genome"] for p in result["front"]]


def test_cancel_stops_dispatch_and_resume_continues(sqlite_repo: Repository, tmp_path: Path) -> None:
    search, outbox = make(sqlite_repo), Outbox()
    controller = SearchController(sqlite_repo, outbox, Settings())
    controller.tick(search)
    assert sqlite_repo.cancel_search(search)
    assert work(sqlite_repo, outbox) == 0  # claims fail on a cancelled search
    controller.tick(search)
    assert outbox.messages == []
    assert sqlite_repo.resume_search(search)
    drive(sqlite_repo, controller, outbox, search)
    assert front(sqlite_repo, search) == local_front(tmp_path)
