"""Faults injected into a running search on the real stack: is anything lost, duplicated or re-executed?

    .venv/bin/python bench/service_faults.py [--md bench/service_faults.md] [--faults NAME,...]

Everything runs on this machine as real processes: a PostgreSQL and a redis-server of the benchmark's
own (initdb + pg_ctl in a temporary folder and redis-server without persistence, on free ports, so
restarting them touches no one else's), the API (uvicorn, the controller inside) and Celery workers
(``ddsm worker``), with the fast evaluator (``workers/fast_eval.py``: an analytic score after a fixed
sleep) journaling every evaluation that runs to the end (``DDSM_FAST_EVAL_JOURNAL``). Each run gets a
fresh database and an empty broker, posts one search (seed 5) over REST, injects its fault once the
second generation is being evaluated, and waits for the search to complete. Then it counts:

- lost: candidates not COMPLETE at the end (FAILED, or never finished), and candidates missing
  compared with the run without faults (same seed, so the same genomes are asked);
- duplicated: candidate rows for one genome twice, and front points different from the run without
  faults (a result counted twice would move the front);
- re-executed: evaluations that ran to the end for a candidate that already had one (the journal);
- extra delay: the search's wall time (creation to completion, database clock) minus the mean of the
  runs without faults.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from api.db.engine import make_engine, upgrade  # noqa: E402
from api.db.models import CandidateState, JobStatus  # noqa: E402
from api.db.repository import Repository  # noqa: E402
from api.processes import start_api_process, start_worker_process, stop, wait_healthy  # noqa: E402
from api.queue import Dispatcher  # noqa: E402
from api.settings import Settings  # noqa: E402
from ddsm_core.results import front_points  # noqa: E402
from tests.factories import front_of, ready, search_body  # noqa: E402
from tests.support import port_open  # noqa: E402

KEY = "faults"
SEARCH = {"seed": 5, "population": 8, "generations": 3}
SETTINGS = {  # the service's settings in every run (DDSM_<NAME>)
    "EVALUATOR": "fast",
    "FAST_EVAL_SECONDS": "0.3",
    "CONTROLLER_INTERVAL_S": "0.2",
    "HEARTBEAT_INTERVAL_S": "1",  # resend of a never-claimed candidate: 2 x this
    "STALE_AFTER_S": "5",  # a worker silent this long is presumed dead
    "LEASE_TTL_S": "5",  # a restarted API takes its searches over after this
    "INFRA_BACKOFF_S": "0.2",
    "INFRA_BACKOFF_MAX_S": "2",
}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, check: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(Exception):  # a service that is down (on purpose) answers nothing for a while
            value = check()
            if value:
                return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


# ---------------------------------------------------------------------------- our own services
def _pg(cmd: list[str]) -> None:
    """Run a PostgreSQL tool (as the ``postgres`` user when we are root: the server refuses root)."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
    if found is None:
        raise SystemExit(f"error: {name} not found (install PostgreSQL's server binaries)")
    return str(found)


@dataclass
class OwnPostgres:
    """A PostgreSQL cluster in ``folder`` on ``port``, trust auth on 127.0.0.1 only."""

    folder: Path
    port: int = field(default_factory=free_port)

    def init(self) -> OwnPostgres:
        self.folder.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        cmd = [
            _pg_bin("initdb"),
            "-D",
            str(self.folder / "data"),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ]
        _pg(cmd)
        return self

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off"
        cmd = [_pg_bin("pg_ctl"), "-D", str(self.folder / "data"), "-l", str(self.folder / "log"), "-o", opts,
               "-w", "start"]  # fmt: skip
        _pg(cmd)

    def stop(self, mode: str = "fast") -> None:
        """``immediate``: every server process quits at once, as in a crash (recovery at the next start)."""
        cmd = [_pg_bin("pg_ctl"), "-D", str(self.folder / "data"), "-m", mode, "-w", "stop"]
        _pg(cmd)

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def fresh_database(self, name: str) -> str:
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)


