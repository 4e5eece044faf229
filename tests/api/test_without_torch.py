"""The API and its test suite run with torch's import blocked: the service process needs no torch.

The blocked run leaves out the schemathesis fuzz (tests/api/test_openapi_fuzz.py, ~2 min of the
suite's time), which drives the same routes as the rest of tests/api with generated inputs, and the
PostgreSQL variants of the tests that run on both databases: which modules a route imports does not
depend on the database, and the parent run tests both. That halves its ~9 minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCK_TORCH = "DDSM_TEST_BLOCK_TORCH"  # read by tests/conftest.py
BLOCKED = os.environ.get(BLOCK_TORCH) == "1"


@pytest.mark.skipif(not BLOCKED, reason=f"runs inside the torch-blocked run ({BLOCK_TORCH}=1) only")
def test_torch_cannot_be_imported_in_the_blocked_run() -> None:
    with pytest.raises(ImportError):
        import torch  # noqa: F401


@pytest.mark.slow
@pytest.mark.skipif(BLOCKED, reason="this is the torch-blocked run itself")
def test_the_api_suite_passes_with_torch_blocked(tmp_path: Path) -> None:
    report = tmp_path / "report.xml"
    env = {**os.environ, BLOCK_TORCH: "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={report}",
        "--ignore=tests/api/test_openapi_fuzz.py",
        "-k",
        "not postgres",
        "tests/api",
    ]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-4000:]
    cases = {
        f"{case.get('classname')}.{case.get('name')}": case
        for case in ET.parse(report).getroot().iter("testcase")
    }
    blocked_check = "tests.api.test_without_torch.test_torch_cannot_be_imported_in_the_blocked_run"
    assert blocked_check in cases and len(cases[blocked_check]) == 0, "torch was not blocked"
    skipped = [(name, s.get("message", "")) for name, case in cases.items() for s in case.iter("skipped")]
    assert not [s for s in skipped if "torch" in s[1].lower() and "blocked run itself" not in s[1]], skipped
    assert len(cases) > 50  # the whole suite ran
