"""POST /searches with classifier-free guidance: stored in the spec, checked against the supernet."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from ddsm_core.config import UNetConfig
from ddsm_core.costs import CostTable
from ddsm_core.spec import SearchSpec
from tests.support import local_settings

KEY = {"X-API-Key": "secret"}
TABLE = {"widths": [0.25, 0.5, 0.75, 1.0], "gflops": [1.0, 2.0, 3.0, 4.0], "gflops_conv_linear": None}
WIDTHS = (0.25, 0.5, 0.75, 1.0)


class Outbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[int, ...]]] = []

    def evaluate_candidate(self, candidate_id: int, attempt: int) -> None:
        self.sent.append(("evaluate", (candidate_id, attempt)))

    def train_supernet(self, run_id: int, attempt: int) -> None: ...
    def compute_reference_stats(self, stats_id: int) -> None: ...
    def inspect_supernet(self, supernet_id: int) -> None: ...


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = local_settings(tmp_path / "home", api_key="secret", run_controller=False)
    with TestClient(create_app(settings, dispatcher=Outbox())) as c:  # type: ignore[arg-type]
        yield c


def supernet(client: TestClient, **model: object) -> tuple[int, int]:
    """A COMPLETE supernet whose stored config is a digits model with ``model`` changes, and stats."""
    repo = client.app.state.repo  # type: ignore[attr-defined]
    config = {"model_config": UNetConfig.digits(widths=WIDTHS, **model).to_dict()}
    net = repo.create_supernet("net", "a" * 64, config)
    repo.supernet_ready(net, TABLE, config)
    stats = repo.create_reference_stats("digits", "digits", "domain", artifact_sha256="b" * 64)
    return net, stats


def body(net: int, stats: int, **kw: object) -> dict[str, object]:
    return {"supernet_id": net, "reference_stats_id": stats, "sampler": "ddim", "steps": 4, "population": 6,
            "generations": 1, "n_images": 4, "final_images": 8, **kw}  # fmt: skip


def test_a_guided_search_is_stored_with_its_guidance_and_counts_both_passes(client: TestClient) -> None:
    net, stats = supernet(client, num_classes=10, null_label=True)
    reply = client.post("/searches", json=body(net, stats, guidance=2.0, class_label=3), headers=KEY)
    assert reply.status_code == 201, reply.text
    config = reply.json()["config"]
    assert config["guidance"] == 2.0 and config["class_label"] == 3
    spec = SearchSpec.from_dict(config)
    table = CostTable.from_dict(TABLE)
    assert spec.gflops(spec.full_width_genome(), table) == 2 * 4 * 4.0  # 4 steps x 2 passes x 4 GFLOPs
    plain = client.post("/searches", json=body(net, stats), headers=KEY).json()["config"]
    assert plain["guidance"] is None and SearchSpec.from_dict(plain).passes == 1


@pytest.mark.parametrize(
    ("model", "change", "words"),
    [
        ({"num_classes": 10}, {"guidance": 2.0}, "null label"),
        ({}, {"guidance": 2.0}, "null label"),
        ({"num_classes": 10, "null_label": True}, {"guidance": -1.0}, "guidance"),
        ({"num_classes": 10, "null_label": True}, {"class_label": 10}, "out of range: 0..9"),
        ({}, {"class_label": 1}, "has no classes"),
    ],
)
def test_guidance_the_supernet_cannot_take_is_a_422(
    client: TestClient, model: dict[str, object], change: dict[str, object], words: str
) -> None:
    net, stats = supernet(client, **model)
    reply = client.post("/searches", json=body(net, stats, **change), headers=KEY)
    assert reply.status_code == 422, reply.text
    assert words in reply.text
