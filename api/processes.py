"""The service's processes on this machine: start an API or a worker as a subprocess, wait, stop.

Used by ``ddsm up``, ``ddsm demo``, the benchmarks and the integration tests. A worker is started as the
``ddsm worker`` command, so this module imports nothing of ``workers/``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _output(log: Path | None) -> Any:
    return subprocess.DEVNULL if log is None else open(log, "ab")  # noqa: SIM115


def start_worker_process(
    env: dict[str, str] | None = None,
    queues: str = "eval,train",
    log: Path | None = None,
    own_group: bool = False,
) -> subprocess.Popen[bytes]:
    """A ``ddsm worker`` subprocess; ``own_group`` starts it in a process group of its own, which
    :func:`stop` signals as a whole (a prefork pool's children too), and which a terminal's Ctrl-C
    does not reach: its starter stops it."""
    cmd = [sys.executable, "-m", "api.cli", "worker", "--queues", queues, "--loglevel", "INFO"]
    out = _output(log) if log else None
    return subprocess.Popen(
        cmd,
        env={**os.environ, **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT if log else None,
        start_new_session=own_group,
    )


def start_api_process(
    port: int, env: dict[str, str] | None = None, host: str = "127.0.0.1", log: Path | None = None
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--host", host,
           "--port", str(port), "--log-level", "warning"]  # fmt: skip
    out = _output(log) if log else None
    return subprocess.Popen(
        cmd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT if log else None
    )


def wait_healthy(url: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the API process exited with status {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the API at {url} did not become healthy in {timeout:.0f} s")


def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    """``signum`` to the process, or to its whole group when it leads one of its own."""
    try:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
    except ProcessLookupError:
        pass


def stop(procs: list[subprocess.Popen[bytes]], timeout: float = 20.0) -> None:
    """SIGTERM (a warm shutdown: the task at hand finishes or is requeued), SIGKILL after ``timeout``."""
    for proc in procs:
        if proc.poll() is None:
            _signal(proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL)
            proc.wait()
