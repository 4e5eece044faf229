"""What the routes do, without HTTP: validation against stored rows, registering artifacts, views.

Raises :class:`NotFound` / :class:`Conflict` / ``ConfigError`` (all DDSMErrors); the app turns them into
404 / 409 / 422 with the message.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import Any

from api.artifacts import ArtifactStore
from api.controller import rung_phases
from api.db.models import JobStatus
from api.db.repository import MAX_ID, Repository, SearchRecord
from api.queue import Dispatcher
from api.schemas import LatencyTableRequest, SearchCreate, StrategyTransfer, TrainingRunCreate
from api.settings import Settings
from ddsm_core.catalog import DATASETS
from ddsm_core.compare import Comparison, Front, Results, compare_fronts, fronts_on_one_axis, latency_source
from ddsm_core.config import UNetConfig
from ddsm_core.errors import CheckpointError, ConfigError, DDSMError, StatsError
from ddsm_core.results import finalist_strategies, front_points, summary
from ddsm_core.spec import SearchSpec, with_warm_start
from ddsm_core.strategy import Strategy, strategy_of_document
from ddsm_core.transfer import check_widths, named_schedule, results_strategies, transfer_strategy

log = logging.getLogger(__name__)


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


def request_latency_table(
    repo: Repository, sender: Dispatcher, supernet_id: int, body: LatencyTableRequest
) -> int:
    """A latency table to be measured by a worker; NotFound / Conflict for a missing or unready supernet."""
    net = repo.get_supernet(supernet_id)
    if net is None:
        raise NotFound(f"supernet {supernet_id} not found")
    if net.status != JobStatus.COMPLETE:
        raise Conflict(f"supernet {net.id} is {net.status.value}, not ready: wait until it is COMPLETE")
    table_id = repo.create_latency_table(net.id, body.dtype, body.batch_sizes, body.repeats, body.warmup)
    sender.measure_latency(table_id)
    return table_id


def search_latency_table(repo: Repository, net_id: int, spec: SearchSpec, table_id: int | None) -> int | None:
    """The latency table a new search predicts its latencies with (its id), checked against the spec.

    ``table_id`` given: it must be a COMPLETE table of this supernet. Else the newest COMPLETE float32
    table of the supernet, when all of them were measured on one device (several devices: the client
    must say which); None when there is none (then objective latency is a ConfigError: 422).
    """
    from ddsm_core.latency import LatencyTable

    if table_id is not None:
        row = repo.get_latency_table(table_id)
        if row is None or row.supernet_id != net_id:
            raise NotFound(f"latency table {table_id} of supernet {net_id} not found")
        if row.status != JobStatus.COMPLETE or row.table is None:
            raise Conflict(f"latency table {table_id} is {row.status.value}: a search uses it once COMPLETE")
    else:
        rows = repo.list_latency_tables(net_id, status=JobStatus.COMPLETE, dtype="float32")
        devices = sorted({r.device or "" for r in rows})
        if len(devices) > 1:
            if spec.objective != "latency":
                return None  # GFLOPs only: no table is preferred over a guess
            raise ConfigError(
                f"supernet {net_id} has latency tables from {len(devices)} devices ({'; '.join(devices)}): "
                "choose one with latency_table_id (GET /supernets/{id}/latency-tables)"
            )
        row = rows[-1] if rows else None
    spec.check_latency_table(None if row is None else LatencyTable.from_dict(row.table or {}))
    return None if row is None else row.id


def register_stats_file(repo: Repository, store: ArtifactStore, name: str, dataset: str, path: str) -> int:
    from ddsm_core.fid import FeatureStats
    from ddsm_core.floor import floors_of

    stats = FeatureStats.load(path)  # StatsError for a missing / malformed file
    sha = store.put_file(path)
    floors = [f.to_dict() for f in floors_of(stats)]
    return repo.create_reference_stats(name, dataset, stats.extractor, artifact_sha256=sha, floors=floors)


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
    widths = body.widths or available
    unknown = [w for w in widths if not any(math.isclose(w, a) for a in available)]
    if unknown:
        raise ConfigError(f"widths {unknown} are not offered by supernet {net.id}; allowed: {available}")
    widths = [next(a for a in available if math.isclose(w, a)) for w in widths]
    spec = body.spec(tuple(widths))
    seeds = warm_start_strategies(repo, body.warm_start, body.warm_start_searches)
    if seeds:
        spec, notes = with_warm_start(spec, seeds, (net.config or {}).get("schedule"))
        for note in notes:
            log.info("new search %r: %s", body.name, note)
    note = spec.final_seeds_note()
    if note is not None:  # allowed (it is how earlier searches were measured), but said: results' seeds too
        log.warning("new search %r: %s", body.name, note)
    if (net.config or {}).get("model_config"):
        spec.check_model(UNetConfig.from_dict(net.config["model_config"]))
    latency_table_id = search_latency_table(repo, net.id, spec, body.latency_table_id)
    return repo.create_search(body.name, net.id, stats.id, spec.to_dict(), latency_table_id)


def warm_start_strategies(
    repo: Repository, strategies: list[dict[str, Any]], search_ids: list[int]
) -> list[tuple[str, Strategy]]:
    """The warm-start strategies of a request: the inline ones (strategy files, or a results.json
    as ``ddsm search --warm-start`` takes it: pick, knee, front), then each search's results.
    NotFound for an unknown search, Conflict for one that is not COMPLETE."""
    out = []
    for k, d in enumerate(strategies):
        try:
            if "config" in d and "genes" not in d:  # a results.json, as ddsm_core.transfer.read_strategies
                out += [(f"warm_start[{k}] {label}", s) for label, s in results_strategies(d)]
            else:
                out.append((f"warm_start[{k}]", Strategy.from_dict(d)))
        except (ConfigError, KeyError, TypeError) as exc:
            raise ConfigError(f"warm_start[{k}]: {exc}") from None
    for search_id in search_ids:
        source = repo.get_search(search_id)
        if source is None:
            raise NotFound(f"warm-start search {search_id} not found")
        if source.status != JobStatus.COMPLETE or not source.result:
            raise Conflict(
                f"warm-start search {search_id} is {source.status.value}: it seeds others once COMPLETE"
            )
        try:
            found = results_strategies(source.result)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"warm-start search {search_id}: unreadable results ({exc})") from None
        out += [(f"search {search_id} {label}", s) for label, s in found]
    return out


def transferred_strategy(
    repo: Repository, body: StrategyTransfer
) -> tuple[Strategy, Strategy, dict[str, Any]]:
    """(source, transferred, schedule) of a transfer request; NotFound / Conflict for the supernet."""
    source = strategy_of_document(body.strategy)
    if body.supernet_id is None:
        schedule = named_schedule(body.schedule or "linear", body.timesteps)
    else:
        net = repo.get_supernet(body.supernet_id)
        if net is None:
            raise NotFound(f"supernet {body.supernet_id} not found")
        if net.status != JobStatus.COMPLETE or not net.gflops:
            raise Conflict(f"supernet {net.id} is {net.status.value}, not ready: wait until it is COMPLETE")
        check_widths(source, [float(w) for w in net.gflops["widths"]], f"supernet {net.id}")
        schedule = (net.config or {}).get("schedule") or named_schedule("linear")
    return source, transfer_strategy(source, body.sampler, body.steps, schedule), schedule


def search_view(repo: Repository, search: SearchRecord) -> dict[str, Any]:
    """A search as REST shows it: progress, the front stored after the last generation (never the
    algorithm state, which is the controller's), the result once COMPLETE (results.json less the
    candidate list, which GET /searches/{id}/candidates pages through)."""
    spec = SearchSpec.from_dict(search.config)
    phases = rung_phases(spec)
    # every genome has one row at the lowest rung (the only one when flat): those are the candidates
    counts = repo.count_candidates(search.id, phase=phases[0])
    generations = int(search.config.get("generations", 1))
    done = len((search.result or {}).get("history", []))
    total_work = generations * int(search.config.get("population", 1))
    finished = counts["COMPLETE"] + counts["FAILED"]
    complete = search.status == JobStatus.COMPLETE and bool(search.result)
    percent = 100.0 if complete else min(99.0, 100.0 * finished / max(total_work, 1))
    return {
        **{
            k: getattr(search, k)
            for k in ("id", "name", "supernet_id", "reference_stats_id", "latency_table_id", "config")
        },  # fmt: skip
        "status": search.status.value,
        "progress": {
            "generations_done": done,
            "generations": generations,
            "candidates": counts,
            "percent": percent,
            "rungs": [
                {"n_images": n, "phase": phase, "candidates": repo.count_candidates(search.id, phase=phase)}
                for n, phase in zip(spec.ladder, phases, strict=True)
            ]
            if spec.rungs
            else None,
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


MAX_COMPARE = 50
"""At most this many searches in one comparison (a legend and a table stay readable)."""


def parse_ids(text: str) -> list[int]:
    """``'1,2,3'`` -> ``[1, 2, 3]`` (repeats dropped, order kept); ConfigError for anything else."""
    try:
        ids = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"ids are search ids separated by commas (1,2,3), got {text[:80]!r}") from None
    ids = list(dict.fromkeys(ids))
    if not ids:
        raise ConfigError("ids names no search: give e.g. ids=1,2")
    if len(ids) > MAX_COMPARE:
        raise ConfigError(f"at most {MAX_COMPARE} searches in one comparison, got {len(ids)}")
    return ids


def compare_searches(
    repo: Repository, ids: list[int], reference: tuple[float, float] | None = None, axis: str | None = None
) -> tuple[list[Front], Comparison, dict[str, Any]]:
    """The stored fronts of several searches (the final one, or the latest generation's while running)
    with a hypervolume each against one shared reference point (ddsm_core.compare), all on one cost
    axis: ``axis``, else the searches' shared objective, else GFLOPs (the body's ``note`` says why).

    NotFound for an unknown id, Conflict for a search with no front yet, ConfigError (422) for FIDs
    from different feature extractors, or the latency axis where a search has no predicted latency or
    the searches' latency tables differ.
    """
    searches, stored, objectives = [], [], []
    for search_id in ids:
        search = repo.get_search(search_id) if 0 <= search_id <= MAX_ID else None
        if search is None:
            raise NotFound(f"search {search_id} not found")
        if not search.result or not search.result.get("front"):
            raise Conflict(f"search {search_id} is {search.status.value} and has no front yet")
        searches.append(search)
        stored.append(Results(f"{search_id}: {search.name}", f"search {search_id}", search.result))
        objectives.append(str(search.config.get("objective", "gflops")))
    fronts, note = fronts_on_one_axis(stored, axis, objectives)
    rows = []
    for k, (search, front) in enumerate(zip(searches, fronts, strict=True)):
        stats = repo.get_reference_stats(search.reference_stats_id)
        extractor = front.extractor or (stats.extractor if stats is not None else None)
        # a running search's stored front does not name its latency table yet: the search row does
        table = repo.get_latency_table(search.latency_table_id) if search.latency_table_id else None
        source = front.latency_source or latency_source(table.table if table is not None else None)
        fronts[k] = dataclasses.replace(front, extractor=extractor, latency_source=source)
        rows.append({"id": search.id, "name": search.name, "status": search.status.value,
                     "extractor": extractor})  # fmt: skip
    comparison = compare_fronts(fronts, reference, note=note)
    body = comparison.to_dict()
    body["extractor"] = next((f.extractor for f in fronts if f.extractor), None)
    body["searches"] = [
        {**row, **summary_row, "front": [{"cost": c, "fid": f} for c, f in front.points]}
        for row, summary_row, front in zip(rows, body["searches"], fronts, strict=True)
    ]
    return fronts, comparison, body


def candidate_strategy(repo: Repository, candidate_id: int) -> Strategy:
    cand = repo.get_candidate(candidate_id)
    if cand is None:
        raise NotFound(f"candidate {candidate_id} not found")
    search = repo.get_search(cand.search_id)
    assert search is not None
    return SearchSpec.from_dict(search.config).strategy(cand.genome)


def check_finalist(search: SearchRecord, which: str, what: str) -> bool:
    """404 (listing the names) unless ``which`` names a finalist of ``search``: a name of its
    results.json's ``final`` (pick, knee, full and, with the tolerance rule, weighted), before that one
    it will have. The one name check of every finalist route (strategy files, sample grids). Returns
    whether the search is done: COMPLETE, its finalists known."""
    spec = SearchSpec.from_dict(search.config)
    final = (search.result or {}).get("final") or {}
    done = search.status == JobStatus.COMPLETE and bool(final)
    names = tuple(final) if done else spec.finalist_names()
    if which not in names:
        why = (
            " (its pick rule is weighted: the weighted pick is its pick)"
            if which == "weighted" and spec.pick_rule == "weighted"
            else ""
        )
        raise NotFound(
            f"search {search.id} has no {what} {which[:80]!r}{why}; "
            f"{'available' if done else 'once it is COMPLETE'}: {', '.join(names)}"
        )
    return done


def search_strategy(repo: Repository, search_id: int, which: str) -> Strategy:
    """The strategy file of a finished search's finalist ``which`` (:func:`check_finalist`'s names),
    the same file ``ddsm search`` writes as ``<which>.json``. 404 for a name the search has not
    (listing those it has), 409 for a name it will have once it is COMPLETE."""
    search = repo.get_search(search_id)
    if search is None:
        raise NotFound(f"search {search_id} not found")
    if not check_finalist(search, which, "strategy"):
        raise Conflict(f"search {search_id} is {search.status.value}: its {which} exists once it is COMPLETE")
    return finalist_strategies(search.result)[which]  # type: ignore[arg-type]


def check_training(settings: Settings, body: TrainingRunCreate) -> dict[str, Any]:
    """Torch-free checks of a training request; returns the run's stored config (preset and the
    overrides given). Each override is bounded by the schema; here: the dataset exists, and the recipe
    resolves as the worker will resolve it (TrainConfig's and UNetConfig's own checks)."""
    from ddsm_core.recipes import TRAIN_PRESETS, resolve_recipe

    train = body.train.model_dump(exclude_none=True)
    model = body.model.model_dump(exclude_none=True)
    dataset = train.get("dataset", TRAIN_PRESETS[body.preset]["dataset"])
    if not dataset:
        raise ConfigError(
            f"the {body.preset} recipe has no bundled dataset: set train.dataset to a folder of images "
            "under DDSM_CHECKPOINT_ROOTS"
        )
    if dataset not in DATASETS:
        folder = server_path(settings, dataset)
        if not folder.is_dir():
            raise ConfigError(f"dataset {dataset!r} is neither {' nor '.join(DATASETS)} nor a folder")
        train["dataset"] = str(folder)
    resolve_recipe(body.preset, train, model_overrides=model)
    return {"preset": body.preset, "train": train, "model": model}


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
    try:
        exists = path.exists()
    except OSError:  # e.g. a component over NAME_MAX (255 bytes): ENAMETOOLONG, which exists() raises
        exists = False
    if not exists:
        raise ConfigError(f"path {raw[:200]!r} does not exist on the API server")
    return path


USER_ERRORS = (ConfigError, CheckpointError, StatsError)
