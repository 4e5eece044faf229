"""The search definition's edges: the REST schema and the workers read ddsm_core.spec, not the CLI or
the web package (a fresh interpreter per check, so other tests' imports do not hide an edge)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER_MAY_USE = {"api", "api.artifacts", "api.db", "api.db.engine", "api.db.models", "api.db.repository",
                  "api.queue", "api.settings"}  # fmt: skip


def _modules_after(imports: str) -> set[str]:
    code = f"import sys\nimport {imports}\nprint('\\n'.join(sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout, not an installed copy
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    out = run.stdout
    return set(out.split())


def test_the_rest_schema_takes_its_search_defaults_from_the_spec_not_the_cli() -> None:
    loaded = _modules_after("api.schemas")
    assert "ddsm_core.spec" in loaded
    assert not {m for m in loaded if m.startswith("ddsm_core.cli")}
    assert "torch" not in loaded


@pytest.mark.parametrize("module", ["workers.tasks", "workers.compute", "workers.fast_eval"])
def test_workers_use_the_spec_and_only_the_services_persistence_settings_queue_artifacts(module: str) -> None:
    loaded = _modules_after(module)
    assert "ddsm_core.spec" in loaded
    assert {m for m in loaded if m == "api" or m.startswith("api.")} <= WORKER_MAY_USE


def test_rest_defaults_and_bounds_are_the_specs() -> None:
    from api.schemas import SearchCreate
    from ddsm_core.spec import DEFAULTS, LIMITS

    fields = SearchCreate.model_json_schema()["properties"]
    for name in ("sampler", "steps", "population", "generations", "n_images", "final_images", "weight",
                 "seed", "eval_seed", "batch_size", "mutation_rate", "crossover", "pick_rule",
                 "tolerance"):  # fmt: skip
        assert fields[name]["default"] == getattr(DEFAULTS, name), name
    for name, (low, high) in LIMITS.items():
        assert fields[name].get("minimum") == low and fields[name].get("maximum") == high, name
