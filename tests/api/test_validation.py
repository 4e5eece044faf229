"""Request validation at POST, on SQLite and Postgres: every field typed and bounded, so bad input is a
422 naming the field, never a 500 and never accepted to fail later on a worker; the bounds are the
spec's (the CLI checks the same). Runs without torch (tests/api/test_without_torch.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.db.engine import upgrade
from api.db.repository import MAX_ID, Repository
from api.schemas import ModelOverrides, SearchCreate, TrainOverrides
from ddsm_core.errors import ConfigError
from ddsm_core.spec import MAX_CANDIDATES, MAX_WIDTHS, SEED_MAX, SearchSpec
from tests.support import local_settings

KEY = {"X-API-Key": "secret"}
TABLE = {"widths": [0.25, 0.5, 0.75, 1.0], "gflops": [1.0, 2.0, 3.0, 4.0], "gflops_conv_linear": None}


class Outbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.sent.append((name, args))


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    upgrade(db_url)
    (tmp_path / "roots").mkdir()
    settings = local_settings(tmp_path / "home", database_url=db_url, run_controller=False, api_key="secret",
                              checkpoint_roots=str(tmp_path / "roots"))  # fmt: skip
    with TestClient(create_app(settings, dispatcher=Outbox())) as c:  # type: ignore[arg-type]
        yield c


def repo_of(client: TestClient) -> Repository:
    return client.app.state.repo  # type: ignore[attr-defined]


def ready(client: TestClient) -> tuple[int, int]:
    repo = repo_of(client)
    net = repo.create_supernet("net", "a" * 64, {})
    repo.supernet_ready(net, TABLE, {})
    stats = repo.create_reference_stats("digits", "digits", "domain", artifact_sha256="b" * 64)
    return net, stats


def search_body(net: int, stats: int, **kw: object) -> dict[str, object]:
    body = {"supernet_id": net, "reference_stats_id": stats, "steps": 4, "population": 6, "generations": 2,
            "n_images": 4, "final_images": 8}  # fmt: skip
    return {**body, **kw}


def refused(reply: Any, field: str) -> str:
    """The 422's message about ``field`` (a field of the body, or the body as a whole)."""
    assert reply.status_code == 422, reply.text
    detail = reply.json()["detail"]
    assert isinstance(detail, list), detail
    where = [d for d in detail if field in d["loc"] or (field == "body" and d["loc"] == ["body"])]
    assert where, detail
    return where[0]["msg"]


# ------------------------------------------------------------------------------------- searches
@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"seed": SEED_MAX + 1}, "seed", "less than or equal"),
        ({"eval_seed": -5}, "eval_seed", "greater than or equal to 0"),
        ({"eval_seed": SEED_MAX - 2}, "body", "eval_seed + n_images - 1"),
        # the finalists' seeds follow the search's by default: they must fit too
        ({"eval_seed": SEED_MAX - 8}, "body", "eval_seed + n_images (its default) + final_images - 1"),
        ({"final_seed": SEED_MAX - 3}, "body", "final_seed + final_images - 1"),
        ({"final_seed": SEED_MAX + 1}, "final_seed", "less than or equal"),
        ({"final_seed": -1}, "final_seed", "greater than or equal to 0"),
        ({"final_seed": "5"}, "final_seed", "integer"),
        ({"widths": [0.5, 0.5, 1.0]}, "widths", "duplicate"),
        ({"widths": [0.0, 1.0]}, "widths", "greater than 0"),
        ({"widths": [0.5, 1.5]}, "widths", "less than or equal to 1"),
        ({"widths": [0.5] * (MAX_WIDTHS + 1)}, "widths", f"at most {MAX_WIDTHS}"),
        ({"n_images": 10**9}, "n_images", "less than or equal"),
        ({"final_images": 10**9}, "final_images", "less than or equal"),
        ({"batch_size": 10**9}, "batch_size", "less than or equal"),
        ({"weight": 1e300}, "weight", "less than or equal"),
        ({"population": 10_000, "generations": 10_000}, "body", "population x generations"),
        ({"population": 2000, "generations": 50, "steps": 1000}, "body", "x steps"),
        ({"sampler": "euler"}, "sampler", "dpm-solver++"),
        ({"crossover": "magic"}, "crossover", "one_point"),
        ({"pick_rule": "best"}, "pick_rule", "'tolerance' or 'weighted'"),
        ({"tolerance": -0.01}, "tolerance", "greater than or equal to 0"),
        ({"tolerance": 11}, "tolerance", "less than or equal to 10"),
        ({"tolerance": "nan"}, "tolerance", "valid number"),
        ({"rung_metric": "kid", "rungs": [2]}, "rung_metric", "'paired' or 'fid'"),
        ({"rung_metric": None}, "rung_metric", "'paired' or 'fid'"),
        ({"name": "a\x00b"}, "name", "pattern"),
        ({"name": "x" * 201}, "name", "at most 200"),
        ({"supernet_id": MAX_ID + 1}, "supernet_id", "less than or equal"),
        ({"reference_stats_id": 0}, "reference_stats_id", "greater than or equal to 1"),
        ({"steps": "abc"}, "steps", "integer"),
        ({"typo_field": 1}, "typo_field", "not permitted"),
    ],
)
def test_a_bad_search_setting_is_a_422_naming_it(
    client: TestClient, change: dict[str, object], field: str, words: str
) -> None:
    net, stats = ready(client)
    reply = client.post("/searches", json=search_body(net, stats, **change), headers=KEY)
    assert words in refused(reply, field)
    assert repo_of(client).list_searches() == []