@dataclass
class OwnRedis:
    """A redis-server on ``port`` without persistence: a restart loses every queued message."""

    folder: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(self.folder)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until("redis-server", lambda: port_open("127.0.0.1", self.port), timeout=10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def flush(self) -> None:
        import redis

        redis.Redis(port=self.port).flushall()  # our own server: nobody else's data

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@contextmanager
def own_services(folder: Path) -> Iterator[tuple[OwnPostgres, OwnRedis]]:
    pg, rd = OwnPostgres(folder / "pg").init(), OwnRedis(folder)
    pg.start()
    try:
        rd.start()
        try:
            yield pg, rd
        finally:
            rd.kill()
    finally:
        with suppress(RuntimeError):
            pg.stop("immediate")


# ---------------------------------------------------------------------------- one run
@dataclass
class Run:
    """The stack of one run: its environment, API and worker processes, and the search."""

    env: dict[str, str]
    logs: Path
    journal: Path
    repo: Repository
    api_port: int = field(default_factory=free_port)
    api: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    search_id: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start_api(self) -> None:
        self.api = start_api_process(self.api_port, self.env, log=self.logs / "api.log")
        wait_healthy(self.url, timeout=90, proc=self.api)

    def start_worker(self, **env: str) -> subprocess.Popen[bytes]:
        log = self.logs / f"worker{len(self.workers)}.log"
        proc = start_worker_process({**self.env, **env}, queues="eval", log=log)
        self.workers.append(proc)
        return proc

    def candidates(self) -> list[Any]:
        return self.repo.candidates(self.search_id)

    def in_second_generation(self) -> bool:
        search = self.repo.get_search(self.search_id)
        running = self.repo.candidates(self.search_id, state=CandidateState.RUNNING)
        return search is not None and search.generation >= 1 and any(c.generation >= 1 for c in running)


@dataclass
class Fault:
    name: str
    what: str
    inject: Callable[[Run], None] | None = None  # once, when ``when`` first holds
    when: Callable[[Run], bool] = Run.in_second_generation
    before: Callable[[Run], None] | None = None  # once the stack is up, before the search is posted
    during: Callable[[Run], None] | None = None  # on every poll until the search completes
    after: Callable[[Run], None] | None = None  # once the search has ended


def _wrong_database(run: Run) -> str:
    return make_url(run.env["DATABASE_URL"]).set(database="ddsm_no_such_database").render_as_string(False)


def _kill_before_claim_start(run: Run) -> None:
    # A worker holds a message before its claim only for the milliseconds of the claim; one whose
    # database is not reachable yet (here: never) holds it through a 30 s backoff, which makes the
    # window wide enough to SIGKILL it there, deterministically.
    slow = {"DATABASE_URL": _wrong_database(run), "DDSM_INFRA_BACKOFF_S": "30",
            "DDSM_INFRA_BACKOFF_MAX_S": "30", "DDSM_WORKER_MAX_INFRA_FAILURES": "1000"}  # fmt: skip
    run.start_worker(**slow)


def _holds_unclaimed_message(run: Run) -> bool:
    return "requeueing after" in (run.logs / f"worker{len(run.workers) - 1}.log").read_text()


def _kill_before_claim(run: Run) -> None:
    doomed = run.workers[-1]
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    run.notes.append("SIGKILLed while it held an unclaimed message")


def _kill_mid_candidate(run: Run) -> None:
    running = wait_until(
        "a running candidate", lambda: run.repo.candidates(run.search_id, state=CandidateState.RUNNING), 60
    )
    pid = int(running[0].worker.rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)
    run.notes.append(f"SIGKILLed the worker of candidate {running[0].id}; a replacement started")
    run.start_worker()  # as a supervisor (compose, systemd) would


def _poison_start(run: Run) -> None:
    run.start_worker(DATABASE_URL=_wrong_database(run))


def _poison_check(run: Run) -> None:
    poison = run.workers[2]
    stopped = poison.poll() is not None and "stops consuming" in (run.logs / "worker2.log").read_text()
    run.notes.append("the poison worker " + ("stopped consuming" if stopped else "ran to the end"))


def _duplicates(run: Run) -> None:
    """Each message delivered twice more: once its candidate is sent, and again at the end."""
    state = run.__dict__.setdefault("_duplicated", {"sent": set(), "dispatcher": None})
    if state["dispatcher"] is None:
        state["dispatcher"] = Dispatcher(Settings(celery_broker_url=run.env["CELERY_BROKER_URL"]))
    for cand in run.candidates():
        if cand.id not in state["sent"] and (cand.sent_attempt or cand.state != CandidateState.WAITING):
            state["dispatcher"].evaluate_candidate(cand.id, cand.attempt)
            state["dispatcher"].evaluate_candidate(cand.id, cand.attempt)
            state["sent"].add(cand.id)


def faults(pg: OwnPostgres, rd: OwnRedis) -> list[Fault]:
    def restart_postgres(run: Run) -> None:
        pg.stop("immediate")
        time.sleep(3.0)
        pg.start()
        run.notes.append("pg_ctl stop -m immediate, 3 s down, start")

    def restart_redis(run: Run) -> None:
        rd.kill()
        time.sleep(2.0)
        rd.start()
        run.notes.append("SIGKILL, 2 s down, start (no persistence: every queued message lost)")

    def restart_api(run: Run) -> None:
        assert run.api is not None
        run.api.kill()
        run.api.wait()
        run.start_api()
        run.notes.append("SIGKILL of the API (controller included), a new one started at once")

    return [
        Fault("sigkill-startup", "worker SIGKILLed in start-up, holding a message it has not claimed",
              before=_kill_before_claim_start, when=_holds_unclaimed_message, inject=_kill_before_claim),
        Fault("sigkill-mid", "worker SIGKILLed mid-candidate", inject=_kill_mid_candidate),
        Fault("poison", "a poison worker (wrong DATABASE_URL) beside the healthy ones", before=_poison_start,
              after=_poison_check),
        Fault("postgres-restart", "PostgreSQL restarted mid-search", inject=restart_postgres),
        Fault("redis-restart", "Redis restarted mid-search", inject=restart_redis),
        Fault("api-restart", "API (and controller) SIGKILLed and restarted mid-search", inject=restart_api),
        Fault("duplicate", "every message delivered three times", during=_duplicates),
    ]  # fmt: skip


def run_one(fault: Fault | None, pg: OwnPostgres, rd: OwnRedis, folder: Path, n: int) -> dict[str, Any]:
    name = fault.name if fault else "none"
    home = folder / f"run{n}-{name}"
    (home / "logs").mkdir(parents=True)
    url = pg.fresh_database(f"faults_{n}")
    upgrade(url)
    rd.flush()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DATABASE_URL": url,
           "CELERY_BROKER_URL": rd.url, "ARTIFACT_STORE": str(home / "artifacts"), "DDSM_HOME": str(home),
           "DDSM_API_KEY": KEY, "DDSM_FAST_EVAL_JOURNAL": str(home / "journal.jsonl"),
           **{f"DDSM_{k}": v for k, v in SETTINGS.items()}}  # fmt: skip
    env.pop("CI", None)
    run = Run(env, home / "logs", home / "journal.jsonl", Repository(make_engine(url)))
    try:
        run.start_api()
        for _ in range(2):
            run.start_worker()
        if fault and fault.before:
            fault.before(run)
        time.sleep(3.0)  # the workers connect (their start is not what is measured)
        net, stats = ready(run.repo)
        with httpx.Client(base_url=run.url, headers={"X-API-Key": KEY}, timeout=30) as http:
            reply = http.post("/searches", json=search_body(net, stats, **SEARCH))
            assert reply.status_code == 201, reply.text
            run.search_id = reply.json()["id"]
        posted = time.monotonic()
        injected = fault is None or fault.inject is None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with suppress(Exception):
                if fault and fault.during:
                    fault.during(run)
                if not injected and fault is not None and fault.inject is not None and fault.when(run):
                    injected = True
                    fault.inject(run)
                    run.notes.insert(0, f"injected {time.monotonic() - posted:.1f} s after the post")
                search = run.repo.get_search(run.search_id)
                if search is not None and search.status not in (JobStatus.RUNNING, JobStatus.FINISHING):
                    break
            time.sleep(0.2)
        if fault and fault.during:  # late duplicates of finished candidates, too
            fault.during(run)
            time.sleep(3.0)
        if fault and fault.after:
            fault.after(run)
        return measure(run, name)
    finally:
        stop([p for p in [run.api, *run.workers] if p is not None])
        run.repo.engine.dispose()


