"""The search controller: drives every running search from the API process (torch-free).

One ``tick`` of a search, safe to repeat and to interrupt anywhere (every step is a compare-and-set and
the algorithm state is persisted with the rows it belongs to):

1. take or renew the search's lease (exactly one controller per search across API replicas);
2. reap candidates whose heartbeat went stale: a new attempt, or FAILED after ``max_attempts``;
3. send a task for every WAITING candidate whose attempt was not sent yet (rows committed first);
4. when every candidate of the current generation is finished, ``tell`` NSGA-II (failed candidates get
   the driver's penalty) and persist the algorithm state with the generation marked told, and the
   front so far as the search's result (``ddsm_core.results.progress``; read paths show it as stored);
5. ``ask`` the next generation and persist its genomes and the state after ``ask`` in one transaction
   (a genome already evaluated in this search is answered from the database, never recomputed);
6. after the last generation: the finalists (weighted pick, knee, full-width baseline) are evaluated
   again with ``final_images`` images, then ``results.json`` (``ddsm_core.results.build_results``,
   the same builder as ``ddsm search``) is stored as the search's result and the search ends.

The driver (``ddsm_core.search.SearchDriver``) is rebuilt from its stored state on every tick, so an API
restart resumes every running search where it stood.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from api.db.models import CandidateState, JobStatus
from api.db.repository import CandidateRecord, Repository, SearchRecord, genome_hash
from api.settings import Settings
from ddsm_core.costs import CostTable
from ddsm_core.results import build_results, progress
from ddsm_core.search import SearchDriver
from ddsm_core.spec import SearchSpec

log = logging.getLogger(__name__)

SEARCH, FINAL = "search", "final"
MAX_TICK_ERRORS = 5


class Sender(Protocol):
    def evaluate_candidate(self, candidate_id: int, attempt: int) -> None: ...

    def train_supernet(self, run_id: int, attempt: int) -> None: ...


def controller_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def objectives(cand: CandidateRecord) -> tuple[float, float] | None:
    """(FID, GFLOPs) of a finished candidate, None for a failed one (the driver gives it the penalty)."""
    if cand.state != CandidateState.COMPLETE or not cand.metrics or cand.metrics.get("fid") is None:
        return None
    return float(cand.metrics["fid"]), float(cand.metrics["gflops"])


class SearchController:
    def __init__(
        self, repo: Repository, sender: Sender, settings: Settings, ident: str | None = None
    ) -> None:
        self.repo = repo
        self.sender = sender
        self.settings = settings
        self.id = ident or controller_id()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._errors: dict[int, int] = {}

    # ------------------------------------------------------------------ loop
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ddsm-controller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for search_id in self.repo.active_search_ids():
            self.repo.release_lease(search_id, self.id)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick_all()
            except Exception:  # the loop must survive a database hiccup
                log.exception("controller tick failed")
            self._stop.wait(self.settings.controller_interval_s)

    def tick_all(self) -> None:
        for run_id, attempt in self.repo.reap_training_runs(
            self.settings.stale_after_s, self.settings.max_attempts
        ):
            self.sender.train_supernet(run_id, attempt)
        for run_id, attempt in self.repo.resume_interrupted_training_runs():
            self.sender.train_supernet(run_id, attempt)
        for search_id in self.repo.active_search_ids():
            try:
                self.tick(search_id)
                self._errors.pop(search_id, None)
            except Exception as exc:  # retried next tick; a search that keeps failing is marked FAILED
                log.exception("search %s: controller tick failed", search_id)
                self._errors[search_id] = self._errors.get(search_id, 0) + 1
                if self._errors[search_id] >= MAX_TICK_ERRORS:
                    self.repo.fail_search(search_id, f"controller error: {exc}")

    # ------------------------------------------------------------------ one search
    def tick(self, search_id: int) -> None:
        if not self.repo.acquire_lease(search_id, self.id, self.settings.lease_ttl_s):
            return
        search = self.repo.get_search(search_id)
        if search is None or search.status not in (JobStatus.RUNNING, JobStatus.FINISHING):
            return
        spec = SearchSpec.from_dict(search.config)
        self.repo.reap_candidates(search_id, self.settings.stale_after_s, self.settings.max_attempts)
        self._dispatch(search_id)
        if search.status == JobStatus.FINISHING:
            self._finish(search, spec)
            return
        generation = (
            self.repo.get_generation(search_id, search.generation) if search.algorithm_state else None
        )
        if generation is not None and not generation.told:
            members = self._members(search_id, SEARCH, generation.genome_hashes)
            if any(not c.finished for c in members):
                return  # (the driver is rebuilt only when there is something to tell)
            driver = self._driver(search, spec)
            self._tell(driver, members)
            front = progress(driver.candidates, driver.history)
            if not self.repo.tell_generation(
                search_id, self.id, generation.generation, driver.state_dict(), front
            ):
                return
        else:
            driver = self._driver(search, spec)
        self._ask(search, spec, driver, next_generation=0 if generation is None else search.generation + 1)

    def _driver(self, search: SearchRecord, spec: SearchSpec) -> SearchDriver:
        if search.algorithm_state:
            return SearchDriver.from_state_dict(search.algorithm_state)
        return SearchDriver(spec.search_config(), seed=spec.seed)

    def _members(self, search_id: int, phase: str, hashes: tuple[str, ...]) -> list[CandidateRecord]:
        by_hash = {c.genome_hash: c for c in self.repo.candidates(search_id, phase=phase, hashes=hashes)}
        return [by_hash[h] for h in dict.fromkeys(hashes)]

    @staticmethod
    def _tell(driver: SearchDriver, members: list[CandidateRecord]) -> None:
        pending = set(driver.generation_genomes)
        todo = [c for c in members if c.genome in pending and driver.lookup(c.genome) is None]
        driver.tell(
            [c.genome for c in todo],
            [objectives(c) for c in todo],
            [c.error for c in todo],
            [_record(c) for c in todo],
        )

    def _ask(
        self, search: SearchRecord, spec: SearchSpec, driver: SearchDriver, next_generation: int
    ) -> None:
        genomes = driver.ask()
        if genomes:
            # genomes already evaluated in this search (e.g. before a state rebuild) come from the DB
            known = {c.genome_hash: c for c in self.repo.candidates(search.id, phase=SEARCH)}
            done = [known[h] for h in (genome_hash(g) for g in genomes) if h in known and known[h].finished]
            if done:
                self._tell(driver, done)
                genomes = driver.ask()
        if genomes:
            self.repo.start_generation(
                search.id, self.id, next_generation, genomes, driver.state_dict(), spec.n_images
            )
            self._dispatch(search.id)
            return
        # NSGA-II is done: evaluate the finalists again with more images
        if not driver.front():
            self.repo.fail_search(search.id, "every candidate failed: no Pareto front (see candidate errors)")
            return
        finalists = spec.finalists(driver.front())
        self.repo.start_generation(
            search.id,
            self.id,
            next_generation,
            list(dict.fromkeys(finalists.values())),
            driver.state_dict(),
            spec.final_images,
            phase=FINAL,
            status=JobStatus.FINISHING,
        )
        self._dispatch(search.id)

    def _dispatch(self, search_id: int) -> None:
        for cand in self.repo.candidates_to_send(search_id, self.settings.resend_after_s):
            try:
                self.sender.evaluate_candidate(cand.id, cand.attempt)
            except Exception:  # broker unreachable: the candidate stays unsent, next tick tries again
                log.warning("could not send candidate %s; will retry", cand.id, exc_info=True)
                return
            self.repo.mark_sent(cand.id, cand.attempt)

    def _finish(self, search: SearchRecord, spec: SearchSpec) -> None:
        final = {c.genome: c for c in self.repo.candidates(search.id, phase=FINAL)}
        if any(not c.finished for c in final.values()):
            return
        assert search.algorithm_state is not None
        driver = SearchDriver.from_state_dict(search.algorithm_state)
        self.repo.finish_search(search.id, self.id, self.results(search, spec, driver, final))

    def results(
        self,
        search: SearchRecord,
        spec: SearchSpec,
        driver: SearchDriver,
        final: Mapping[tuple[int, ...], CandidateRecord],
    ) -> dict[str, Any]:
        """``results.json`` of a search whose finalists are evaluated (stored as its result)."""
        net = self.repo.get_supernet(search.supernet_id)
        stats = self.repo.get_reference_stats(search.reference_stats_id)
        assert net is not None and net.gflops is not None and stats is not None
        table = CostTable.from_dict(net.gflops)
        records = {
            name: _final_record(spec, genome, final.get(genome), table)
            for name, genome in spec.finalists(driver.front()).items()
        }
        search_cands = self.repo.candidates(search.id, phase=SEARCH)
        return build_results(
            spec, driver.candidates, driver.history, records, extractor=stats.extractor,
            checkpoint=f"supernet {net.id} '{net.name}' (sha256 {net.artifact_sha256[:12]})",
            stats=f"reference statistics {stats.id} '{stats.name}' ({stats.dataset})",
            retried_attempts=sum(c.attempt - 1 for c in search_cands),
            search_wall_s=(self.repo.now() - search.created_at).total_seconds(),
            run={"where": "service", "service_search_id": search.id,
                 "checkpoint_step": (net.config or {}).get("step"),
                 "workers": len({c.worker for c in search_cands if c.worker})},
        )  # fmt: skip


def _record(cand: CandidateRecord) -> dict[str, Any]:
    """A candidate's evaluation record, as a local search keeps it (its metrics and image count)."""
    return {**(cand.metrics or {}), "n_images": cand.n_images}


def _final_record(
    spec: SearchSpec, genome: tuple[int, ...], cand: CandidateRecord | None, table: CostTable
) -> dict[str, Any]:
    """A finalist's evaluation record; a failed one keeps its cost and reason (FID None)."""
    if cand is not None and cand.state == CandidateState.COMPLETE and cand.metrics:
        return _record(cand)
    gflops = spec.gflops(genome, table)
    return {"fid": None, "status": "failed", "reason": cand.error if cand else "not evaluated",
            "gflops": gflops, "gflops_per_call": gflops / (spec.strategy(genome).n_calls * spec.passes),
            "n_images": cand.n_images if cand else 0}  # fmt: skip