def test_sampler_aliases_are_accepted_and_stored_canonical(client: TestClient) -> None:
    net, stats = ready(client)
    for alias, canonical in (("edm-heun", "edm"), ("dpm-solver++", "dpmpp"), ("ddim", "ddim")):
        reply = client.post("/searches", json=search_body(net, stats, sampler=alias), headers=KEY)
        assert reply.status_code == 201, reply.text
        assert reply.json()["config"]["sampler"] == canonical


def test_widths_in_any_order_are_stored_sorted(client: TestClient) -> None:
    net, stats = ready(client)
    reply = client.post("/searches", json=search_body(net, stats, widths=[1.0, 0.25, 0.5]), headers=KEY)
    assert reply.status_code == 201, reply.text
    assert reply.json()["config"]["widths"] == [0.25, 0.5, 1.0]


def test_the_rung_metric_is_stored_paired_unless_asked_for_fid(client: TestClient) -> None:
    net, stats = ready(client)
    for extra, metric in (
        ({}, "paired"),
        ({"rung_metric": "fid"}, "fid"),
        ({"rung_metric": "paired"}, "paired"),
    ):
        reply = client.post("/searches", json=search_body(net, stats, rungs=[2], **extra), headers=KEY)
        assert reply.status_code == 201, reply.text
        config = repo_of(client).get_search(reply.json()["id"]).config  # type: ignore[union-attr]
        assert reply.json()["config"]["rung_metric"] == config["rung_metric"] == metric


def test_the_largest_accepted_settings_are_stored(client: TestClient) -> None:
    net, stats = ready(client)
    body = search_body(net, stats, seed=SEED_MAX, eval_seed=SEED_MAX - 15, n_images=8, final_images=8,
                       weight=1e6, name="x" * 200)  # fmt: skip
    reply = client.post("/searches", json=body, headers=KEY)
    assert reply.status_code == 201, reply.text
    config = repo_of(client).get_search(reply.json()["id"]).config  # type: ignore[union-attr]
    assert (config["seed"], config["eval_seed"], config["weight"]) == (SEED_MAX, SEED_MAX - 15, 1e6)
    assert SearchSpec.from_dict(config).seeds()["final"] == [SEED_MAX - 7, SEED_MAX]  # held out, the last
    # the search's seeds at the top leave the finalists none after them: an explicit final_seed fits
    body.update(eval_seed=SEED_MAX - 7, final_seed=SEED_MAX - 15)
    reply = client.post("/searches", json=body, headers=KEY)
    assert reply.status_code == 201, reply.text
    assert reply.json()["config"]["final_seed"] == SEED_MAX - 15


