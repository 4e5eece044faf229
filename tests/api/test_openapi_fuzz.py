"""Property-based test over the OpenAPI document (schemathesis, in-process app, SQLite and Postgres):
whatever a client sends, the reply is never a 5xx and conforms to the documented schema (status codes,
bodies, error bodies), and every datetime carries its zone (RFC 3339).

Each operation gets a bounded number of generated requests, valid ones and schema-violating ones, with
the API key, against a database holding a ready supernet, reference statistics, a running search with
candidates and a training run (ids 1, so that generated requests reach past the 404s). Hypothesis is
derandomized: a run is a function of the code. ``-m slow`` runs many more examples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from api.controller import SearchController
from api.db.engine import upgrade
from api.db.repository import Repository
from api.settings import Settings
from tests.support import local_settings

KEY = "secret"
AUTH = {"X-API-Key": KEY}
TABLE = {"widths": [0.25, 0.5, 0.75, 1.0], "gflops": [1.0, 2.0, 3.0, 4.0], "gflops_conv_linear": None}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
KNOWN_IDS = {"search_id": 1, "candidate_id": 1, "supernet_id": 1, "run_id": 1, "stats_id": 1}


class Outbox:
    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args: None  # a dispatcher that sends nothing


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    upgrade(db_url)
    (tmp_path / "roots").mkdir()
    settings = local_settings(tmp_path / "home", database_url=db_url, run_controller=False, api_key=KEY,
                              checkpoint_roots=str(tmp_path / "roots"))  # fmt: skip
    with TestClient(create_app(settings, dispatcher=Outbox())) as c:  # type: ignore[arg-type]
        _seed(c.app.state.repo)  # type: ignore[attr-defined]
        yield c


def _seed(repo: Repository) -> None:
    """Rows with id 1 of each kind, a search with a generation of candidates, one of them failed."""
    from api.schemas import SearchCreate

    net = repo.create_supernet("net", "a" * 64, {})
    repo.supernet_ready(net, TABLE, {})
    stats = repo.create_reference_stats("digits", "digits", "domain", artifact_sha256="b" * 64)
    body = SearchCreate(supernet_id=net, reference_stats_id=stats, steps=4, population=4, generations=2,
                        n_images=4, final_images=8)  # fmt: skip
    search = repo.create_search("s", net, stats, body.spec(tuple(TABLE["widths"])).to_dict())
    SearchController(repo, Outbox(), Settings()).tick(search)  # type: ignore[arg-type]
    cand = repo.candidates(search)[0]
    assert repo.claim_candidate(cand.id, 1, "w") and repo.fail_candidate(cand.id, 1, "w", "boom\ntrace")
    repo.create_training_run("t", {"preset": "digits", "train": {}, "model": {}}, 10)
    assert {net, stats, search, cand.id} == {1}


def _zoned_datetimes(value: Any, where: str = "") -> list[str]:
    """Paths of ``*_at`` strings in a JSON reply that are not datetimes with a zone."""
    bad: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k.endswith("_at") and isinstance(v, str):
                try:
                    zoned = datetime.fromisoformat(v).tzinfo is not None
                except ValueError:
                    zoned = False
                if not zoned:
                    bad.append(f"{where}.{k}={v}")
            else:
                bad.extend(_zoned_datetimes(v, f"{where}.{k}"))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            bad.extend(_zoned_datetimes(v, f"{where}[{i}]"))
    return bad


def fuzz(client: TestClient, examples: int) -> list[str]:
    """Every operation x (valid input, valid input on existing ids, invalid input); the failures."""
    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        names = {p.name for p in operation.path_parameters}
        known = {k: v for k, v in KNOWN_IDS.items() if k in names}
        variants: list[tuple[GenerationMode, dict[str, Any] | None]] = [
            (GenerationMode.POSITIVE, None),
            (GenerationMode.NEGATIVE, None),
        ]
        if known:
            variants.append((GenerationMode.POSITIVE, known))
        for mode, path_parameters in variants:
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)
            checks = CHECKS + ([negative_data_rejection] if mode == GenerationMode.NEGATIVE else [])
            label = f"{operation.label} [{mode.value}{', known ids' if path_parameters else ''}]"
            failures += _run(client, strategy, checks, label, examples)
    return failures


def _run(client: TestClient, strategy: Any, checks: list[Any], label: str, examples: int) -> list[str]:
    failures: list[str] = []

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],  # report every failure, shrink none
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=AUTH)
        kwargs.pop("cookies", None)
        if "data" in kwargs:
            kwargs["content"] = kwargs.pop("data")
        try:
            response = client.request(**kwargs)
        except Exception as exc:  # the app raised through the test client: a 500
            failures.append(f"{label}: {type(exc).__name__}: {exc} <- {kwargs}")
            return
        try:
            case.validate_response(response, checks=checks)
        except (Exception, FailureGroup) as exc:  # FailureGroup is a BaseExceptionGroup, not an Exception
            failures.append(f"{label}: {str(exc)[:600]}")
        if response.headers.get("content-type", "").startswith("application/json"):
            bad = _zoned_datetimes(json.loads(response.text))
            if bad:
                failures.append(f"{label}: datetimes without a zone {bad[:3]}")

    try:
        run()
    except Unsatisfiable:  # nothing to get wrong (invalid input to an operation without parameters)
        assert "negative" in label, label
    return failures


def test_no_input_gives_a_server_error_or_an_undocumented_reply(client: TestClient) -> None:
    failures = fuzz(client, examples=10)
    assert failures == [], f"{len(failures)} failures:\n" + "\n\n".join(failures[:20])


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("DDSM_FUZZ_MANY"),
    reason="the many-example run takes ~10 min per database: set DDSM_FUZZ_MANY=1 to run it",
)
def test_many_inputs_give_no_server_error_or_undocumented_reply(client: TestClient) -> None:
    failures = fuzz(client, examples=150)
    assert failures == [], f"{len(failures)} failures:\n" + "\n\n".join(failures[:20])
