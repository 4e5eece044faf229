"""``ddsm demo``: the README's main job on the embedded service, over REST.

1. start the service on this machine (API + controller + one worker; SQLite, a serverless broker and a
   local artifact folder under ``--home``), unless ``--url`` names a running one;
2. train a digits supernet on the worker (or reuse the one a previous demo trained, or follow a training
   run a previous demo left unfinished or interrupted: it resumes from its last checkpoint);
3. compute the digits reference statistics (domain feature extractor) on the worker, or reuse them;
4. start a search over REST and follow it with a progress bar;
5. print the Pareto front and the pick's GFLOPs saving and FID next to the full width's, and write the
   report (results.json, report.md, pareto.png, strategy.png, samples.png) to ``--out``.

This process imports no torch except for the optional sample grid at the end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from api.processes import start_api_process, start_worker_process, stop, wait_healthy
from ddsm_core.errors import DDSMError
from ddsm_core.spec import DEFAULTS, SAMPLER_HELP, SearchSpec

SUPERNET_NAME = "digits-demo"
# The benchmark recipe (1.0 M parameters, batch 128, constant LR) stopped early: its LR does not depend
# on the step count, so the demo's supernet is the benchmark run's state at DEMO_TRAIN_STEPS. Per
# CPU-second it is much closer to the data than the 4 M-parameter `digits` preset (bench/service_demo.md).
DEMO_PRESET = "digits-bench"
DEMO_TRAIN_STEPS = 800
# Sample grids on the training page (the benchmark recipe draws none), every this many steps.
DEMO_SAMPLE_EVERY = 400
STATS_NAME = "digits"
# A running training run's worker beats every few seconds: silence beyond this is worth a word on the bar.
STALE_NOTICE_S = 20.0
# The search uses `ddsm search`'s defaults (one source of truth); the supernet DEMO_TRAIN_STEPS above.
DEMO = {**DEFAULTS.to_dict(), "images": DEFAULTS.n_images}
# Rates measured on an idle 2-core machine (bench/service_demo.md): the overall estimate printed at the
# start scales them by the requested work. Training: ~1.5 steps/s; search: ~2 min for the defaults.
TRAIN_S_PER_STEP = 0.65
SEARCH_S_DEFAULT = 130.0
OVERHEAD_S = 30.0  # service start, reference statistics, report


class DemoError(DDSMError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bar(total: float, desc: str, unit: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)


class Service:
    """A REST client of the service, and the processes this demo started (stopped on exit)."""

    def __init__(self, url: str | None, home: Path, workers: int, train_threads: int) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stale_after_s: float | None = None  # the controller's, when this demo started the service
        if url is None:
            from api.settings import Settings

            self.stale_after_s = Settings().stale_after_s
            home = home.resolve()
            logs = home / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            env = {"DDSM_HOME": str(home)}
            port = _free_port()
            url = f"http://127.0.0.1:{port}"
            typer.echo(
                f"starting the service in {home} (API {url}, a training worker and {workers} evaluation "
                f"workers; logs in {logs})"
            )
            self.procs.append(start_api_process(port, env, log=logs / "api.log"))
            wait_healthy(url, timeout=120, proc=self.procs[0])
            # one training worker (all its threads: it runs alone before the search) and `workers`
            # evaluation workers with one thread each (parallel candidates, no oversubscription)
            train_env = {**env, "DDSM_TORCH_THREADS": str(train_threads)}
            self.procs.append(start_worker_process(train_env, queues="train", log=logs / "trainer.log"))
            self.procs += [
                start_worker_process(env, queues="eval", log=logs / f"worker{i}.log") for i in range(workers)
            ]
        key = os.environ.get("DDSM_API_KEY")
        self.http = httpx.Client(base_url=url, timeout=60, headers={"X-API-Key": key} if key else {})

    def get(self, path: str) -> Any:
        return self._ok(self._send("GET", path))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._ok(self._send("POST", path, json=body))

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **kw)
        except httpx.TransportError as exc:  # a wrong --url, or the service went away
            raise DemoError(f"cannot reach the service at {self.http.base_url}: {exc}") from None

    @staticmethod
    def _ok(reply: httpx.Response) -> Any:
        if reply.status_code >= 400:
            raise DemoError(
                f"{reply.request.method} {reply.request.url.path}: {reply.status_code} {_detail(reply)}"
            )
        return reply.json()

    def wait(self, path: str, what: str, poll: float = 1.0) -> dict[str, Any]:
        while True:
            row = self.get(path)
            if row["status"] == "COMPLETE":
                return row
            if row["status"] in ("FAILED", "CANCELLED"):
                raise DemoError(f"{what} {row['status']}: {row.get('error')}")
            self._check_processes()
            time.sleep(poll)

    def _check_processes(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise DemoError(f"a service process exited with status {proc.returncode}; see the logs")

    def close(self) -> None:
        self.http.close()
        stop(self.procs)


def _detail(reply: httpx.Response) -> str:
    """The service's message of a 4xx (FastAPI's ``detail``: a string or a list of field errors)."""
    try:
        detail = reply.json().get("detail")
    except ValueError:
        return reply.text.strip().replace("\n", " ")
    if isinstance(detail, list):
        return "; ".join(f"{'.'.join(map(str, d.get('loc', [])[1:]))}: {d.get('msg')}" for d in detail)
    return str(detail)


UNFINISHED = ("PENDING", "RUNNING", "INTERRUPTED")


def waiting_reason(run: dict[str, Any], stale_after_s: float | None) -> str:
    """Why a training run makes no progress, for the bar ('' while it trains)."""
    status, age = run["status"], run.get("heartbeat_age_s")
    if status == "INTERRUPTED":
        return f"interrupted at step {run['step']}: waiting for the controller to send it again"
    if status == "PENDING":
        resume = f" (resumes from step {run['step']})" if run.get("last_checkpoint_sha256") else ""
        return f"waiting for a training worker{resume}"
    if status == "RUNNING" and age is not None and age > STALE_NOTICE_S:
        limit = f"; handed to another worker after {stale_after_s:.0f} s" if stale_after_s else ""
        return f"waiting for a stale worker: no heartbeat for {age:.0f} s{limit}"
    if status == "RUNNING" and run.get("total_steps") and run["step"] >= run["total_steps"]:
        return "final per-width evaluation, sample grids and checkpoint"
    return ""


def supernet(svc: Service, train_steps: int | None, retrain: bool, checkpoint: Path | None) -> dict[str, Any]:
    """A COMPLETE digits supernet: registered from ``checkpoint``, reused, or trained (following an
    unfinished run if there is one)."""
    if checkpoint is not None:
        net = svc.post("/supernets", {"name": SUPERNET_NAME, "checkpoint_path": str(checkpoint.resolve())})
        typer.echo(f"registered {checkpoint} as supernet {net['id']}; a worker checks it and counts GFLOPs")
        return svc.wait(f"/supernets/{net['id']}", "supernet check")
    if not retrain:
        for net in reversed(svc.get("/supernets")):
            if net["name"] == SUPERNET_NAME and net["status"] == "COMPLETE":
                typer.echo(f"reusing supernet {net['id']} (trained earlier; --retrain to train again)")
                return net
    runs = [r for r in svc.get("/training-runs") if r["name"] == SUPERNET_NAME and r["status"] in UNFINISHED]
    if runs and not retrain:
        run = runs[-1]
        typer.echo(f"following training run {run['id']} left unfinished (resumes from its last checkpoint)")
    else:
        body = {
            "name": SUPERNET_NAME,
            "preset": DEMO_PRESET,
            "train": {"steps": train_steps or DEMO_TRAIN_STEPS, "sample_every": DEMO_SAMPLE_EVERY},
        }
        run = svc.post("/training-runs", body)
    bar = _bar(run["total_steps"] or train_steps or DEMO_TRAIN_STEPS, "train supernet", "step")
    while run["status"] not in ("COMPLETE", "FAILED", "CANCELLED"):
        svc._check_processes()
        time.sleep(1.0)
        run = svc.get(f"/training-runs/{run['id']}")
        bar.total = run["total_steps"] or bar.total
        bar.update(run["step"] - bar.n)
        bar.set_postfix_str(waiting_reason(run, svc.stale_after_s), refresh=False)
    bar.update(bar.total - bar.n) if run["status"] == "COMPLETE" else None
    bar.close()
    if run["status"] != "COMPLETE":
        raise DemoError(f"training run {run['id']} {run['status']}: {run.get('error')}")
    return svc.wait(f"/supernets/{run['supernet_id']}", "supernet check")


def estimate_s(spec: SearchSpec, train_steps: int | None, training: bool) -> float:
    """Seconds the demo should take on 2 idle CPU cores: training (if any) plus the search, scaled
    from the measured defaults by steps x candidates x images (finalists included)."""
    work = spec.steps * (spec.population * spec.generations * spec.n_images + 3 * spec.final_images)
    default_work = DEFAULTS.steps * (
        DEFAULTS.population * DEFAULTS.generations * DEFAULTS.n_images + 3 * DEFAULTS.final_images
    )
    train = (train_steps or DEMO_TRAIN_STEPS) * TRAIN_S_PER_STEP if training else 0.0
    return train + SEARCH_S_DEFAULT * work / default_work


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{max(seconds, 1):.0f} s"


def phase(k: int, text: str) -> None:
    typer.echo(f"[{k}/4] {text}")


def local_checkpoint(home: Path, sha: str) -> Path:
    """The supernet's checkpoint folder on this machine (fetched from the artifact store if needed)."""
    from api.artifacts import ArtifactStore
    from api.settings import Settings

    os.environ.setdefault("DDSM_HOME", str(home))
    settings = Settings()
    return ArtifactStore(settings.resolved_artifact_store()).get_dir(
        sha, settings.resolved_worker_cache() / "checkpoints" / sha
    )


