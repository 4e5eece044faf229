"""What workers store for people to look at, read back: the finalists' sample grids of a search and a
training run's loss log and sample grids (torch-free).

A finalist's grid is named in its metrics (``SAMPLES_METRIC``); a training run's log and grids in its
``artifacts`` record (:mod:`workers.history`). Every artifact is content-addressed, so the loss curves
parsed from a log are cached by its sha256 and never go stale.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from api.artifacts import SAMPLES_METRIC, ArtifactError, ArtifactStore
from api.db.models import CandidateState, JobStatus
from api.db.repository import Repository, SearchRecord, TrainingRunRecord, genome_hash
from api.services import Conflict, NotFound, check_finalist
from ddsm_core.train_log import loss_curves

MAX_POINTS = 400  # per width: a longer log is averaged in buckets (ddsm_core.train_log.loss_curves)


def finalist_grids(repo: Repository, search: SearchRecord) -> dict[str, dict[str, Any]]:
    """``{finalist: {"candidate_id", "genome", "sha256"}}`` for each finalist of a finished search (the
    names of its results.json's ``final``, as the strategy files') whose worker stored a sample grid
    (none before the search is COMPLETE)."""
    result = search.result or {}
    final = result.get("final") or {}
    if search.status != JobStatus.COMPLETE or not final:
        return {}
    genomes = {name: tuple(entry["genome"]) for name, entry in final.items() if entry}
    rows = repo.candidates(search.id, phase="final", hashes=[genome_hash(g) for g in genomes.values()])
    by_genome = {c.genome: c for c in rows if c.state == CandidateState.COMPLETE}
    out = {}
    for name, genome in genomes.items():
        cand = by_genome.get(genome)
        sha = (cand.metrics or {}).get(SAMPLES_METRIC) if cand is not None else None
        if cand is not None and isinstance(sha, str):
            out[name] = {"candidate_id": cand.id, "genome": list(genome), "sha256": sha}
    return out


def search_grid(repo: Repository, store: ArtifactStore, search_id: int, which: str) -> bytes:
    """The PNG sample grid of a finished search's finalist ``which``: any name its strategy files have
    (:func:`api.services.check_finalist`; 404 listing them for another)."""
    search = repo.get_search(search_id)
    if search is None:
        raise NotFound(f"search {search_id} not found")
    if not check_finalist(search, which, "finalist"):
        raise Conflict(
            f"search {search_id} is {search.status.value}: its sample grids exist once it is COMPLETE"
        )
    grid = finalist_grids(repo, search).get(which)
    if grid is None:
        raise NotFound(
            f"search {search_id} stored no sample grid of its {which} (the evaluator drew no images, "
            "e.g. the fast one, or that finalist failed)"
        )
    return _artifact(store, grid["sha256"], f"the sample grid of search {search_id}'s {which}")


def run_grid_steps(run: TrainingRunRecord) -> list[int]:
    """The steps of a training run's uploaded sample grids, in order."""
    samples = (run.artifacts or {}).get("samples") or {}
    return sorted(int(step) for step in samples)


def run_grid(store: ArtifactStore, run: TrainingRunRecord, step: int | None) -> bytes:
    """A training run's sample grid (one row per width, the same seeds in each) at ``step``, default
    the latest."""
    steps = run_grid_steps(run)
    if not steps:
        raise NotFound(f"training run {run.id} has no sample grid yet (written every sample_every steps)")
    if step is None:
        step = steps[-1]
    if step not in steps:
        raise NotFound(f"training run {run.id} has no sample grid of step {step}; it has steps {steps}")
    sha = run.artifacts["samples"][str(step)]  # type: ignore[index]
    return _artifact(store, sha, f"training run {run.id}'s sample grid of step {step}")


def run_losses(store: ArtifactStore, run: TrainingRunRecord) -> dict[str, Any] | None:
    """Per-width training loss curves from the run's uploaded log, None when it has none yet."""
    sha = (run.artifacts or {}).get("log_sha256")
    if not sha:
        return None
    return {**_curves(store, sha), "log_step": run.artifacts.get("log_step")}  # type: ignore[union-attr]


@lru_cache(maxsize=16)
def _curves_cached(url: str, sha: str) -> dict[str, Any]:
    text = ArtifactStore(url).get_bytes(sha).decode(errors="replace")
    return loss_curves(text.splitlines(), MAX_POINTS)


def _curves(store: ArtifactStore, sha: str) -> dict[str, Any]:
    try:
        return _curves_cached(store.url, sha)
    except ArtifactError as exc:
        raise NotFound(f"the loss log is not readable: {exc}") from exc


def _artifact(store: ArtifactStore, sha: str, what: str) -> bytes:
    try:
        return store.get_bytes(sha)
    except ArtifactError as exc:
        raise NotFound(f"{what} is not readable: {exc}") from exc