def measure(run: Run, name: str) -> dict[str, Any]:
    search = run.repo.get_search(run.search_id)
    assert search is not None
    cands = run.candidates()
    finished = Counter(json.loads(line)["candidate"] for line in run.journal.read_text().splitlines())
    wall = ((search.ended_at or run.repo.now()) - search.created_at).total_seconds()
    return {
        "fault": name,
        "status": search.status.value,
        "candidates": len(cands),
        "not_complete": sum(c.state != CandidateState.COMPLETE for c in cands),
        "duplicate_rows": len(cands) - len({(c.phase, c.genome_hash) for c in cands}),
        "re_executed": sum(max(n - 1, 0) for n in finished.values()),
        "retried_attempts": sum(c.attempt - 1 for c in cands),
        "wall_s": wall,
        "front": front_of(front_points(search.result)) if search.result else [],
        "notes": "; ".join(run.notes),
    }


# ---------------------------------------------------------------------------- report
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--md", type=Path, default=ROOT / "bench" / "service_faults.md")
    p.add_argument("--faults", default="", help="comma-separated fault names (default: all)")
    p.add_argument("--baselines", type=int, default=2, help="runs without faults")
    args = p.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ddsm-faults-") as tmp:
        os.chmod(tmp, 0o755)  # the postgres user reaches its folder inside
        with own_services(Path(tmp)) as (pg, rd):
            chosen = [f for f in faults(pg, rd) if not args.faults or f.name in args.faults.split(",")]
            for fault in [None] * args.baselines + chosen:
                rows.append(run_one(fault, pg, rd, Path(tmp), len(rows)))
                print({k: v for k, v in rows[-1].items() if k != "front"}, flush=True)
    write_md(args, rows)


