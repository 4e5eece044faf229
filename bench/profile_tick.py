"""Where a controller tick spends its time: one search driven in-process on Postgres, per-phase timings.

    PYTHONPATH=. .venv/bin/python bench/profile_tick.py --population 1000 --generations 4 [--cprofile N]

One search (the ``service_bench.py`` spec) in a fresh Postgres database (created and dropped here): the
controller ticks it, candidates are completed directly in the database with the simulated worker's
metrics (``tests.factories.complete_sent``'s, in bulk; not timed), until it completes. Every tick's
phases are timed by wrapping the controller's steps (inclusive times: ``tell`` holds ``members``,
``ask`` holds ``start_generation``...), and printed per tick kind (tell: a generation told and the
next asked; idle: nothing to tell; final: the results). ``--cprofile N`` prints the N hottest
functions (cumulative) of the tell ticks.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import inspect
import io
import pstats
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, func, update

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import api.controller as controller_mod  # noqa: E402
from api.controller import SearchController  # noqa: E402
from api.db.engine import make_engine, upgrade  # noqa: E402
from api.db.models import Candidate, CandidateState, JobStatus  # noqa: E402
from api.db.repository import Repository, encode_metrics  # noqa: E402
from api.settings import Settings  # noqa: E402
from bench.service_bench import TABLE, spec  # noqa: E402
from ddsm_core.costs import CostTable  # noqa: E402
from ddsm_core.search import SearchDriver  # noqa: E402
from ddsm_core.spec import SearchSpec  # noqa: E402
from tests.factories import Outbox, make_search  # noqa: E402
from tests.support import fresh_postgres_database  # noqa: E402
from workers.fast_eval import fast_metrics  # noqa: E402
from workers.tasks import with_cost  # noqa: E402

TIMES: dict[str, float] = defaultdict(float)
REPO_STEPS = ("acquire_lease", "get_search", "reap_candidates", "candidates_to_send", "mark_sent_many",
              "get_generation", "candidates", "any_unfinished", "start_generation", "finish_search",
              "search_state")  # fmt: skip


def timed(owner: Any, name: str, label: str) -> None:
    """Replace ``owner.name`` with a wrapper that adds its wall time to ``TIMES[label]``."""
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            TIMES[label] += time.perf_counter() - t0

    static = isinstance(inspect.getattr_static(owner, name), staticmethod)
    setattr(owner, name, staticmethod(wrapper) if static else wrapper)


def instrument() -> None:
    for name in REPO_STEPS:
        if hasattr(Repository, name):  # (a step an older commit lacks is left out)
            timed(Repository, name, f"repo.{name}")
    for name in ("_dispatch", "_members", "_driver", "_tell", "_ask", "_finish", "results"):
        timed(SearchController, name, f"ctl.{name}")
    for name in ("ask", "tell", "state_dict"):
        timed(SearchDriver, name, f"driver.{name}")
    timed(controller_mod, "progress", "progress")


def complete_all(repo: Repository, outbox: Outbox, search_id: int, s: SearchSpec) -> None:
    """The simulated worker of ``tests.factories.complete_sent`` (the same fast metrics), in one bulk
    UPDATE per generation instead of five round trips per candidate: not timed, only quicker to wait for."""
    sent = dict(outbox.take_evaluations())
    table = CostTable.from_dict(TABLE)
    rows = []
    for cand in repo.candidates(search_id, state=CandidateState.WAITING):
        if sent.get(cand.id) != cand.attempt:
            continue
        metrics = fast_metrics(s, cand.genome, table, 0.0, cand.n_images)
        metrics = with_cost(s, cand.genome, metrics, None)
        rows.append({"b_id": cand.id, "b_metrics": encode_metrics(metrics), "b_fid": metrics["fid"],
                     "b_gflops": metrics["gflops"]})  # fmt: skip
    c = Candidate.__table__.c
    stmt = (
        update(Candidate.__table__)
        .where(c.id == bindparam("b_id"), c.state == CandidateState.WAITING)
        .values(state=CandidateState.COMPLETE, worker="w", metrics=bindparam("b_metrics"),
                fid=bindparam("b_fid"), gflops=bindparam("b_gflops"), started_at=func.now(),
                heartbeat_at=func.now(), ended_at=func.now())
    )  # fmt: skip
    if rows:
        with repo.engine.begin() as conn:
            conn.execute(stmt, rows)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--population", type=int, default=1000)
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--cprofile", type=int, default=0, help="print the N hottest functions of tell ticks")
    args = p.parse_args()
    instrument()
    profile = cProfile.Profile()
    kinds: dict[str, list[dict[str, float]]] = defaultdict(list)
    with fresh_postgres_database("ddsm_profile") as url:
        upgrade(url)
        repo = Repository(make_engine(url))
        s = spec(args.population, args.generations)
        sid = make_search(repo, s, TABLE)
        sender = Outbox()
        ctl = SearchController(repo, sender, Settings(), ident="profile")
        while (search := repo.get_search(sid, with_state=False)) and search.status != JobStatus.COMPLETE:
            for tick in ("work", "idle"):
                status = search.status
                TIMES.clear()
                if tick == "work" and args.cprofile:
                    profile.enable()
                t0 = time.perf_counter()
                ctl.tick(sid)
                total = time.perf_counter() - t0
                if tick == "work" and args.cprofile:
                    profile.disable()
                kind = "idle" if tick == "idle" else ("final" if status == JobStatus.FINISHING else "tell")
                kinds[kind].append({"total": total, **TIMES})
            complete_all(repo, sender, sid, s)
        repo.engine.dispose()
    for kind, ticks in kinds.items():
        labels = sorted({k for t in ticks for k in t}, key=lambda k: -sum(t.get(k, 0) for t in ticks))
        print(f"\n{kind}: {len(ticks)} ticks, ms per tick (mean; max)")
        for label in labels:
            values = [1000 * t.get(label, 0.0) for t in ticks]
            print(f"  {label:28s} {sum(values) / len(values):9.1f} {max(values):9.1f}")
    if args.cprofile:
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(args.cprofile)
        print(out.getvalue())


if __name__ == "__main__":
    main()
