"""What the routes do, without HTTP: validation against stored rows, registering artifacts, views.

Raises :class:`NotFound` / :class:`Conflict` / ``ConfigError`` (all DDSMErrors); the app turns them into
404 / 409 / 422 with the message.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from api.artifacts import ArtifactStore
from api.db.models import JobStatus
from api.db.repository import Repository, SearchRecord
from api.queue import Dispatcher
from api.schemas import SearchCreate
from api.settings import Settings
from ddsm_core.errors import CheckpointError, ConfigError, DDSMError, StatsError
from ddsm_core.results import front_points, summary
from ddsm_core.spec import FINALISTS, SearchSpec
from ddsm_core.strategy import Strategy


class NotFound(DDSMError):
    pass


class Conflict(DDSMError):
    pass


class Forbidden(DDSMError):
    pass


def register_supernet(
    repo: Repository, store: ArtifactStore, sender: Dispatcher, name: str, path: str
) -> int:
    """Store a checkpoint folder and let a worker check it and count its GFLOPs per width."""
    from ddsm_core.checkpoint import read_manifest

    manifest = read_manifest(path, verify=True)  # torch-free; CheckpointError names the bad file
    sha = store.put_dir(manifest["path"])
    config = {k: manifest.get(k) for k in ("step", "model_config", "schedule", "train_config")}
    supernet_id = repo.create_supernet(name, sha, config)
    sender.inspect_supernet(supernet_id)
    return supernet_id


def register_stats_file(repo: Repository, store: ArtifactStore, name: str, dataset: str, path: str) -> int:
    from ddsm_core.fid import FeatureStats

    stats = FeatureStats.load(path)  # StatsError for a missing / malformed file
    sha = store.put_file(path)
    return repo.create_reference_stats(name, dataset, stats.extractor, artifact_sha256=sha)


def create_search(repo: Repository, body: SearchCreate) -> int:
    net = repo.get_supernet(body.supernet_id)
    if net is None:
        raise NotFound(f"supernet {body.supernet_id} not found")
    if net.status != JobStatus.COMPLETE or not net.gflops:
        raise Conflict(f"supernet {net.id} is {net.status.value}, not ready: wait until it is COMPLETE")
    stats = repo.get_reference_stats(body.reference_stats_id)
    if stats is None:
        raise NotFound(f"reference statistics {body.reference_stats_id} not found")
    if stats.status != JobStatus.COMPLETE:
        raise Conflict(f"reference statistics {stats.id} are {stats.status.value}, not ready")
    available = [float(w) for w in net.gflops["widths"]]
    widths = sorted(body.widths) if body.widths else available
    unknown = [w for w in widths if not any(math.isclose(w, a) for a in available)]
    if unknown:
        raise ConfigError(f"widths {unknown} are not offered by supernet {net.id}; allowed: {available}")
    widths = [next(a for a in available if math.isclose(w, a)) for w in widths]
    fields = body.model_dump(exclude={"name", "supernet_id", "reference_stats_id", "widths"})
    spec = SearchSpec(widths=tuple(widths), **{**fields, "rungs": tuple(fields["rungs"])})
    if spec.rungs:  # the controller evaluates every candidate at n_images: refuse rather than ignore
        raise ConfigError(
            "multi-fidelity rungs are not supported by the service yet: run `ddsm search --rungs` "
            "locally, or leave rungs empty"
        )
    return repo.create_search(body.name, net.id, stats.id, spec.to_dict())


def search_view(repo: Repository, search: SearchRecord) -> dict[str, Any]:
    """A search as REST shows it: progress, the front stored after the last generation (never the
    algorithm state, which is the controller's), the result once COMPLETE (results.json less the
    candidate list, which GET /searches/{id}/candidates pages through)."""
    counts = repo.count_candidates(search.id, phase="search")
    generations = int(search.config.get("generations", 1))
    done = len((search.result or {}).get("history", []))
    total_work = generations * int(search.config.get("population", 1))
    finished = counts["COMPLETE"] + counts["FAILED"]
    complete = search.status == JobStatus.COMPLETE and bool(search.result)
    percent = 100.0 if complete else min(99.0, 100.0 * finished / max(total_work, 1))
    return {
        **{k: getattr(search, k) for k in ("id", "name", "supernet_id", "reference_stats_id", "config")},
        "status": search.status.value,
        "progress": {
            "generations_done": done,
            "generations": generations,
            "candidates": counts,
            "percent": percent,
        },
        "front": front_points(search.result),
        "result": summary(search.result) if complete else None,  # type: ignore[arg-type]
        "error": search.error,
        "created_at": search.created_at,
        "updated_at": search.updated_at,
        "ended_at": search.ended_at,
    }


def search_results(search: SearchRecord) -> dict[str, Any]:
    """results.json of a COMPLETE search, as the controller stored it (built by ddsm_core.results)."""
    if search.status != JobStatus.COMPLETE or not search.result:
        raise Conflict(f"search {search.id} is {search.status.value}: its report exists once it is COMPLETE")
    return search.result


def candidate_strategy(repo: Repository, candidate_id: int) -> Strategy:
    cand = repo.get_candidate(candidate_id)
    if cand is None:
        raise NotFound(f"candidate {candidate_id} not found")
    search = repo.get_search(cand.search_id)
    assert search is not None
    return SearchSpec.from_dict(search.config).strategy(cand.genome)


def search_strategy(repo: Repository, search_id: int, which: str) -> Strategy:
    search = repo.get_search(search_id)
    if search is None:
        raise NotFound(f"search {search_id} not found")
    if which not in FINALISTS:
        raise ConfigError(f"unknown strategy {which!r}; allowed: {', '.join(FINALISTS)}")
    if search.status != JobStatus.COMPLETE or not search.result:
        raise Conflict(f"search {search_id} is {search.status.value}: its {which} exists once it is COMPLETE")
    return SearchSpec.from_dict(search.config).strategy(search.result["final"][which]["genome"])


def check_training(preset: str, model: dict[str, Any]) -> None:
    """Torch-free checks of a training request (the worker validates the TrainConfig overrides)."""
    from ddsm_core.config import UNetConfig

    base = UNetConfig.from_preset(preset)  # ConfigError listing the presets
    if model:
        UNetConfig.from_dict({**base.to_dict(), **model})


MAX_PATH_CHARS = 4096  # PATH_MAX on Linux


def server_path(settings: Settings, raw: str) -> Path:
    """The file or folder a REST client names, symlinks resolved, if it lies under a checkpoint root.

    The roots are checked before anything else, so a path outside them gets the same 403 whether it
    exists or not: key holders cannot probe the server's filesystem through registration.
    """
    if not raw or "\0" in raw or len(raw) > MAX_PATH_CHARS:
        raise ConfigError(f"not a valid path (empty, NUL character or over {MAX_PATH_CHARS} characters)")
    try:
        path = Path(raw).resolve()  # relative to the API's working directory; follows symlinks
    except (OSError, RuntimeError, ValueError):
        raise ConfigError(f"not a valid path: {raw[:200]!r}") from None
    roots = settings.resolved_checkpoint_roots()
    if not any(path == root or path.is_relative_to(root) for root in roots):
        raise Forbidden(
            f"path {raw[:200]!r} is outside the folders this server registers from "
            f"(DDSM_CHECKPOINT_ROOTS: {os.pathsep.join(map(str, roots))})"
        )
    if not path.exists():
        raise ConfigError(f"path {raw[:200]!r} does not exist on the API server")
    return path


USER_ERRORS = (ConfigError, CheckpointError, StatsError)
