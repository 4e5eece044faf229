"""The main job end to end on the real stack, compared with `ddsm search` run locally.

Over REST: train a tiny digits supernet on a worker, compute reference statistics on a worker, run a
small search on two workers. Then the same search runs in this process through ``ddsm search``'s code
with the same checkpoint, statistics and seeds: the Pareto fronts must agree. The same holds for a
multi-fidelity search (rungs as worker tasks vs ``ddsm search --rungs``).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from api.artifacts import ArtifactStore

from .conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEARCH = {
    "sampler": "ddim",
    "steps": 4,
    "population": 8,
    "generations": 2,
    "n_images": 32,
    "final_images": 64,
    "weight": 2.0,
    "seed": 1,
    "eval_seed": 100,
    "batch_size": 32,
    "mutation_rate": 0.1,
    "crossover": "one_point",
}
RUNGS = {**SEARCH, "rungs": [8, 16], "promote": 0.5, "rung_metric": "paired"}  # (the default)
TRAIN = {"steps": 6, "batch_size": 16, "checkpoint_every": 3, "sample_every": 0, "eval_every": 0,
         "log_every": 2, "eval_images": 16}  # fmt: skip
TINY = {"model_channels": 32, "num_groups": 8, "num_res_blocks": 1}  # seconds per step on a busy CPU


def test_search_over_rest_gives_the_same_front_as_ddsm_search_locally(
    stack_factory: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = stack_factory(n_workers=2, device="cpu")
    with stack.client() as http:
        run = http.post(
            "/training-runs", json={"name": "tiny", "preset": "digits", "train": TRAIN, "model": TINY}
        )
        assert run.status_code == 202, run.text
        stats = http.post("/reference-stats", json={"name": "digits", "dataset": "digits"}).json()
        run = stack.wait_status(http, f"/training-runs/{run.json()['id']}")
        assert run["step"] == TRAIN["steps"] and run["progress"] == 100
        net = stack.wait_status(http, f"/supernets/{run['supernet_id']}")
        stats = stack.wait_status(http, f"/reference-stats/{stats['id']}")
        search = http.post(
            "/searches", json={"supernet_id": net["id"], "reference_stats_id": stats["id"], **SEARCH}
        )
        assert search.status_code == 201, search.text
        done = stack.wait_status(http, f"/searches/{search.json()['id']}", timeout=300)

        report = http.get(f"/searches/{done['id']}/report").json()
        rungs = http.post(
            "/searches", json={"supernet_id": net["id"], "reference_stats_id": stats["id"], **RUNGS}
        )
        assert rungs.status_code == 201, rungs.text
        rungs_done = stack.wait_status(http, f"/searches/{rungs.json()['id']}", timeout=300)
        rungs_report = http.get(f"/searches/{rungs_done['id']}/report").json()
        grids = {w: http.get(f"/searches/{done['id']}/samples/{w}.png") for w in ("pick", "knee", "full")}
        curves = http.get(f"/training-runs/{run['id']}/losses").json()

    from ddsm_core.cli.search_cmd import search_to_folder
    from ddsm_core.spec import SearchSpec

    store = ArtifactStore(stack.env["ARTIFACT_STORE"])
    checkpoint = store.get_dir(net["artifact_sha256"], tmp_path / "ckpt")
    stats_file = store.get_file(stats["artifact_sha256"], tmp_path / "stats.npz")
    local = search_to_folder(
        checkpoint, tmp_path / "local", SearchSpec(**SEARCH), stats=stats_file, progress=False,
        n_sample_images=8,
    )  # fmt: skip
    remote_front = [(p["genome"], p["fid"], p["gflops"]) for p in done["front"]]
    local_front = [(c["genome"], *c["objectives"]) for c in local["front"]]
    assert [g for g, _, _ in remote_front] == [g for g, _, _ in local_front]
    for (_, fid_r, cost_r), (_, fid_l, cost_l) in zip(remote_front, local_front, strict=True):
        assert math.isclose(fid_r, fid_l, rel_tol=1e-6) and math.isclose(cost_r, cost_l, rel_tol=1e-9)
    result = done["result"]
    assert result["pick"]["genome"] == local["pick"]["genome"]
    assert result["weighted_pick"]["genome"] == local["weighted_pick"]["genome"]
    assert math.isclose(result["final"]["pick"]["fid"], local["final"]["pick"]["fid"], rel_tol=1e-6)
    assert result["final"]["pick"]["n_images"] == SEARCH["final_images"]
    # both executors sampled the finalists from the seeds after the search's (held out), so their FIDs
    # and paired intervals agree
    assert result["seeds"] == local["seeds"] == {"search": [100, 131], "final": [132, 195], "held_out": True}
    # the worker recorded the real-data floors with the statistics; the finalists' workers kept their
    # features, so the report pairs pick and knee with full width, as `ddsm search` does
    assert stats["floors"] and report["floors"] == stats["floors"] and local["floors"]
    assert set(report["paired"]) == set(local["paired"]) == {"pick", "weighted", "knee"}
    assert result["paired"] == report["paired"] and result["floors"] == report["floors"]
    # the tolerance pick (the default): the service sent the bisection's probes as finalist tasks and
    # decided each on the features its workers stored, as `ddsm search` did on its own
    assert result["pick_rule"] == local["pick_rule"] == "tolerance" and result["bisection"]["probes"]
    assert [(p["genome"], p["equal_quality"]) for p in result["bisection"]["probes"]] == [
        (p["genome"], p["equal_quality"]) for p in local["bisection"]["probes"]
    ]
    assert all(p["paired"] is not None for p in result["bisection"]["probes"])
    # the same results.json, apart from where it ran, timings, paths and float noise between processes
    assert comparable(report) == comparable(local)
    # multi-fidelity: the rungs ran as worker tasks and ended where `ddsm search --rungs` ends
    local_rungs = search_to_folder(
        checkpoint, tmp_path / "local-rungs", SearchSpec(**RUNGS), stats=stats_file, progress=False,
        n_sample_images=8,
    )  # fmt: skip
    assert [p["genome"] for p in rungs_done["front"]] == [c["genome"] for c in local_rungs["front"]]
    assert rungs_done["result"]["pick"]["genome"] == local_rungs["pick"]["genome"]
    assert [r["n_images"] for r in rungs_report["cost"]["rungs"]] == [*RUNGS["rungs"], RUNGS["n_images"]]
    assert comparable(rungs_report) == comparable(local_rungs)
    # each finalist's worker drew its sample grid (4 x 4, the same seeds for all) and the trainer's
    # worker uploaded its loss log (one record every log_every steps; the sandwich rule trains the
    # narrowest and the full width at every step, the middle widths drawn at random)
    for which, reply in grids.items():
        assert reply.status_code == 200 and reply.headers["content-type"] == "image/png", which
        with Image.open(io.BytesIO(reply.content)) as image:
            assert image.width == image.height
    if result["final"]["pick"]["genome"] != result["final"]["full"]["genome"]:
        assert grids["pick"].content != grids["full"].content
    widths = [f"{w:g}" for w in net["gflops"]["widths"]]
    assert curves["steps"] == [2, 4, 6] and set(curves["losses"]) <= set(widths)
    assert all(None not in curves["losses"][w] for w in (widths[0], widths[-1]))


TIMINGS = ("seconds", "latency_s", "search_wall_s", "total_wall_s", "reused_fraction",
           "search_network_calls_run", "device")  # fmt: skip


def comparable(results: dict[str, Any]) -> Any:
    """results.json without the run section, timings and paths; floats rounded to 6 digits. Compared as
    JSON (what results.json is on disk), so a tuple and a list or an int and a str key are the same."""
    results = json.loads(json.dumps(results))

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in TIMINGS}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return float(f"{value:.6g}") if isinstance(value, float) else value

    out = {k: v for k, v in results.items() if k != "run"}
    out["config"] = {k: v for k, v in out["config"].items() if k not in ("checkpoint", "stats")}
    return clean(out)