def test_final_seed_is_stored_as_given_and_an_overlap_is_allowed_but_flagged(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    net, stats = ready(client)
    default = client.post("/searches", json=search_body(net, stats), headers=KEY)
    assert default.status_code == 201, default.text
    assert default.json()["config"]["final_seed"] is None  # the default: after the search's seeds
    spec = SearchSpec.from_dict(default.json()["config"])
    assert spec.seeds() == {"search": [0, 3], "final": [4, 11], "held_out": True}  # search_body's 4 and 8
    with caplog.at_level("WARNING", logger="api.services"):
        same = client.post("/searches", json=search_body(net, stats, final_seed=3), headers=KEY)
    assert same.status_code == 201, same.text
    assert same.json()["config"]["final_seed"] == 3
    assert not SearchSpec.from_dict(same.json()["config"]).seeds()["held_out"]
    assert "overlap the search's 0..3" in caplog.text


def test_the_pick_rule_and_tolerance_are_stored_with_the_search(client: TestClient) -> None:
    net, stats = ready(client)
    default = client.post("/searches", json=search_body(net, stats), headers=KEY)
    chosen = client.post("/searches", json=search_body(net, stats, pick_rule="weighted", tolerance=0.1),
                         headers=KEY)  # fmt: skip
    assert default.status_code == chosen.status_code == 201, (default.text, chosen.text)
    assert (default.json()["config"]["pick_rule"], default.json()["config"]["tolerance"]) == (
        "tolerance",
        0.05,
    )
    assert (chosen.json()["config"]["pick_rule"], chosen.json()["config"]["tolerance"]) == ("weighted", 0.1)


def test_the_spec_refuses_what_rest_refuses_with_one_line_errors() -> None:
    """The CLI builds a SearchSpec: the same bounds reach ``ddsm search`` as one-line ConfigErrors."""
    bad: list[dict[str, Any]] = [
        {"seed": -1}, {"eval_seed": SEED_MAX}, {"weight": float("nan")}, {"weight": float("inf")},
        {"widths": (0.5, 0.5)}, {"widths": (0.5, 1.5)}, {"widths": tuple(i / 100 for i in range(1, 100))},
        {"population": MAX_CANDIDATES, "generations": 2}, {"batch_size": 10**6}, {"n_images": 10**7},
        {"final_seed": -1}, {"final_seed": True}, {"final_seed": 1.5}, {"final_seed": SEED_MAX},
        {"eval_seed": SEED_MAX - 300},
    ]  # fmt: skip
    for change in bad:
        with pytest.raises(ConfigError) as info:
            SearchSpec(**change)
        assert "\n" not in str(info.value), change
    assert SearchSpec(widths=(1.0, 0.5)).widths == (0.5, 1.0)


def test_the_rest_schema_shows_the_bounds() -> None:
    props = SearchCreate.model_json_schema()["properties"]
    assert props["seed"]["minimum"] == 0 and props["seed"]["maximum"] == SEED_MAX
    assert props["supernet_id"]["maximum"] == MAX_ID and props["supernet_id"]["minimum"] == 1
    assert set(props["sampler"]["enum"]) >= {"ddpm", "edm-heun", "dpm-solver++"}
    assert props["name"]["pattern"] and props["name"]["maxLength"] == 200


# ---------------------------------------------------------------------------- reference stats
@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"dataset": "imagenet"}, "body", "unknown dataset"),
        ({"dataset": "cifar10", "extractor": "domain"}, "body", "no domain feature extractor"),
        ({"extractor": "clip"}, "extractor", "inception"),
        ({"dataset": "digits\x00"}, "dataset", "pattern"),
        ({"name": "n" * 201}, "name", "at most 200"),
    ],
)
def test_reference_stats_that_no_worker_can_compute_are_refused(
    client: TestClient, body: dict[str, str], field: str, words: str
) -> None:
    reply = client.post("/reference-stats", json={"name": "s", **body}, headers=KEY)
    assert words in refused(reply, field)
    assert repo_of(client).list_reference_stats() == []


def test_reference_stats_of_a_bundled_dataset_are_sent_to_a_worker(client: TestClient) -> None:
    reply = client.post("/reference-stats", json={"name": "s", "dataset": "cifar10"}, headers=KEY)
    assert reply.status_code == 202, reply.text
    assert client.app.state.dispatcher.sent[-1][0] == "compute_reference_stats"  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------ training runs
@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"train": {"steps": "abc"}}, "steps", "integer"),
        ({"train": {"steps": -5}}, "steps", "greater than or equal to 1"),
        ({"train": {"lr": 0}}, "lr", "greater than 0"),
        ({"train": {"batch_size": 10**6}}, "batch_size", "less than or equal"),
        ({"train": {"data_root": "/srv"}}, "data_root", "not permitted"),
        ({"train": {"download": True}}, "download", "not permitted"),
        ({"train": {"ema_decay": 1.0}}, "ema_decay", "less than 1"),
        ({"train": {"lr_schedule": "step"}}, "lr_schedule", "cosine"),
        ({"model": {"model_channels": "wide"}}, "model_channels", "integer"),
        ({"model": {"channel_mult": []}}, "channel_mult", "at least 1"),
        ({"model": {"depth": 3}}, "depth", "not permitted"),
        ({"preset": "imagenet"}, "preset", "digits"),
    ],
)
def test_bad_training_overrides_are_a_422(
    client: TestClient, body: dict[str, Any], field: str, words: str
) -> None:
    assert words in refused(client.post("/training-runs", json=body, headers=KEY), field)
    assert repo_of(client).list_training_runs() == []


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"model": {"model_channels": 30}}, "num_groups"),  # GroupNorm divisibility: UNetConfig's check
        ({"train": {"dataset": "imagenet"}}, "outside the folders"),
        ({"preset": "celeba64"}, "no bundled dataset"),
    ],
)
def test_training_requests_that_cannot_run_are_refused_at_post(
    client: TestClient, body: dict[str, Any], words: str
) -> None:
    reply = client.post("/training-runs", json=body, headers=KEY)
    assert reply.status_code in (403, 422) and words in reply.text, reply.text
    assert repo_of(client).list_training_runs() == []


