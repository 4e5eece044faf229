"""The app's edge against hostile input, on SQLite and Postgres: keys, body limits, non-finite numbers,
ids beyond the integer columns, server paths outside the checkpoint roots, redacted tracebacks and
search states that carry a pickle."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.app import create_app
from api.controller import SearchController
from api.db.engine import upgrade
from api.db.models import JobStatus, Search
from api.db.repository import MAX_ID, Repository
from api.settings import Settings
from ddsm_core.errors import ConfigError
from tests.factories import Outbox, ready, search_body
from tests.support import local_settings

KEY = "secret"
AUTH = {"X-API-Key": KEY}
TRACEBACK = 'RuntimeError: CUDA out of memory\nTraceback (most recent call last):\n  File "/srv/x.py", line 3'


Factory = Callable[..., AbstractContextManager[TestClient]]


@pytest.fixture
def make_client(db_url: str, tmp_path: Path) -> Factory:
    """The in-process app on the test database (SQLite or Postgres), with settings overridden."""
    upgrade(db_url)

    @contextmanager
    def factory(**overrides: object) -> Iterator[TestClient]:
        values: dict[str, object] = {
            "database_url": db_url,
            "run_controller": False,
            "api_key": KEY,
            "checkpoint_roots": str(tmp_path / "roots"),
            **overrides,
        }
        settings = local_settings(tmp_path / "home", **values)
        with TestClient(create_app(settings, dispatcher=Outbox())) as client:  # type: ignore[arg-type]
            yield client

    (tmp_path / "roots").mkdir()
    return factory


@pytest.fixture
def client(make_client: Factory) -> Iterator[TestClient]:
    with make_client() as c:
        yield c


def repo_of(client: TestClient) -> Repository:
    return client.app.state.repo  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------ keys
@pytest.mark.parametrize(
    "header", [b"\xc3\xa9t\xc3\xa9", b"\xff\xfe", b"", b"secre", b"secret\x7f", "sécret".encode("latin-1")]
)
def test_malformed_empty_or_non_ascii_keys_are_401(client: TestClient, header: bytes) -> None:
    net, stats = ready(repo_of(client))
    reply = client.post("/searches", json=search_body(net, stats), headers={"X-API-Key": header})
    assert reply.status_code == 401, reply.text
    assert "X-API-Key" in reply.json()["detail"]
    assert client.post("/searches", json=search_body(net, stats), headers=AUTH).status_code == 201


def test_reads_that_need_the_key_refuse_non_ascii_keys_with_401(make_client: Factory) -> None:
    with make_client(reads_need_key=True) as client:
        assert client.get("/searches", headers={"X-API-Key": b"\xe2\x82\xac"}).status_code == 401
        assert client.get("/searches", headers={"X-API-Key": b""}).status_code == 401
        assert client.get("/searches", headers=AUTH).status_code == 200


@pytest.mark.parametrize("key", ["", "   ", "clé", "tab\tkey"])
def test_an_empty_or_unsendable_configured_key_refuses_to_start(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match="DDSM_API_KEY"):
        create_app(Settings(home=tmp_path, api_key=key))


def test_ddsm_serve_with_an_empty_key_exits_with_a_one_line_error(tmp_path: Path) -> None:
    env = {**os.environ, "DDSM_API_KEY": "", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "serve", "--home", str(tmp_path), "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: DDSM_API_KEY") and "Traceback" not in done.stderr


def test_an_unset_key_means_no_authentication(make_client: Factory) -> None:
    with make_client(api_key=None) as client:
        net, stats = ready(repo_of(client))
        assert client.post("/searches", json=search_body(net, stats)).status_code == 201


# ------------------------------------------------------------------------------------ body size
def test_a_body_over_the_limit_is_413_before_auth_and_parsing(make_client: Factory) -> None:
    with make_client(max_body_bytes=1000) as client:
        big = b'{"name": "' + b"x" * 2000 + b'"}'
        for headers in ({}, AUTH):  # no key: 413, not 401 (nothing was read past the limit)
            reply = client.post(
                "/searches", content=big, headers={**headers, "content-type": "application/json"}
            )
            assert reply.status_code == 413 and "1000 bytes" in reply.json()["detail"]
        # not even JSON: still 413, the body is never parsed
        assert client.post("/supernets", content=b"\x00" * 1001).status_code == 413
        # streamed without a Content-Length (chunked): counted as it arrives
        chunks = iter([b"[", b"1," * 600, b"1]"])
        assert client.post("/searches", content=chunks, headers=AUTH).status_code == 413
        # at the limit the request goes on to auth and validation
        small = b"[" + b" " * 998 + b"]"
        assert client.post("/searches", content=small).status_code == 401
        assert client.post("/searches", content=small, headers=AUTH).status_code == 422


def test_the_default_limit_is_one_mebibyte(client: TestClient) -> None:
    assert Settings().max_body_bytes == 1 << 20
    body = b'"' + b"x" * (1 << 20) + b'"'
    assert client.post("/searches", content=body, headers=AUTH).status_code == 413


# ------------------------------------------------------------------------- non-finite numbers
@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e309", "-2.5e400"])
def test_a_non_finite_number_in_a_json_body_is_an_encodable_422(client: TestClient, token: str) -> None:
    net, stats = ready(repo_of(client))
    text = json.dumps(search_body(net, stats)).replace('"weight": 2.0', f'"weight": {token}')
    assert token in text
    for content_type in ("application/json", "application/json; charset=utf-8", "application/x+json"):
        reply = client.post("/searches", content=text, headers={**AUTH, "content-type": content_type})
        assert reply.status_code == 422, reply.text
        detail = json.loads(reply.text, parse_constant=lambda c: pytest.fail(f"{c} in a reply"))["detail"]
        assert token in detail[0]["msg"]
    assert repo_of(client).list_searches() == []


def test_validation_errors_that_echo_a_nan_are_still_valid_json(client: TestClient) -> None:
    app = client.app

    @app.get("/probe-nan")  # type: ignore[attr-defined]
    def probe() -> None:
        raise RequestValidationError(
            [
                {
                    "type": "finite_number",
                    "loc": ("body", "weight"),
                    "msg": "not finite",
                    "input": math.nan,
                    "ctx": {"x": math.inf},
                }
            ]
        )

    reply = client.get("/probe-nan")
    assert reply.status_code == 422
    assert reply.json()["detail"][0]["input"] == "nan" and reply.json()["detail"][0]["ctx"]["x"] == "inf"


# ---------------------------------------------------------------------------- ids out of range
@pytest.mark.parametrize("ident", [MAX_ID + 1, 2**63, 10**30, -1, 0])
def test_ids_beyond_the_integer_columns_are_404_in_paths(client: TestClient, ident: int) -> None:
    reads = [
        "/supernets/{}",
        "/training-runs/{}",
        "/reference-stats/{}",
        "/searches/{}",
        "/searches/{}/candidates",
        "/searches/{}/report",
        "/searches/{}/strategies/pick",
        "/candidates/{}/strategy",
    ]
    for path in reads:
        assert client.get(path.format(ident)).status_code == 404, path
    for path in ("/searches/{}/cancel", "/searches/{}/resume", "/training-runs/{}/cancel"):
        assert client.post(path.format(ident), headers=AUTH).status_code == 404, path
    net, stats = ready(repo_of(client))
    for body in (search_body(ident, stats), search_body(net, ident)):  # out of the schema's range
        reply = client.post("/searches", json=body, headers=AUTH)
        assert reply.status_code == 422 and reply.json()["detail"][0]["loc"][0] == "body", reply.text


def test_an_offset_beyond_the_integer_columns_is_422(client: TestClient) -> None:
    net, stats = ready(repo_of(client))
    search = client.post("/searches", json=search_body(net, stats), headers=AUTH).json()
    for offset in (MAX_ID + 1, 10**30):
        reply = client.get(f"/searches/{search['id']}/candidates", params={"offset": offset})
        assert reply.status_code == 422, reply.text
    assert client.get(f"/searches/{search['id']}/candidates", params={"offset": MAX_ID}).status_code == 200


# --------------------------------------------------------------------------- checkpoint roots
def fake_checkpoint(
    folder: Path, files: dict[str, bytes] | None = None, names: list[str] | None = None
) -> Path:
    """A checkpoint folder the API accepts (its manifest lists files with their sha256)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = files if files is not None else {"model.safetensors": b"weights"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    listed = names if names is not None else list(files)
    manifest = {
        "format": "ddsm-checkpoint",
        "version": 1,
        "step": 1,
        "model_config": {},
        "schedule": {},
        "files": {
            n: {"sha256": hashlib.sha256((folder / n).read_bytes()).hexdigest()}
            for n in listed
            if (folder / n).is_file()
        },
        "weights": {"model": "model.safetensors", "ema": None},
    }
    for n in listed:
        manifest["files"].setdefault(n, {"sha256": "0" * 64})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def register(client: TestClient, path: str | Path) -> tuple[int, str]:
    reply = client.post("/supernets", json={"name": "n", "checkpoint_path": str(path)}, headers=AUTH)
    return reply.status_code, reply.text


def test_registration_is_limited_to_the_checkpoint_roots(client: TestClient, tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    inside = fake_checkpoint(roots / "net")
    outside = fake_checkpoint(tmp_path / "elsewhere" / "net")
    (roots / "link").symlink_to(outside)
    assert register(client, inside)[0] == 202
    refused = [
        outside,
        tmp_path / "elsewhere" / "missing",
        roots / ".." / "elsewhere" / "net",
        roots / "link",
        "/etc",
        "/no/such/folder",
        "relative/dir",
    ]
    replies = [register(client, p) for p in refused]
    assert {status for status, _ in replies} == {403}
    # the same answer whether the path exists or not: registration probes nothing outside the roots
    details = {json.loads(text)["detail"].split("' is outside", 1)[1] for _, text in replies}
    assert len(details) == 1
    stats = client.post(
        "/reference-stats", json={"name": "s", "dataset": "digits", "path": "/etc/passwd"}, headers=AUTH
    )
    assert stats.status_code == 403


def test_bad_paths_are_a_4xx(client: TestClient) -> None:
    for path in ["", "a\x00b", "x" * 5000]:
        assert register(client, path)[0] == 422


def test_default_roots_are_the_artifact_store_and_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(home=tmp_path / "h", artifact_store="")
    assert settings.resolved_checkpoint_roots() == [
        tmp_path / "runs",
        (tmp_path / "h" / "artifacts").resolve(),
    ]
    assert Settings(artifact_store="s3://bucket/x").resolved_checkpoint_roots() == [tmp_path / "runs"]
    assert Settings(checkpoint_roots=f"/a{os.pathsep}/b").resolved_checkpoint_roots() == [
        Path("/a"),
        Path("/b"),
    ]


@pytest.mark.parametrize("entry", ["../secret.txt", "/abs/secret.txt", "sub/../../secret.txt", "link.bin"])
def test_manifest_entries_cannot_escape_their_folder(client: TestClient, tmp_path: Path, entry: str) -> None:
    secret = tmp_path / "roots" / "secret.txt"
    secret.write_bytes(b"top secret")
    ckpt = fake_checkpoint(tmp_path / "roots" / "ckpts" / "net", names=["model.safetensors", entry])
    (ckpt / "link.bin").symlink_to(secret)
    status, text = register(client, ckpt)
    assert status == 400 and ("outside its checkpoint folder" in text or "symlink out" in text), text


def test_an_unlisted_symlink_out_of_the_checkpoint_is_not_copied(client: TestClient, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"top secret")
    ckpt = fake_checkpoint(tmp_path / "roots" / "net")
    (ckpt / "notes.txt").symlink_to(secret)
    status, text = register(client, ckpt)
    assert status == 400 and "symlink out" in text
    store = Path(client.app.state.store.root)  # type: ignore[attr-defined]
    sha = hashlib.sha256(b"top secret").hexdigest()
    assert not (store / sha[:2] / sha).exists()


# ---------------------------------------------------------------------------------- tracebacks
def test_tracebacks_are_for_key_holders_only(client: TestClient) -> None:
    repo = repo_of(client)
    net = repo.create_supernet("broken", "c" * 64, {})
    repo.supernet_failed(net, TRACEBACK)
    run = repo.create_training_run("t", {"preset": "digits"}, 10)
    assert repo.claim_training_run(run, 1, "w") and repo.fail_training_run(run, 1, "w", TRACEBACK)
    good, stats = ready(repo_of(client))
    search = client.post("/searches", json=search_body(good, stats), headers=AUTH).json()["id"]
    SearchController(repo, Outbox(), Settings()).tick(search)
    cand = repo.candidates(search)[0]
    assert repo.claim_candidate(cand.id, 1, "w") and repo.fail_candidate(cand.id, 1, "w", TRACEBACK)
    reads = [(f"/supernets/{net}", "error"), (f"/training-runs/{run}", "error")]
    page = f"/searches/{search}/candidates"
    for headers, expected in (
        ({}, TRACEBACK.splitlines()[0]),
        ({"X-API-Key": "wrong"}, TRACEBACK.splitlines()[0]),
        (AUTH, TRACEBACK),
    ):
        for path, field in reads:
            assert client.get(path, headers=headers).json()[field] == expected, (path, headers)
        errors = [c["error"] for c in client.get(page, headers=headers).json()["items"] if c["error"]]
        assert errors == [expected]
        listed = [n["error"] for n in client.get("/supernets", headers=headers).json() if n["error"]]
        assert listed == [expected]


# --------------------------------------------------------------------- stored search states
class _WritesAFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.path, "w"))


