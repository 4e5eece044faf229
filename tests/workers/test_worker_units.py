from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from api.artifacts import ArtifactError, ArtifactStore
from api.queue import EVAL_QUEUE, ROUTES, TRAIN_QUEUE, TRAIN_SUPERNET, celery_config
from api.settings import Settings
from workers.app import make_worker_app
from workers.tasks import Heartbeat

ROOT = Path(__file__).resolve().parents[2]


def test_celery_settings_follow_the_known_traps() -> None:
    conf = celery_config(Settings(celery_broker_url="redis://localhost:6379/0", visibility_timeout_s=100_000))
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["broker_transport_options"]["visibility_timeout"] == 100_000
    assert conf["task_serializer"] == "json" and conf["accept_content"] == ["json"]
    assert ROUTES[TRAIN_SUPERNET]["queue"] == TRAIN_QUEUE
    assert {r["queue"] for r in ROUTES.values()} == {EVAL_QUEUE, TRAIN_QUEUE}


def test_the_worker_app_is_made_from_the_settings_given_with_every_task_routed() -> None:
    settings = Settings(celery_broker_url="redis://127.0.0.1:6379/9", visibility_timeout_s=7200)
    app = make_worker_app(settings)
    assert app.conf.broker_url == "redis://127.0.0.1:6379/9"
    assert app.conf.broker_transport_options == {"visibility_timeout": 7200}
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1
    for name in ROUTES:  # every task the API sends has a body here, with the long-task settings
        task = app.tasks[name]
        assert task.acks_late and task.reject_on_worker_lost, name


def test_importing_the_worker_modules_reads_no_settings() -> None:
    """Settings are read when a worker app is made, not at import: a bad value fails only then."""
    code = (
        "import workers.app, workers.cli, workers.tasks, api.queue\n"
        "try:\n"
        "    workers.app.app\n"
        "except Exception as exc:\n"
        "    print('settings read on demand:', type(exc).__name__)\n"
    )
    env = {**os.environ, "DDSM_MAX_ATTEMPTS": "not a number", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "settings read on demand: ValidationError" in out.stdout


def test_embedded_broker_needs_no_server(tmp_path: Path) -> None:
    conf = celery_config(Settings(home=tmp_path))
    assert conf["broker_url"].startswith("sqla+sqlite:///") and conf["broker_transport_options"] == {}


def test_heartbeat_beats_until_the_claim_is_lost() -> None:
    beats: list[float] = []
    lost_after = 3

    def beat() -> bool:
        beats.append(time.monotonic())
        return len(beats) < lost_after

    with Heartbeat(beat, 0.01) as hb:
        assert hb.lost.wait(2.0)
    assert len(beats) == lost_after


def test_heartbeat_survives_a_database_error() -> None:
    calls = {"n": 0}
    done = threading.Event()

    def beat() -> bool:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("database blip")
        done.set()
        return True

    with Heartbeat(beat, 0.01) as hb:
        assert done.wait(2.0)
    assert not hb.lost.is_set()


def test_artifact_store_is_content_addressed_and_verifies(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    folder = tmp_path / "ckpt"
    (folder / "sub").mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    (folder / "sub" / "w.bin").write_bytes(b"\x00" * 10)
    tree = store.put_dir(folder)
    assert store.put_dir(folder) == tree  # same content, same id
    out = store.get_dir(tree, tmp_path / "copy")
    assert (out / "sub" / "w.bin").read_bytes() == b"\x00" * 10
    sha = store.tree(tree)["manifest.json"]
    blob = Path(store.root) / sha[:2] / sha
    blob.write_text("tampered")
    with pytest.raises(ArtifactError, match="corrupt"):
        store.get_file(sha, tmp_path / "x")
    with pytest.raises(ArtifactError, match="not found"):
        store.get_bytes("0" * 64)
    with pytest.raises(ArtifactError, match="sha256"):
        store.get_bytes("../etc/passwd")


def test_infra_health_stops_a_worker_that_never_worked_but_waits_out_an_outage() -> None:
    from workers.tasks import InfraHealth

    settings = Settings(worker_max_infra_failures=3, infra_backoff_s=0.5, infra_backoff_max_s=1.0)
    never = InfraHealth()
    assert [never.failed(settings) for _ in range(3)] == [(0.5, False), (1.0, False), (1.0, True)]
    worked = InfraHealth()
    worked.ok()
    assert not any(worked.failed(settings)[1] for _ in range(10))  # within the grace period
    worked.ok()
    assert worked.failures == 0
    long_outage = Settings(worker_max_infra_failures=3, db_outage_grace_s=0.0)
    assert [worked.failed(long_outage)[1] for _ in range(3)] == [False, False, True]


def test_the_fast_evaluators_journal_keeps_one_line_per_evaluation(tmp_path: Path) -> None:
    import json

    from workers.fast_eval import journal

    for cid in (3, 3, 4):
        journal(tmp_path / "journal.jsonl", candidate=cid, attempt=1, worker="w")
    lines = [json.loads(line) for line in (tmp_path / "journal.jsonl").read_text().splitlines()]
    assert [line["candidate"] for line in lines] == [3, 3, 4] and all("t" in line for line in lines)