def check_inputs(
    spec: SearchSpec, checkpoint: Path | None, workers: int, train_threads: int, train_steps: int | None
) -> None:
    """Everything the demo was given, checked before any process starts."""
    from ddsm_core.checkpoint import read_manifest
    from ddsm_core.checks import check_checkpoint, check_min
    from ddsm_core.config import UNetConfig

    check_min("--workers", workers, 1)
    check_min("--train-threads", train_threads, 0)
    check_min("--train-steps", train_steps, 1)
    if checkpoint is not None:
        # verified (sha256 of its files): the service would refuse a corrupt one after starting
        widths = read_manifest(check_checkpoint(checkpoint), verify=True)["model_config"].get("widths")
    else:
        widths = UNetConfig.from_preset(DEMO_PRESET).widths
    if widths:
        spec.bind(widths)  # what POST /searches would refuse (a population too small for the widths)


def reference_stats(svc: Service) -> dict[str, Any]:
    """Reused, or started on an evaluation worker (it runs while the supernet trains)."""
    for stats in reversed(svc.get("/reference-stats")):
        if stats["name"] == STATS_NAME and stats["status"] in ("COMPLETE", "PENDING"):
            return stats
    typer.echo("computing reference statistics of the digits training images (domain feature extractor)")
    return svc.post("/reference-stats", {"name": STATS_NAME, "dataset": "digits", "extractor": "auto"})