def write_md(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    base = [r for r in rows if r["fault"] == "none"]
    base_wall = sum(r["wall_s"] for r in base) / max(len(base), 1)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    load = os.getloadavg()
    lines = [
        "# Faults injected into a running search",
        "",
        f"- Command: `python bench/service_faults.py{' --faults ' + args.faults if args.faults else ''}`",
        f"- Machine: {platform.machine()}, {os.cpu_count()} logical CPUs (shared with other jobs; load "
        f"average at the end {load[0]:.1f}), Python {platform.python_version()}; date "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit {commit.stdout.strip()}",
        f"- Stack: own PostgreSQL and redis-server (restartable), API + controller (uvicorn), 2 Celery "
        f"workers, fast evaluator ({SETTINGS['FAST_EVAL_SECONDS']} s per candidate); search population "
        f"{SEARCH['population']} x {SEARCH['generations']} generations + finalists, seed {SEARCH['seed']}; "
        f"heartbeat {SETTINGS['HEARTBEAT_INTERVAL_S']} s (never-claimed resend after 2x), stale after "
        f"{SETTINGS['STALE_AFTER_S']} s, lease {SETTINGS['LEASE_TTL_S']} s. A fault is injected once the "
        "second generation is being evaluated (start-up: once the starting worker holds a message; "
        "poison and duplicates: all along).",
        "",
        "| fault | search | candidates | lost | duplicated | completed re-executed | retried attempts "
        "| wall (s) | extra delay (s) | front = no-fault front | what happened |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lost = (
            r["not_complete"] + max(base[0]["candidates"] - r["candidates"], 0) if base else r["not_complete"]
        )
        dup = r["duplicate_rows"]
        same = "yes" if base and r["front"] == base[0]["front"] else "NO"
        extra = f"{r['wall_s'] - base_wall:+.1f}" if r["fault"] != "none" else "-"
        lines.append(
            f"| {r['fault']} | {r['status']} | {r['candidates']} | {lost} | {dup} | {r['re_executed']} "
            f"| {r['retried_attempts']} | {r['wall_s']:.1f} | {extra} | {same} | {r['notes'] or '-'} |"
        )
    lines += [
        "",
        "How each is recovered: a worker killed before its claim leaves its message unacknowledged in Redis "
        "(given back only after the visibility timeout, a day): the controller sends a candidate that was "
        "sent but never claimed again once the eval queue is empty, after 2 x the heartbeat. A worker killed "
        "mid-candidate stops heartbeating: after `STALE_AFTER_S` the candidate gets a new attempt (the "
        "retried attempt in the table), never a second result. A poison worker fails before any claim, "
        "requeues the message with backoff and stops consuming after `WORKER_MAX_INFRA_FAILURES`. During a "
        "PostgreSQL restart the controller waits out the outage (`DB_OUTAGE_GRACE_S`), workers requeue "
        "what they could not claim and retry recording what they finished. A Redis restart loses every "
        "queued message (no persistence here): the never-claimed resend covers them. A new API takes over "
        "the searches when the old lease lapses (`LEASE_TTL_S`). Duplicates lose the compare-and-set claim "
        "and are dropped. Completed re-executed counts evaluations that ran to the end a second time for "
        "one candidate (the fast evaluator's journal), whatever the reason.",
        "",
        "Anchors (from their trackers, not run here): Optuna's heartbeat covers `Study.optimize` only, not "
        "ask-and-tell (optuna/optuna#3293), and trials of a crashed process stay RUNNING without it "
        "(optuna/optuna#2908); Ray Tune has repeated trials that had already run when an experiment was "
        "resumed (ray-project/ray#8647, and the grid-search repeat discussed in ray-project/ray#5773).",
    ]
    args.md.write_text("\n".join(lines + [""]))
    print(f"wrote {args.md}")


if __name__ == "__main__":
    main()
