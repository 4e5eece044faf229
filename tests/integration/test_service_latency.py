"""Latency tables on the real stack: a Celery worker measures a registered supernet's table (its own
device, dtype and threads), and a search with objective latency minimises that table's prediction,
its workers recording the predicted latency and the cost with every candidate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from .conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def tiny_checkpoint(folder: Path) -> Path:
    from ddsm_core.checkpoint import write_checkpoint
    from ddsm_core.config import UNetConfig
    from ddsm_core.schedules import NoiseSchedule
    from ddsm_core.unet import SlimmableUNet

    cfg = UNetConfig.digits(model_channels=16, num_res_blocks=1, widths=(0.5, 0.75, 1.0))
    state = SlimmableUNet(cfg).state_dict()
    write_checkpoint(folder / "ckpt", step=1, model_config=cfg, schedule=NoiseSchedule.linear().to_dict(),
                     model_state=state, ema_state=state)  # fmt: skip
    return folder / "ckpt"


def test_a_worker_measures_a_latency_table_and_a_latency_search_uses_it(
    stack_factory: Callable[..., Stack], tmp_path: Path
) -> None:
    from ddsm_core.fid import FeatureStats
    from ddsm_core.latency import LatencyTable
    from ddsm_core.spec import SearchSpec

    roots = tmp_path / "roots"
    checkpoint = tiny_checkpoint(roots)
    # the fast evaluator: the search's FIDs are stand-ins; the latency table and its use are real
    rng = np.random.default_rng(0)
    FeatureStats(rng.normal(size=4), np.eye(4), "fast", n=10).save(roots / "stats.npz")
    stack = stack_factory(n_workers=1, device="cpu", checkpoint_roots=str(roots), evaluator="fast")
    with stack.client() as http:
        net = http.post("/supernets", json={"name": "tiny", "checkpoint_path": str(checkpoint)}).json()
        net = stack.wait_status(http, f"/supernets/{net['id']}")
        reply = http.post(f"/supernets/{net['id']}/latency-tables",
                          json={"batch_sizes": [1, 4], "repeats": 2, "warmup": 1})  # fmt: skip
        assert reply.status_code == 202, reply.text
        row = stack.wait_status(http, f"/supernets/{net['id']}/latency-tables/{reply.json()['id']}")
        table = LatencyTable.from_dict(row["table"])
        assert row["device"] == table.device and table.device.startswith("cpu: ")
        assert row["threads"] == table.threads == 1  # the worker's default: one torch thread
        assert table.widths == (0.5, 0.75, 1.0) and table.batch_sizes == (1, 4)
        assert set(table.overhead) == {"ddpm", "ddim", "edm", "dpmpp"} and row["worker"]
        assert table.model["checkpoint_sha256"] == net["artifact_sha256"]
        assert all(s > 0 for r in table.seconds for s in r)

        stats = http.post("/reference-stats", json={"name": "s", "dataset": "digits",
                                                    "path": str(roots / "stats.npz")}).json()  # fmt: skip
        body = {"supernet_id": net["id"], "reference_stats_id": stats["id"], "objective": "latency",
                "sampler": "ddim", "steps": 3, "population": 4, "generations": 1, "n_images": 4,
                "final_images": 4, "batch_size": 4}  # fmt: skip
        search = http.post("/searches", json=body)
        assert search.status_code == 201, search.text
        assert search.json()["latency_table_id"] == row["id"]
        done = stack.wait_status(http, f"/searches/{search.json()['id']}")
        report = http.get(f"/searches/{done['id']}/report").json()
    fields = SearchSpec.__dataclass_fields__
    spec = SearchSpec.from_dict({k: v for k, v in report["config"].items() if k in fields})
    for record in report["final"].values():
        assert record["predicted_latency_s"] == pytest.approx(spec.latency(tuple(record["genome"]), table))
        assert record["cost"] == pytest.approx(1e3 * record["predicted_latency_s"]) and record["gflops"] > 0
    pick = report["pick"]
    assert pick["objectives"][1] == pytest.approx(1e3 * spec.latency(tuple(pick["genome"]), table))
    assert report["latency_table"]["device"] == table.device