def follow_search(svc: Service, search: dict[str, Any]) -> dict[str, Any]:
    bar = _bar(100.0, "search", "%")
    while search["status"] not in ("COMPLETE", "FAILED", "CANCELLED"):
        svc._check_processes()
        time.sleep(1.0)
        search = svc.get(f"/searches/{search['id']}")
        p = search["progress"]
        bar.n = round(p["percent"], 1)
        phase = (
            "finalists"
            if search["status"] == "FINISHING"
            else f"gen {p['generations_done']}/{p['generations']}"
        )
        bar.set_postfix_str(f"{phase}, {p['candidates']['COMPLETE']} evaluated")
    bar.n = 100.0 if search["status"] == "COMPLETE" else bar.n
    bar.close()
    if search["status"] != "COMPLETE":
        raise DemoError(f"search {search['id']} {search['status']}: {search.get('error')}")
    return search


def print_summary(results: dict[str, Any]) -> None:
    from ddsm_core.strategy import Strategy

    cfg = results["config"]
    label = f"FID ({results['extractor']})"
    typer.echo(f"\nPareto front ({cfg['n_images']} images per candidate; widths per step, noisiest first):")
    typer.echo(f"  {'GFLOPs/image':>12}  {label:>28}  strategy")
    for point in results["front"]:
        strategy = Strategy(cfg["sampler"], cfg["steps"], tuple(cfg["widths"]), tuple(point["genome"]))
        fid, gflops = point["objectives"]
        typer.echo(f"  {gflops:12.4f}  {fid:28.3f}  {strategy.describe()}")
    pick, full = results["final"]["pick"], results["final"]["full"]
    saving = 1.0 - pick["gflops"] / full["gflops"]
    bisection = results.get("bisection")
    if bisection:
        rule = (
            f"the cheapest front member of equal quality: paired interval vs full width within "
            f"{100 * bisection['rel_tolerance']:g}% of its FID, {len(bisection['probes'])} probe(s)"
        )
    else:
        rule = f"argmin FID + {cfg['weight']} x GFLOPs"
    typer.echo(f"\nPick ({rule}), re-evaluated with {cfg['final_images']} images:")
    typer.echo(f"  {pick['strategy']}")
    typer.echo(
        f"  GFLOPs/image {pick['gflops']:.4f} vs {full['gflops']:.4f} at full width: "
        f"{100 * saving:.1f}% saved"
    )
    typer.echo(f"  {label}: {_fid(pick)} (pick) vs {_fid(full)} (full width)")
    weighted = results["final"].get("weighted")
    if weighted:  # beside it, the weighted pick (which follows the search's small-sample noise)
        typer.echo(
            f"  weighted pick (argmin FID + {cfg['weight']} x GFLOPs): {weighted['strategy']}, "
            f"{100 * (1.0 - weighted['gflops'] / full['gflops']):.1f}% saved, {label} {_fid(weighted)}"
        )


