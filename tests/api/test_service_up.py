"""``ddsm up`` as a real process (embedded mode: no services): a signal stops all its children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from api.processes import wait_healthy
from tests.integration.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        try:
            children = Path(f"/proc/{todo.pop()}/task").glob("*/children")
            kids = {int(k) for f in children for k in f.read_text().split()}
        except OSError:
            continue
        todo += list(kids - found)
        found |= kids
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_up_stops_every_child_on_a_signal(tmp_path: Path, signum: int) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DDSM_HOME": str(tmp_path / "home")}
    for key in ("DATABASE_URL", "CELERY_BROKER_URL", "ARTIFACT_STORE", "DDSM_API_KEY"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "api.cli", "up", "--port", str(port), "--workers", "2"]
    up = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout=90, proc=up)
        deadline = time.monotonic() + 60
        while len(children := descendants(up.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # the workers past their start-up
        children = descendants(up.pid)
        assert len(children) >= 2
        up.send_signal(signum)
        up.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in children if alive(p)]
    finally:
        if up.poll() is None:
            up.kill()
        for pid in descendants(up.pid):
            os.kill(pid, signal.SIGKILL)
