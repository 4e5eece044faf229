"""The dashboard in a real browser: `ddsm up` (embedded SQLite + serverless broker, the fast evaluator)
driven by Playwright through the system's Chromium.

Skips with a reason when Playwright or Chromium is missing, except with CI=true, where it fails.
Every page runs with requests to any host but 127.0.0.1 blocked and recorded: a page that needs the
internet (a CDN) fails its test. ``DDSM_UI_SCREENSHOTS=docs/screenshots`` saves a PNG of each page.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from api.db.engine import make_engine
from api.db.repository import Repository
from api.processes import wait_healthy
from tests.support import poll, require

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("DDSM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]  # fmt: skip
KEY = "ui-test-key"
TABLE = {"widths": [0.25, 0.5, 0.75, 1.0], "gflops": [0.9, 2.1, 3.6, 5.5], "gflops_conv_linear": None}
SMALL = {"sampler": "ddim", "steps": 6, "population": 8, "generations": 3, "n_images": 4, "final_images": 8,
         "weight": 3.0, "mutation_rate": 0.15, "seed": 3}  # fmt: skip


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    url: str
    home: Path
    proc: subprocess.Popen[bytes]
    repo: Repository
    supernet_id: int = 0
    stats_id: int = 0
    searches: dict[str, int] = field(default_factory=dict)

    def http(self, key: bool = True) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": KEY} if key else {}, timeout=30)

    def start_search(self, name: str, **overrides: Any) -> int:
        body = {**SMALL, "name": name, "supernet_id": self.supernet_id, "reference_stats_id": self.stats_id}
        with self.http() as http:
            reply = http.post("/searches", json={**body, **overrides})
        assert reply.status_code == 201, reply.text
        return reply.json()["id"]

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
        value = poll(check, timeout)
        if value:
            return value
        log = (self.home / "up.log").read_text()[-3000:]
        raise AssertionError(f"timed out waiting for {what}; ddsm up log: {log}")

    def search(self, search_id: int) -> dict[str, Any]:
        with self.http() as http:
            return http.get(f"/searches/{search_id}").json()


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`ddsm up` with one worker, the fast evaluator, an API key, and a finished search to look at."""
    home = tmp_path_factory.mktemp("ddsm-ui")
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "ARTIFACT_STORE", "CI")}  # fmt: skip
    env.update({
        "DDSM_HOME": str(home), "DDSM_EVALUATOR": "fast", "DDSM_FAST_EVAL_SECONDS": "0.02",
        "DDSM_API_KEY": KEY, "DDSM_CONTROLLER_INTERVAL_S": "0.2", "DDSM_STALE_AFTER_S": "600",
        "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
    })  # fmt: skip
    port = free_port()
    cmd = [sys.executable, "-m", "api.cli", "up", "--port", str(port), "--workers", "1"]
    with open(home / "up.log", "ab") as log:
        # a session of its own: teardown ends `ddsm up` and the worker it started together
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    engine = None
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, timeout=90, proc=proc)
        engine = make_engine(f"sqlite:///{home / 'ddsm.sqlite'}")
        svc = Service(url, home, proc, Repository(engine))
        # a supernet and statistics rows as a worker leaves them (the fast evaluator reads only the table)
        svc.supernet_id = svc.repo.create_supernet("digits-tiny", "a" * 64, {})
        svc.repo.supernet_ready(svc.supernet_id, TABLE, {})
        svc.stats_id = svc.repo.create_reference_stats("digits", "digits", "domain", artifact_sha256="b" * 64)
        svc.searches = {
            "done": svc.start_search("finished search"),
            "other seed": svc.start_search("other seed", seed=11, generations=2),
        }
        for name, sid in svc.searches.items():
            svc.wait_for(
                f"search '{name}' to complete", lambda s=sid: svc.search(s)["status"] == "COMPLETE", 90
            )
        add_sample_grids(svc, svc.searches["done"])
        yield svc
    finally:
        _stop_group(proc)
        if engine is not None:
            engine.dispose()


def grid_png(seeds: int, blur: float, per_row: int | None = None) -> bytes:
    """A stand-in sample grid, laid out as a worker's (``per_row``, default ceil(sqrt(n)) images a row,
    one row per width for a training run's): a ring per seed, at
    the same place in every grid of the same seeds, blurred by ``blur`` (the fast evaluator draws no
    images; the real one writes such a PNG)."""
    import io
    import math

    import numpy as np
    from PIL import Image, ImageFilter

    per_row = per_row or math.ceil(math.sqrt(seeds))
    tiles = []
    for seed in range(per_row * math.ceil(seeds / per_row)):
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[:28, :28]
        cy, cx = rng.uniform(8, 20, size=2)
        ring = (np.abs(np.hypot(y - cy, x - cx) - rng.uniform(4, 8)) < 1.6) & (seed < seeds)
        tiles.append(np.where(ring, 255, 0).astype(np.uint8))
    rows = [np.concatenate(tiles[r : r + per_row], axis=1) for r in range(0, len(tiles), per_row)]
    image = Image.fromarray(np.concatenate(rows, axis=0)).filter(ImageFilter.GaussianBlur(blur))
    buf = io.BytesIO()
    image.resize((image.width * 2, image.height * 2), Image.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def add_sample_grids(svc: Service, search_id: int) -> None:
    """The finalists of a finished search as a worker with the real evaluator leaves them: a sample grid
    in the artifact store, named in the metrics."""
    from sqlalchemy import update

    from api.artifacts import SAMPLES_METRIC, ArtifactStore
    from api.db.models import Candidate
    from api.db.repository import encode_metrics

    store = ArtifactStore(str(svc.home / "artifacts"))
    finals = sorted(svc.repo.candidates(search_id, phase="final"), key=lambda c: -(c.gflops or 0))
    with svc.repo.engine.begin() as conn:
        for k, cand in enumerate(finals):  # the narrower, the blurrier
            grid = grid_png(min(16, cand.n_images), 0.6 * k)
            metrics = {**(cand.metrics or {}), SAMPLES_METRIC: store.put_bytes(grid)}
            conn.execute(
                update(Candidate).where(Candidate.id == cand.id).values(metrics=encode_metrics(metrics))
            )


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            time.sleep(0.5)  # let the worker in the same group finish its own shutdown
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "Playwright for Python (pip install -e '.[dev]')")
    require(Path(CHROMIUM).exists(), f"Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Browser:
    page: Any
    base: str
    outside: list[str]

    def goto(self, path: str) -> Any:
        self.page.goto(self.base + path)
        return self.page

    def screenshot(self, name: str) -> None:
        folder = os.environ.get("DDSM_UI_SCREENSHOTS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(folder) / f"{name}.png"))


@pytest.fixture
def ui(browser: Any, service: Service) -> Iterator[Browser]:
    """A fresh browser context (empty sessionStorage) at 1280x800 that may only reach 127.0.0.1."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    outside: list[str] = []
    errors: list[str] = []

    def only_local(route: Any) -> None:
        if urlparse(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(15_000)
    yield Browser(page, service.url, outside)
    context.close()
    assert not outside, f"the page asked for outside resources: {outside}"
    assert not errors, f"JavaScript errors: {errors}"