def _fid(record: dict[str, Any]) -> str:
    return "failed" if record.get("fid") is None else f"{record['fid']:.3f}"


def sample_grid(svc_home: Path, results: dict[str, Any], supernet_sha: str, out: Path) -> None:
    """64 samples at full width and with the pick, from the finalists' seeds (needs torch and the local
    artifact store)."""
    from ddsm_core.checkpoint import load_checkpoint
    from ddsm_core.evaluate import sample_images
    from ddsm_core.report import plot_samples
    from ddsm_core.results import final_seeds
    from ddsm_core.strategy import Strategy

    model, schedule, _ = load_checkpoint(local_checkpoint(svc_home, supernet_sha))
    cfg = results["config"]
    first = final_seeds(results)[0]
    seeds = list(range(first, first + 64))
    panels = {}
    for name in ("full", "pick"):
        rec = results["final"][name]
        strategy = Strategy(cfg["sampler"], cfg["steps"], tuple(cfg["widths"]), tuple(rec["genome"]))
        panels[f"{name}, FID {_fid(rec)}"] = sample_images(model, schedule, strategy, seeds, 64)[0]
    plot_samples(out / "samples.png", panels)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def demo(
    out: Annotated[Path, typer.Option(help="Report folder.")] = Path("runs/demo"),
    home: Annotated[Path, typer.Option(help="Embedded service folder (DDSM_HOME).")] = Path(".ddsm"),
    url: Annotated[str | None, typer.Option(help="Use this running service instead of starting one.")] = None,
    workers: Annotated[int, typer.Option(help="Evaluation worker processes (one torch thread each).")] = 2,
    train_threads: Annotated[
        int,
        typer.Option(
            help="torch threads of the training worker (0 = all cores; 1 is safest on a shared CPU)."
        ),
    ] = 1,
    train_steps: Annotated[
        int | None,
        typer.Option(help=f"Supernet training steps of the {DEMO_PRESET} recipe [{DEMO_TRAIN_STEPS}]."),
    ] = None,
    retrain: Annotated[bool, typer.Option(help="Train a new supernet even if one exists.")] = False,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Use this trained checkpoint (folder) instead of training one.")
    ] = None,
    sampler: Annotated[str, typer.Option(help=f"{SAMPLER_HELP}.")] = DEMO["sampler"],
    steps: Annotated[int, typer.Option(help="Sampler steps.")] = DEMO["steps"],
    population: Annotated[int, typer.Option(help="NSGA-II population (paper: 50).")] = DEMO["population"],
    generations: Annotated[int, typer.Option(help="Generations (paper: 10).")] = DEMO["generations"],
    images: Annotated[int, typer.Option(help="Images per candidate.")] = DEMO["images"],
    final_images: Annotated[int, typer.Option(help="Images per finalist.")] = DEMO["final_images"],
    weight: Annotated[
        float,
        typer.Option(help="Weighted pick, shown beside the tolerance pick: argmin FID + weight x GFLOPs."),
    ] = DEMO["weight"],
    seed: Annotated[int, typer.Option(help="Seed of NSGA-II.")] = 0,
) -> None:
    """The main job: train (or reuse) a digits supernet, reference statistics, a search over REST with a
    progress bar, then the front, the pick's GFLOPs saving and FID, and the report."""
    started = time.monotonic()
    # every input is checked here: a mistake is one line before any process starts
    from ddsm_core.checks import spec_errors_as_options

    with spec_errors_as_options():
        spec = DEFAULTS.replace(
            sampler=sampler, steps=steps, population=population, generations=generations, n_images=images,
            final_images=final_images, weight=weight, seed=seed,
        )  # fmt: skip
        check_inputs(spec, checkpoint, workers, train_threads, train_steps)
    training = checkpoint is None
    typer.echo(
        f"ddsm demo: about {_minutes(OVERHEAD_S + estimate_s(spec, train_steps, training))} in all on 2 "
        "idle CPU cores "
        f"({'training a supernet, then ' if training else ''}a search of {population} x {generations} "
        f"candidates; a supernet trained before is reused). Report -> {out}"
    )
    signal.signal(signal.SIGTERM, _interrupt)  # stop the service processes on `kill` too
    if checkpoint is not None and url is None:  # the service started here registers it from its folder
        roots = [os.environ.get("DDSM_CHECKPOINT_ROOTS", ""), str(checkpoint.resolve())]
        os.environ["DDSM_CHECKPOINT_ROOTS"] = os.pathsep.join(r for r in roots if r)
    phase(1, "service" if url is None else f"service at {url}")
    svc = Service(url, home, workers, train_threads)
    try:
        stats = reference_stats(svc)
        recipe = f" ({DEMO_PRESET} recipe, {train_steps or DEMO_TRAIN_STEPS} steps)"
        phase(2, "supernet" + (f" from {checkpoint}" if checkpoint else recipe))
        net = supernet(svc, train_steps, retrain, checkpoint)
        if url is None:
            where = local_checkpoint(home.resolve(), net["artifact_sha256"])
            typer.echo(f"supernet {net['id']}: checkpoint {where} (use it with --checkpoint)")
        else:
            typer.echo(f"supernet {net['id']}: artifact {net['artifact_sha256']} in the service's store")
        stats = svc.wait(f"/reference-stats/{stats['id']}", "reference statistics")
        phase(3, f"search, about {_minutes(estimate_s(spec, None, False))}")
        body = {"name": "demo", "supernet_id": net["id"], "reference_stats_id": stats["id"],
                "sampler": sampler, "steps": steps, "population": population, "generations": generations,
                "n_images": images, "final_images": final_images, "weight": weight, "seed": seed,
                "crossover": "one_point"}  # fmt: skip
        search = svc.post("/searches", body)
        typer.echo(f"search {search['id']}: {population} x {generations} generations, {images} images each")
        search = follow_search(svc, search)
        results = svc.get(f"/searches/{search['id']}/report")
    finally:
        svc.close()
    from api.report import write_search_report

    phase(4, f"report -> {out}")
    report = write_search_report(out, results)
    try:
        sample_grid(home, results, net["artifact_sha256"], out)
    except Exception as exc:  # the grid is a nicety: the report is complete without it
        typer.echo(f"(no sample grid: {exc})")
    print_summary(results)
    typer.echo(f"\nreport: {report}  ({time.monotonic() - started:.0f} s in all)")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