def evaluate_sent(repo: Repository, outbox: Outbox) -> None:
    """A simulated worker: claim each sent candidate and complete it with a toy score."""
    sent, outbox.sent = [args for kind, args in outbox.sent if kind == "evaluate"], []
    for cid, attempt in sent:
        if repo.claim_candidate(cid, attempt, "w"):
            genome = repo.get_candidate(cid).genome  # type: ignore[union-attr]
            metrics = {
                "fid": float(sum((3 - g) ** 2 * (i + 1) for i, g in enumerate(genome))),
                "gflops": float(sum(g + 1 for g in genome)),
            }
            assert repo.complete_candidate(cid, attempt, "w", metrics)


def test_a_search_state_carrying_a_pickle_runs_no_code_in_the_api(client: TestClient, tmp_path: Path) -> None:
    repo = repo_of(client)
    net, stats = ready(repo_of(client))
    body = search_body(net, stats, generations=3)
    search = client.post("/searches", json=body, headers=AUTH).json()["id"]
    outbox = Outbox()
    controller = SearchController(repo, outbox, Settings())
    while repo.get_search(search).generation < 1:  # type: ignore[union-attr]
        controller.tick(search)
        evaluate_sent(repo, outbox)
    marker = tmp_path / "pwned"
    payload = base64.b64encode(pickle.dumps(_WritesAFile(str(marker)))).decode()
    state = {**repo.get_search(search).algorithm_state, "format": "ddsm-search-v1", "algorithm": payload}  # type: ignore[union-attr]
    with repo.engine.begin() as conn:
        conn.execute(update(Search).where(Search.id == search).values(algorithm_state=state))
    assert client.get(f"/searches/{search}").status_code == 200  # an unauthenticated read of the state
    for _ in range(100):
        controller.tick(search)  # rebuilds NSGA-II from the stored population, never unpickles
        evaluate_sent(repo, outbox)
        if repo.get_search(search).status == JobStatus.COMPLETE:  # type: ignore[union-attr]
            break
    assert repo.get_search(search).status == JobStatus.COMPLETE  # type: ignore[union-attr]
    assert client.get(f"/searches/{search}/report").status_code == 200
    assert not marker.exists()
    pickle.loads(base64.b64decode(payload)).close()  # the payload was live: unpickling it does write
    assert marker.exists()
