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
6. after the last generation: the finalists (knee, full-width baseline and the weighted pick, which is
   the pick under the weighted rule and the finalist ``weighted`` under the tolerance rule) are
   evaluated again with ``final_images`` images (their workers sample the finalists' seeds,
   ``SearchSpec.final_first_seed``: held out from the search's by default), then ``results.json``
   (``ddsm_core.results.build_results``, the same builder as ``ddsm search``) is stored as the search's
   result and the search ends. Each finalist's worker stores its per-image features and a sample grid
   of its first images as artifacts
   (``FEATURES_METRIC`` and ``SAMPLES_METRIC`` in its metrics, kept out of the results); once all
   are COMPLETE, the controller computes every finalist's paired interval vs full width
   (``ddsm_core.paired``, numpy only) and the results carry it with the real-data floors of the
   reference statistics, as ``ddsm search``'s results.json does. With the tolerance pick rule (the
   default) the pick is found by bisection over the front (``ddsm_core.pick``): the first probe is
   sent with the finalists, then each tick whose finalist rows are all finished replays the bisection
   from their stored features and adds the next probe as one more finalist row, until it is decided.

Multi-fidelity searches (``rungs``): rungs are tasks. Each rung's evaluations are candidate rows of their
own phase (:func:`rung_phases`: ``rung0``, ``rung1``, ... and ``search`` for the top rung, ``n_images``),
with the rung's image count in ``n_images`` and its metrics in ``metrics``. A new generation's genomes
start at the lowest rung; every tick replays the generation's successive halving from the finished rows
(``ddsm_core.search.halving_step``, the function ``ddsm search --rungs`` evaluates in-process with,
ranking each low rung by the spec's ``rung_metric``: the workers record ``paired_distance``) and
adds the rows of the next rung's promoted genomes; once the top rung is finished, NSGA-II is told the
same objectives and records the local executor tells it. Rung rows are claimed, heartbeaten, reaped,
resent and deduplicated like any candidate.

The driver (``ddsm_core.search.SearchDriver``) is needed only on the tick that tells a finished
generation (or finishes the search). The controller keeps the driver it last persisted in memory, keyed
by the search's generation (and creation time) at that write: every state write is a compare-and-set
that moves the generation forward (generation 0: the first write), so a stored generation equal to the
cached one means the stored state is the one this process wrote and the cached driver equals it
(``SearchDriver.from_state_dict`` restores a driver exactly). Otherwise (another replica advanced the
search, an API restart) the driver is rebuilt from the stored state. A cached driver is taken out of the
cache while a tick changes it and put back only once its state is written, so a failed write or an
exception never leaves a driver ahead of the database. A tick while a generation is being evaluated
reads a few rows and never the state column.

Searches are independent: each tick runs on a small thread pool (``controller_threads``), so a slow
search (a huge generation to tell, a database lock) or a failing one never holds up the others. A
search whose tick is still running is skipped, so it never ticks twice at once in this process (and
the lease keeps other replicas off it).

A tick is not bounded by the lease: while it runs, a heartbeat thread (:class:`LeaseHeartbeat`) renews
the lease every ``lease_ttl_s / 3``, so a long tick (the finalists' paired bootstraps at CIFAR scale,
minutes) keeps its search. The heartbeat stops when the tick ends (normally or not), when a renewal is
refused (another controller took the lease: logged; the search ended: quietly) and once the lease may
have lapsed (no renewal for ``lease_ttl_s``, e.g. the database unreachable: it never takes back a lease
it may have lost meanwhile). A database error in a renewal is logged and retried at the next beat. A
tick whose lease was not renewed for ``lease_ttl_s`` is logged once (``_overrun``): another replica
may take the search over. Nothing else changes for the tick: every write of a tick is a compare-and-set
on the search row naming this controller (``Repository._lease_held``), so once another controller holds
the lease the tick's writes are refused, and the next tick takes the lease again as usual (once the
other controller's lease lapses).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Protocol

from api.artifacts import ARTIFACT_METRICS, FEATURES_METRIC, ArtifactStore
from api.db.models import CandidateState, JobStatus
from api.db.repository import CandidateRecord, Repository, SearchRecord, genome_hash
from api.queue import is_infrastructure_error
from api.settings import Settings
from ddsm_core.costs import CostTable
from ddsm_core.errors import DDSMError
from ddsm_core.latency import LatencyTable
from ddsm_core.pick import (
    BisectionStep,
    bisect_front,
    bisection_members,
    bisection_summary,
    passed,
    probe_verdict,
)
from ddsm_core.results import build_results, progress
from ddsm_core.search import Evaluation, Genome, HalvingStep, SearchDriver, halving_step
from ddsm_core.spec import SearchSpec

log = logging.getLogger(__name__)

SEARCH, FINAL = "search", "final"
MAX_TICK_ERRORS = 5


class Sender(Protocol):
    def evaluate_candidate(self, candidate_id: int, attempt: int) -> None: ...

    def train_supernet(self, run_id: int, attempt: int) -> None: ...


def controller_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def rung_phases(spec: SearchSpec) -> tuple[str, ...]:
    """The candidate phase of each rung of ``spec.ladder``: ``rung0``, ``rung1``, ... below the top and
    ``search`` for the top rung (``n_images`` images), so a flat search has the one phase ``search``."""
    return (*(f"rung{level}" for level in range(len(spec.rungs))), SEARCH)


def objectives(cand: CandidateRecord) -> tuple[float, float] | None:
    """(FID, cost) of a finished candidate, None for a failed one (the driver gives it the penalty).

    The cost is the search's objective as the worker recorded it (``cost``: GFLOPs or predicted
    ms/image, see ``SearchSpec.cost``); rows from before objectives existed have ``gflops`` only."""
    if cand.state != CandidateState.COMPLETE or not cand.metrics or cand.metrics.get("fid") is None:
        return None
    cost = cand.metrics.get("cost")
    return float(cand.metrics["fid"]), float(cand.metrics["gflops"] if cost is None else cost)


class LeaseHeartbeat:
    """Keeps a search's lease renewed while a tick of it runs: a thread that renews it every ``ttl_s / 3``
    (``Repository.acquire_lease``) until :meth:`stop`.

    It stops by itself when a renewal is refused: another controller holds the lease (logged) or the
    search is no longer active (it ended or was cancelled: quietly); either way :attr:`reported` is set.
    It also stops, without renewing, once the lease may have lapsed (``ttl_s`` since the start of the last
    successful renewal, e.g. renewals failing while the database is unreachable): a lapsed lease may have
    been taken and given back by another controller meanwhile, and renewing it would let this tick write
    over that controller's progress. The controller logs that case (``SearchController._overrun``). A
    failed renewal (any exception) is logged and retried at the next beat: it never reaches the tick.

    The tick needs no check of its own: its writes are compare-and-sets on the search row naming this
    controller, refused once another controller holds the lease."""

    def __init__(self, repo: Repository, search_id: int, owner: str, ttl_s: float, held_since: float) -> None:
        """``held_since``: the monotonic time just before the call that took or renewed the lease."""
        self.repo = repo
        self.search_id = search_id
        self.owner = owner
        self.ttl_s = ttl_s
        self.interval_s = ttl_s / 3
        self.renewed_at = held_since
        self.reported = False  # stopped on a refused renewal, and said why
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ddsm-lease-{search_id}", daemon=True)

    def start(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop renewing and wait for the thread (a renewal in flight ends first); idempotent."""
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def unrenewed_s(self) -> float:
        """Seconds since the start of the last successful take or renewal of the lease."""
        return time.monotonic() - self.renewed_at

    def _run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            if self.unrenewed_s() >= self.ttl_s:
                return  # it may have lapsed: never taken back (see the class docstring)
            started = time.monotonic()
            try:
                held = self.repo.acquire_lease(self.search_id, self.owner, self.ttl_s)
            except Exception as exc:  # the database: the tick's own calls meet it too
                log.warning(
                    "search %s: the lease could not be renewed, retrying in %.1f s (%s: %s)",
                    self.search_id, self.interval_s, type(exc).__name__, exc,
                )  # fmt: skip
                continue
            if not held:
                self._refused()
                return
            self.renewed_at = started

    def _refused(self) -> None:
        self.reported = True
        try:
            search = self.repo.get_search(self.search_id, with_state=False)
        except Exception:  # (the database again): say what is known
            log.warning("search %s: lease renewal refused; this tick's writes may be refused", self.search_id)
            return
        if search is None or search.status not in (JobStatus.RUNNING, JobStatus.FINISHING):
            return  # the search ended (this tick finished it, or it was cancelled): nothing lost
        log.warning(
            "search %s: lease lost to controller %s while this tick ran (%.0f s since its last "
            "renewal): the tick's writes are refused, its next tick takes the lease again when free",
            self.search_id, search.controller_id, self.unrenewed_s(),
        )  # fmt: skip


class SearchController:
    def __init__(
        self,
        repo: Repository,
        sender: Sender,
        settings: Settings,
        ident: str | None = None,
        store: ArtifactStore | None = None,
        *,
        cache_drivers: bool = True,
    ) -> None:
        """``cache_drivers=False`` rebuilds the driver from the stored state on every tell (tests: the
        cache must not change a result)."""
        self.repo = repo
        self.sender = sender
        self.settings = settings
        self.store = store or ArtifactStore(settings.resolved_artifact_store())
        self.id = ident or controller_id()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._errors: dict[int, int] = {}
        self._outage_since: float | None = None  # monotonic time of the first infrastructure error
        self._reap_after = 0.0  # no reaping until then: heartbeats missed during an outage are no death
        self._pool = ThreadPoolExecutor(max(settings.controller_threads, 1), thread_name_prefix="ddsm-tick")
        self._inflight: dict[int, Future[None]] = {}  # search -> its tick
        self._beats: dict[int, LeaseHeartbeat] = {}  # search -> the heartbeat of its tick holding the lease
        self._overran: set[int] = set()  # searches whose tick was logged as not renewing its lease
        self._lock = threading.Lock()
        self._cache_drivers = cache_drivers
        # search -> ((generation, created_at) when its state was written by this process, that driver)
        self._drivers: dict[int, tuple[tuple[int, Any], SearchDriver]] = {}
        # search -> (created_at, probe genome -> its paired interval or None): a bootstrap is computed
        # once per probe, not on every tick (it is deterministic: a restart recomputes the same)
        self._probe_paired: dict[int, tuple[Any, dict[Genome, dict[str, Any] | None]]] = {}
        self.rebuilds = 0  # drivers rebuilt from a stored state (tests, the benchmark)

    # ------------------------------------------------------------------ loop
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ddsm-controller", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop ticking; ticks in flight get ``timeout`` seconds to end (a stuck one is left behind: its
        heartbeat is stopped first, so the lease we give back stays given back and its writes lose their
        compare-and-set)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.wait_ticks(timeout)
        with self._lock:
            beats = list(self._beats.values())
        for beat in beats:  # before the release: a renewal after it would take the lease back
            beat.stop()
        for search_id in self.repo.active_search_ids():
            self.repo.release_lease(search_id, self.id)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick_all()
            except Exception as exc:  # the loop must survive a database outage
                if is_infrastructure_error(exc):
                    self._infrastructure_error(exc)
                else:
                    log.exception("controller tick failed")
            self._stop.wait(self.settings.controller_interval_s)

    def _infrastructure_error(self, exc: BaseException) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning("database or broker unreachable; retrying (%s: %s)", type(exc).__name__, exc)

    def _in_grace(self) -> bool:
        """Whether an ongoing outage is still shorter than the grace period (searches are not failed)."""
        since = self._outage_since
        return since is not None and time.monotonic() - since < self.settings.db_outage_grace_s

    def _infrastructure_ok(self) -> None:
        if self._outage_since is not None:
            down = time.monotonic() - self._outage_since
            log.warning("database and broker reachable again after %.1f s", down)
            self._outage_since = None
            # workers' heartbeats failed meanwhile: give them time to beat again before reaping
            self._reap_after = time.monotonic() + 2 * self.settings.heartbeat_interval_s

    def tick_all(self) -> list[int]:
        """Start a tick of every active search that is not ticking already (on the pool, without waiting
        for it: see :meth:`wait_ticks`); the ids of the searches started."""
        reaping = time.monotonic() >= self._reap_after
        if reaping:
            stale_after = self.settings.stale_after_s
            for run_id, attempt in self.repo.reap_training_runs(stale_after, self.settings.max_attempts):
                self.sender.train_supernet(run_id, attempt)
        for run_id, attempt in self.repo.resume_interrupted_training_runs():
            self.sender.train_supernet(run_id, attempt)
        search_ids = self.repo.active_search_ids()
        self._infrastructure_ok()
        for gone in set(self._drivers) - set(search_ids):  # ended, cancelled or deleted searches
            self._drivers.pop(gone, None)
        for gone in set(self._probe_paired) - set(search_ids):
            self._probe_paired.pop(gone, None)
        started = []
        with self._lock:
            for search_id in search_ids:
                if search_id in self._inflight:
                    self._overrun(search_id)
                    continue
                self._inflight[search_id] = self._pool.submit(self._tick_one, search_id, reaping)
                started.append(search_id)
        return started

    def wait_ticks(self, timeout: float | None = None) -> bool:
        """Wait until no tick is in flight (at most ``timeout`` seconds); whether none is left."""
        with self._lock:
            futures = list(self._inflight.values())
        return not wait(futures, timeout).not_done

    def _overrun(self, search_id: int) -> None:
        """Log (once per tick) a running tick whose lease was not renewed for ``lease_ttl_s``: its
        heartbeat's renewals fail or hang (the database), and another controller may take the search over
        (a lease lost to one, or a search that ended, is logged by the heartbeat). Called under the lock."""
        beat = self._beats.get(search_id)
        if beat is None or beat.reported or search_id in self._overran:
            return
        unrenewed = beat.unrenewed_s()
        if unrenewed > self.settings.lease_ttl_s:
            self._overran.add(search_id)
            log.warning(
                "search %s: its tick still runs but its lease was not renewed for %.0f s (lease %.0f s): "
                "another controller may take it over, and this tick's writes would then be refused",
                search_id, unrenewed, self.settings.lease_ttl_s,
            )  # fmt: skip

    def _tick_one(self, search_id: int, reap: bool) -> None:
        """One search's tick on a pool thread; its errors stay its own."""
        try:
            self.tick(search_id, reap=reap)
            self._errors.pop(search_id, None)
        except Exception as exc:  # retried next tick; a search that keeps failing is marked FAILED
            if is_infrastructure_error(exc):  # an outage is no fault of the search
                self._infrastructure_error(exc)
                if self._in_grace():
                    return
            log.exception("search %s: controller tick failed", search_id)
            self._errors[search_id] = self._errors.get(search_id, 0) + 1
            if self._errors[search_id] >= MAX_TICK_ERRORS:
                try:
                    self.repo.fail_search(search_id, f"controller error: {exc}")
                except Exception:  # the database is gone too: the next tick tries again
                    log.exception("search %s: could not be marked failed", search_id)
        finally:
            with self._lock:
                self._inflight.pop(search_id, None)
                self._overran.discard(search_id)

    # ------------------------------------------------------------------ one search
    def tick(self, search_id: int, reap: bool = True) -> None:
        """One tick of a search, if this controller takes (or renews) its lease; a heartbeat keeps the
        lease renewed until the tick ends."""
        held_since = time.monotonic()  # (before the call: the lease lasts at least ttl from here)
        ttl = self.settings.lease_ttl_s
        if not self.repo.acquire_lease(search_id, self.id, ttl):
            return
        beat = LeaseHeartbeat(self.repo, search_id, self.id, ttl, held_since).start()
        with self._lock:
            self._beats[search_id] = beat
        try:
            self._tick_held(search_id, reap)
        finally:
            beat.stop()
            with self._lock:
                if self._beats.get(search_id) is beat:
                    del self._beats[search_id]

    def _tick_held(self, search_id: int, reap: bool) -> None:
        search = self.repo.get_search(search_id, with_state=False)  # the state is read only if needed
        if search is None or search.status not in (JobStatus.RUNNING, JobStatus.FINISHING):
            self._drivers.pop(search_id, None)
            return
        spec = SearchSpec.from_dict(search.config)
        if reap:
            self.repo.reap_candidates(search_id, self.settings.stale_after_s, self.settings.max_attempts)
        self._dispatch(search_id)
        if search.status == JobStatus.FINISHING:
            self._finish(search, spec)
            return
        # (a generation row is written with the state, in one transaction: no row, no state yet)
        generation = self.repo.get_generation(search_id, search.generation)
        if generation is not None and not generation.told:
            if spec.rungs:
                genomes, step = self._halving(search, spec, generation.generation, generation.genome_hashes)
                if step.outcome is None:
                    return  # a rung is still running (its promoted genomes were just added if new)
                driver = self._driver(search, spec)
                self._tell_outcome(driver, genomes, step.outcome)
            else:
                if self.repo.any_unfinished(search_id, SEARCH, generation.genome_hashes):
                    return  # (rows are read, and the driver rebuilt, only when there is something to tell)
                members = self._members(search_id, SEARCH, generation.genome_hashes)
                if any(not c.finished for c in members):
                    return  # (a row made WAITING again between the two reads, e.g. a resume)
                driver = self._driver(search, spec)
                self._tell(driver, members)
            # told and asked in one transaction: the state is written once per generation
            told = (generation.generation, progress(driver.candidates, driver.history))
            self._ask(search, spec, driver, search.generation + 1, told)
            return
        # the first generation, or one told without its successor asked (``Repository.tell_generation``
        # rewrites the state at the same generation): never from the cache
        driver = self._driver(search, spec, cached=False)
        self._ask(search, spec, driver, next_generation=0 if generation is None else search.generation + 1)

    @staticmethod
    def _version(search: SearchRecord, generation: int) -> tuple[int, Any]:
        return generation, search.created_at  # (created_at: an id reused after a delete is another search)

    def _driver(self, search: SearchRecord, spec: SearchSpec, cached: bool = True) -> SearchDriver:
        """The search's driver as stored: the cached one if the stored state is still the one this
        process wrote (taken out of the cache: :meth:`_keep` puts it back once its next state is
        written), else rebuilt from the stored state (a new driver before the first generation)."""
        entry = self._drivers.pop(search.id, None)
        if cached and entry is not None and entry[0] == self._version(search, search.generation):
            return entry[1]
        state = self.repo.search_state(search.id)
        if state:
            self.rebuilds += 1
            return SearchDriver.from_state_dict(state)
        return SearchDriver(spec.search_config(), seed=spec.seed)

    def _keep(self, search: SearchRecord, generation: int, driver: SearchDriver, written: bool) -> None:
        """Cache ``driver`` once its state was written as ``generation``'s (a lost write keeps nothing)."""
        if written and self._cache_drivers:
            self._drivers[search.id] = (self._version(search, generation), driver)

    def _members(self, search_id: int, phase: str, hashes: tuple[str, ...]) -> list[CandidateRecord]:
        by_hash = {c.genome_hash: c for c in self.repo.candidates(search_id, phase=phase, hashes=hashes)}
        return [by_hash[h] for h in dict.fromkeys(hashes)]

    def _halving(
        self, search: SearchRecord, spec: SearchSpec, generation: int, hashes: tuple[str, ...]
    ) -> tuple[list[Genome], HalvingStep]:
        """The generation's genomes and where its successive halving stands, replayed from its finished
        rung rows; the rows of the rung to evaluate next are added (WAITING) and sent if they are new."""
        phases = rung_phases(spec)
        rows = {(c.phase, c.genome_hash): c for c in self.repo.candidates(search.id, hashes=hashes)}
        genomes = [rows[phases[0], h].genome for h in dict.fromkeys(hashes)]  # added with the generation
        results = [
            {c.genome: _evaluation(c) for (p, _), c in rows.items() if p == phase and c.finished}
            for phase in phases
        ]
        step = halving_step(genomes, spec.ladder, spec.promote, results, spec.rung_metric)
        phase = phases[step.level]
        new = [g for g in step.todo if (phase, genome_hash(g)) not in rows]
        if new:
            self.repo.add_candidates(
                search.id, self.id, generation, new, spec.ladder[step.level], phase=phase
            )
            self._dispatch(search.id)
        return genomes, step

    @staticmethod
    def _tell_outcome(driver: SearchDriver, genomes: list[Genome], outcome: list[Evaluation]) -> None:
        """Tell the driver a finished generation's halving outcome, in the generation's order (as
        ``ddsm_core.search.run_search`` tells it)."""
        pending = set(driver.generation_genomes)
        told = [(g, e) for g, e in zip(genomes, outcome, strict=True)
                if g in pending and driver.lookup(g) is None]  # fmt: skip
        driver.tell([g for g, _ in told], [e.objectives for _, e in told], [e.reason for _, e in told],
                    [e.record for _, e in told])  # fmt: skip

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
        self,
        search: SearchRecord,
        spec: SearchSpec,
        driver: SearchDriver,
        next_generation: int,
        told: tuple[int, dict[str, Any]] | None = None,
    ) -> None:
        """Ask the next generation and persist it; ``told`` (the generation just told, the front so
        far) is marked told in the same transaction."""
        genomes = driver.ask()
        if genomes and not spec.rungs:  # (with rungs, a genome's finished rung rows are reused instead)
            # genomes already evaluated in this search (e.g. before a state rebuild) come from the DB
            hashes = [genome_hash(g) for g in genomes]
            known = {c.genome_hash: c for c in self.repo.candidates(search.id, phase=SEARCH, hashes=hashes)}
            done = [known[h] for h in hashes if h in known and known[h].finished]
            if done:
                self._tell(driver, done)
                genomes = driver.ask()
        told_generation, result = told if told is not None else (None, None)
        if genomes:
            # a multi-fidelity generation starts at its lowest rung (the top one, n_images, when flat)
            written = self.repo.start_generation(
                search.id, self.id, next_generation, genomes, driver.state_dict(), spec.ladder[0],
                phase=rung_phases(spec)[0], told_generation=told_generation, result=result,
            )  # fmt: skip
            self._keep(search, next_generation, driver, written)
            self._dispatch(search.id)
            return
        # NSGA-II is done: evaluate the finalists again with more images
        if not driver.front():
            self.repo.fail_search(search.id, "every candidate failed: no Pareto front (see candidate errors)")
            return
        front = driver.front()
        genomes = list(dict.fromkeys(spec.finalists(front).values()))
        if spec.pick_rule == "tolerance":  # the bisection's first probe needs no verdict: sent with them
            full = spec.full_width_genome()
            first = bisect_front(bisection_members(front, full), full, {}).probe
            genomes += [first] if first is not None and first not in genomes else []
        written = self.repo.start_generation(
            search.id,
            self.id,
            next_generation,
            genomes,
            driver.state_dict(),
            spec.final_images,
            phase=FINAL,
            status=JobStatus.FINISHING,
            told_generation=told_generation,
            result=result,
        )
        self._keep(search, next_generation, driver, written)
        self._dispatch(search.id)

    def _dispatch(self, search_id: int) -> None:
        """Send every WAITING candidate whose attempt was never sent; one sent but not claimed for
        ``resend_after_s`` (its message lost: a worker killed before its claim, a broker restart) is sent
        again when the eval queue is empty, i.e. it is not simply waiting behind others. A duplicate
        is harmless: the claim is a compare-and-set."""
        idle: bool | None = None
        sent: list[tuple[int, int]] = []
        for cand in self.repo.candidates_to_send(search_id, self.settings.resolved_resend_after_s()):
            if cand.sent_attempt == cand.attempt:  # a resend
                if idle is None:
                    depth = getattr(self.sender, "eval_queue_depth", lambda: None)()
                    idle = not depth  # 0, or unknown (no such queue yet, another broker): resend
                if not idle:
                    continue
                log.info("candidate %s (attempt %s) was never claimed: sent again", cand.id, cand.attempt)
            try:
                self.sender.evaluate_candidate(cand.id, cand.attempt)
            except Exception:  # broker unreachable: the candidate stays unsent, next tick tries again
                log.warning("could not send candidate %s; will retry", cand.id, exc_info=True)
                break
            sent.append((cand.id, cand.attempt))
        # marked in one write after sending (a crash in between only sends them again: harmless)
        if sent:
            self.repo.mark_sent_many(sent)

    def _finish(self, search: SearchRecord, spec: SearchSpec) -> None:
        final = {c.genome: c for c in self.repo.candidates(search.id, phase=FINAL)}
        if any(not c.finished for c in final.values()):
            return
        driver = self._driver(search, spec)
        step = None
        if spec.pick_rule == "tolerance":
            step = self._bisect(search, spec, driver, final)
            if step is None:  # the next probe was just sent: its evaluation decides next
                self._keep(search, search.generation, driver, True)
                return
        self.repo.finish_search(search.id, self.id, self.results(search, spec, driver, final, step))

    def _bisect(
        self,
        search: SearchRecord,
        spec: SearchSpec,
        driver: SearchDriver,
        final: Mapping[Genome, CandidateRecord],
    ) -> BisectionStep | None:
        """The tolerance rule's bisection replayed from the finished finalist rows (as ``ddsm search``
        runs it in-process): the decided step, or None after adding and sending the next probe (a
        finalist row at ``final_images`` images). Each verdict is the probe's paired interval vs full
        width from the stored features (:func:`ddsm_core.pick.probe_verdict`)."""
        full = spec.full_width_genome()
        members = bisection_members(driver.front(), full)
        paired = self._paired_so_far(search)
        while not (step := bisect_front(members, full, {g: passed(d) for g, d in paired.items()})).done:
            probe = step.probe
            assert probe is not None
            cand = final.get(probe)
            if cand is None:
                self.repo.add_candidates(search.id, self.id, search.generation, [probe], spec.final_images,
                                         phase=FINAL)  # fmt: skip
                self._dispatch(search.id)
                return None
            paired[probe] = self._probe_interval(search, spec, final, probe)
        return step

    def _paired_so_far(self, search: SearchRecord) -> dict[Genome, dict[str, Any] | None]:
        entry = self._probe_paired.get(search.id)
        if entry is None or entry[0] != search.created_at:
            entry = self._probe_paired[search.id] = (search.created_at, {})
        return entry[1]

    def _probe_interval(
        self,
        search: SearchRecord,
        spec: SearchSpec,
        final: Mapping[Genome, CandidateRecord],
        probe: Genome,
    ) -> dict[str, Any] | None:
        """A probe's paired interval vs full width with its verdict, None when it has none (a failed
        evaluation, no stored features, a lost artifact: not shown equal)."""
        full = spec.full_width_genome()
        rows = {g: final.get(g) for g in (full, probe)}
        if any(c is None or c.state != CandidateState.COMPLETE or not c.metrics for c in rows.values()):
            return None
        records = {g: {"genome": list(g), **_record(c)} for g, c in rows.items() if c is not None}
        stats = self.repo.get_reference_stats(search.reference_stats_id)
        loaded = self._features(rows, None if stats is None else stats.artifact_sha256)
        if loaded is None:
            return None
        features, ref = loaded
        try:
            return probe_verdict(records[full], records[probe], features, ref, seed=spec.eval_seed,
                                 rel_tolerance=spec.tolerance)  # fmt: skip
        except DDSMError:  # features that do not fit the statistics: not shown equal
            log.warning("search %s: probe %s has no paired interval", search.id, list(probe), exc_info=True)
            return None

    def results(
        self,
        search: SearchRecord,
        spec: SearchSpec,
        driver: SearchDriver,
        final: Mapping[tuple[int, ...], CandidateRecord],
        step: BisectionStep | None = None,
    ) -> dict[str, Any]:
        """``results.json`` of a search whose finalists are evaluated (stored as its result); ``step``:
        the tolerance rule's decided bisection."""
        net = self.repo.get_supernet(search.supernet_id)
        stats = self.repo.get_reference_stats(search.reference_stats_id)
        assert net is not None and net.gflops is not None and stats is not None
        table = CostTable.from_dict(net.gflops)
        latency = self._latency_table(search)
        front = driver.front()
        bisection = None
        if step is not None:
            members = bisection_members(front, spec.full_width_genome())
            records = {g: _final_record(spec, g, final.get(g), table)
                       for g in (*step.probes, spec.full_width_genome())}  # fmt: skip
            paired = self._paired_so_far(search)
            bisection = bisection_summary(spec, members, step, records, paired, front)
        records = {
            name: _final_record(spec, genome, final.get(genome), table)
            for name, genome in spec.finalists(front, None if step is None else step.pick).items()
        }
        retried, workers = self.repo.attempt_summary(search.id, rung_phases(spec))
        results = build_results(
            spec, driver.candidates, driver.history, records, extractor=stats.extractor,
            checkpoint=f"supernet {net.id} '{net.name}' (sha256 {net.artifact_sha256[:12]})",
            stats=f"reference statistics {stats.id} '{stats.name}' ({stats.dataset})",
            retried_attempts=retried,
            search_wall_s=(self.repo.now() - search.created_at).total_seconds(),
            run={"where": "service", "service_search_id": search.id,
                 "checkpoint_step": (net.config or {}).get("step"),
                 "workers": workers},
            floors=stats.floors or (),  # every FID next to the real-data floor
            latency=latency, bisection=bisection,
        )  # fmt: skip
        # every finalist paired with full width on the same seeds (needs the final records built)
        results["paired"] = self._paired(spec, results["final"], final, stats.artifact_sha256)
        return results

    def _latency_table(self, search: SearchRecord) -> LatencyTable | None:
        """The search's latency table (predicted latency of every finalist), None if it has none."""
        row = (
            None if search.latency_table_id is None else self.repo.get_latency_table(search.latency_table_id)
        )
        return None if row is None or row.table is None else LatencyTable.from_dict(row.table)

    def _paired(
        self,
        spec: SearchSpec,
        records: Mapping[str, Mapping[str, Any]],
        final: Mapping[tuple[int, ...], CandidateRecord],
        stats_sha: str | None,
    ) -> dict[str, Any]:
        """Each finalist vs full width (``ddsm_core.paired.paired_vs_full``, as ``ddsm search``), from
        the features the finalists' workers stored; {} when they stored none (e.g. the fast evaluator)."""
        from ddsm_core.paired import paired_vs_full
        from ddsm_core.pick import tolerance_of

        loaded = self._features({tuple(r["genome"]): final.get(tuple(r["genome"])) for r in records.values()},
                                stats_sha)  # fmt: skip
        if loaded is None:
            return {}
        features, ref = loaded
        tolerance = tolerance_of(spec.tolerance, records["full"])
        try:
            return paired_vs_full(records, features, ref, seed=spec.eval_seed, tolerance=tolerance)
        except DDSMError:  # features that do not fit the statistics: the search still completes
            log.warning("the finalists' paired intervals could not be computed", exc_info=True)
            return {}

    def _features(
        self, rows: Mapping[Genome, CandidateRecord | None], stats_sha: str | None
    ) -> tuple[dict[Genome, Any], Any] | None:
        """The per-image features the finalists' workers stored (genome -> array) and the reference
        statistics; None when no row stored features, or an artifact is missing or bad (logged)."""
        shas = {g: (c.metrics or {}).get(FEATURES_METRIC) for g, c in rows.items() if c is not None}
        if not any(shas.values()) or stats_sha is None:
            return None
        import io
        import tempfile
        from pathlib import Path

        import numpy as np

        from ddsm_core.fid import FeatureStats

        try:
            features = {g: np.load(io.BytesIO(self.store.get_bytes(sha)), allow_pickle=False)
                        for g, sha in shas.items() if sha}  # fmt: skip
            with tempfile.TemporaryDirectory() as tmp:
                ref = FeatureStats.load(self.store.get_file(stats_sha, Path(tmp) / "stats.npz"))
        except (DDSMError, OSError, ValueError):  # a lost or bad artifact: the search still completes
            log.warning("the finalists' features could not be read: no paired intervals", exc_info=True)
            return None
        return features, ref


def _record(cand: CandidateRecord) -> dict[str, Any]:
    """A candidate's evaluation record, as a local search keeps it (its metrics and image count; the
    features and sample-grid artifacts are the service's bookkeeping, not part of the record)."""
    metrics = {k: v for k, v in (cand.metrics or {}).items() if k not in ARTIFACT_METRICS}
    return {**metrics, "n_images": cand.n_images}


def _evaluation(cand: CandidateRecord) -> Evaluation:
    """A finished candidate row as the evaluation the local executor's evaluate function returns."""
    return Evaluation(objectives(cand), cand.error, _record(cand))


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