def test_a_training_run_stores_only_the_overrides_given(client: TestClient, tmp_path: Path) -> None:
    faces = tmp_path / "roots" / "faces"
    faces.mkdir()
    body = {"preset": "celeba64", "train": {"steps": 7, "dataset": str(faces), "adam_betas": [0.9, 0.99]},
            "model": {"model_channels": 64}}  # fmt: skip
    reply = client.post("/training-runs", json=body, headers=KEY)
    assert reply.status_code == 202, reply.text
    run = reply.json()
    assert run["total_steps"] == 7
    train = {"steps": 7, "dataset": str(faces), "adam_betas": [0.9, 0.99]}
    assert run["config"] == {"preset": "celeba64", "model": {"model_channels": 64}, "train": train}


def test_the_rest_override_models_cover_the_configs_fields() -> None:
    """The torch-free override models name exactly TrainConfig's and UNetConfig's fields."""
    import dataclasses

    from ddsm_core.config import UNetConfig
    from ddsm_core.recipes import TrainConfig

    assert set(TrainOverrides.model_fields) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(ModelOverrides.model_fields) == {f.name for f in dataclasses.fields(UNetConfig)}


# ------------------------------------------------------------------------------------ by hand
def test_a_300_character_checkpoint_path_is_a_4xx(client: TestClient, tmp_path: Path) -> None:
    inside = tmp_path / "roots"
    for path in (str(inside / ("p" * 300)), str(inside / ("d" * 200) / ("e" * 100)), "/" + "a" * 299):
        reply = client.post("/supernets", json={"name": "n", "checkpoint_path": path}, headers=KEY)
        assert 400 <= reply.status_code < 500, reply.text


def test_over_long_strings_are_a_422_not_a_database_error(client: TestClient) -> None:
    long = "é" * 201
    for path, body in (
        ("/supernets", {"name": long, "checkpoint_path": "x"}),
        ("/reference-stats", {"name": long}),
        ("/reference-stats", {"name": "s", "dataset": "x" * 201}),
        ("/training-runs", {"name": long}),
        ("/searches", {"name": long, "supernet_id": 1, "reference_stats_id": 1}),
    ):
        reply = client.post(path, json=body, headers=KEY)
        assert reply.status_code == 422, (path, reply.text)


def test_replies_carry_utc_datetimes(client: TestClient) -> None:
    net, stats = ready(client)
    search = client.post("/searches", json=search_body(net, stats), headers=KEY).json()
    for value in (search["created_at"], client.get(f"/supernets/{net}").json()["created_at"],
                  client.get("/ui/data/overview").json()[0]["created_at"]):  # fmt: skip
        assert datetime.fromisoformat(value).utcoffset() is not None, value


def test_nul_characters_and_lone_surrogates_are_a_422(client: TestClient) -> None:
    """Postgres refuses NUL in text and a lone surrogate has no UTF-8 form: both were 500s."""
    for path, body in (
        ("/training-runs", {"name": "a\x00b"}),
        ("/reference-stats", {"name": "s", "dataset": "d\x00"}),
        ("/supernets", {"name": "n\x00", "checkpoint_path": "x"}),
    ):
        assert client.post(path, json=body, headers=KEY).status_code == 422, path
    raw = b'{"name": "a\\ud800"}'  # JSON allows it; the 422 echoing it must still encode
    reply = client.post("/reference-stats", content=raw, headers={**KEY, "content-type": "application/json"})
    assert reply.status_code == 422 and reply.json()["detail"][0]["loc"] == ["body", "name"], reply.text
    assert repo_of(client).list_reference_stats() == [] and repo_of(client).list_training_runs() == []
