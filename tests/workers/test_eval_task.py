"""The evaluate task with the real repository (SQLite) and artifact store: a worker whose infrastructure
keeps failing gives a candidate back a bounded number of times, then fails it with the reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from api.artifacts import ArtifactStore
from api.db.engine import make_engine, upgrade
from api.db.models import CandidateState
from api.db.repository import Repository
from tests.factories import TABLE, small_spec
from workers import tasks


@pytest.fixture
def broken_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Repository, int]]:
    """A search whose supernet is stored, for a worker whose cache folder cannot be created (a file
    stands where its parent folder should be: a broken disk that never recovers). Its candidate id."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("DDSM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DDSM_WORKER_CACHE", str(blocker / "cache"))
    monkeypatch.setenv("DDSM_DEVICE", "cpu")
    monkeypatch.setenv("DDSM_MAX_INFRA_RELEASES", "2")
    monkeypatch.setenv("DDSM_DB_OUTAGE_GRACE_S", "0")
    monkeypatch.setattr(tasks, "HEALTH", tasks.InfraHealth())  # this process's failure run stays here
    for name in ("DATABASE_URL", "DDSM_DATABASE_URL", "ARTIFACT_STORE", "DDSM_ARTIFACT_STORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DDSM_EVALUATOR", "ddsm")
    url = f"sqlite:///{tmp_path / 'home' / 'ddsm.sqlite'}"
    upgrade(url)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.pt").write_bytes(b"weights")
    sha = ArtifactStore(str(tmp_path / "home" / "artifacts")).put_dir(tmp_path / "ckpt")
    repo = Repository(make_engine(url))
    net = repo.create_supernet("net", sha, {})
    repo.supernet_ready(net, dict(TABLE), {})
    stats = repo.create_reference_stats("digits", "digits", "domain", artifact_sha256="b" * 64)
    search = repo.create_search("s", net, stats, small_spec().to_dict())
    assert repo.acquire_lease(search, "c", 30)
    assert repo.start_generation(search, "c", 0, [(0, 1, 2, 3)], {}, n_images=4)
    tasks.context.cache_clear()
    yield repo, repo.candidates(search)[0].id
    tasks.context.cache_clear()
    repo.engine.dispose()


def test_a_candidate_released_for_infrastructure_too_often_is_failed_with_the_reason(
    broken_cache: tuple[Repository, int],
) -> None:
    repo, cid = broken_cache
    for n in (1, 2):  # given back (no attempt spent) while under the bound
        assert tasks.evaluate_candidate(cid, 1) == "released"
        cand = repo.get_candidate(cid)
        assert cand is not None and cand.state == CandidateState.WAITING and cand.attempt == 1
        assert cand.metrics == {"infrastructure": cand.metrics["infrastructure"]}  # type: ignore[index]
        assert cand.metrics["infrastructure"]["releases"] == n  # type: ignore[index]
        assert "artifact store" in (cand.error or "")
    assert tasks.evaluate_candidate(cid, 1) == "failed"
    cand = repo.get_candidate(cid)
    assert cand is not None and cand.state == CandidateState.FAILED and cand.attempt == 1
    assert "infrastructure error 3 times" in (cand.error or "") and "artifact store" in cand.error
