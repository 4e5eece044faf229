"""Thread defaults: one torch thread per process unless told otherwise; passive OpenMP waits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddsm_core.errors import ConfigError
from ddsm_core.threads import ENV, available_cores, resolve_threads, set_threads

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_default_is_one_thread_then_the_environment_then_the_option(monkeypatch):
    assert resolve_threads(None) == 1
    monkeypatch.setenv(ENV, "3")
    assert resolve_threads(None) == 3
    assert resolve_threads(2) == 2


def test_zero_means_every_available_core():
    torch.set_num_threads(1)
    assert set_threads(0) == available_cores() == torch.get_num_threads()
    assert set_threads(None) == 1 == torch.get_num_threads()


def test_bad_values_are_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match=">= 0"):
        resolve_threads(-1)
    monkeypatch.setenv(ENV, "many")
    with pytest.raises(ConfigError, match="not an integer"):
        resolve_threads(None)


def _child(code: str, **env: str) -> str:
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", ENV)}
    full.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run(
        [sys.executable, "-c", code], env=full, capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()


def test_the_ddsm_entry_point_sets_a_passive_wait_policy_before_torch_loads():
    code = (
        "import sys; from ddsm_core.cli import run_app, app; import ddsm_core.cli as c; "
        "c.run_app = lambda a, argv=None: 0; "
        "import os\ntry:\n    c.main()\nexcept SystemExit:\n    pass\n"
        "import torch; print(os.environ['OMP_WAIT_POLICY'])"
    )
    assert _child(code) == "PASSIVE"
    assert _child(code, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"  # the user's choice wins


def test_a_command_runs_one_thread_by_default():
    code = (
        "from ddsm_core.cli import app, run_app; import torch; torch.set_num_threads(2); "
        "run_app(app, ['latency', '--preset', 'digits', '--batch-sizes', '1', '--repeats', '1', "
        "'--warmup', '0']); print(torch.get_num_threads())"
    )
    assert _child(code).splitlines()[-1] == "1"
    assert _child(code, **{ENV: "2"}).splitlines()[-1] == "2"
