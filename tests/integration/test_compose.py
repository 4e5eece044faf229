"""The deployment files: compose services, one GPU per worker service, settings the code reads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from api.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = ("api", "trainer")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def gpu_workers(compose: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in compose["services"].items() if k.startswith("worker-gpu")}


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    return service["deploy"]["resources"]["reservations"]["devices"]


def test_compose_has_the_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "api", "trainer"} <= set(services)
    assert len(gpu_workers(compose)) >= 1


def test_each_gpu_worker_service_owns_one_distinct_gpu(compose: dict[str, Any]) -> None:
    seen: list[str] = []
    for name, service in gpu_workers(compose).items():
        (device,) = gpu_devices(service)
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], name
        assert len(device["device_ids"]) == 1, f"{name} must own exactly one GPU"
        assert "count" not in device, f"{name}: use device_ids, not count"
        assert service.get("deploy", {}).get("replicas", 1) == 1, f"{name}: --scale/replicas share one GPU"
        seen += device["device_ids"]
        assert service["environment"]["DDSM_DEVICE"] == "cuda"
        command = " ".join(service["command"])
        assert "--queues eval" in command and "--pool solo" in command
    assert len(seen) == len(set(seen)), "two worker services share a GPU"
    (trainer_gpu,) = gpu_devices(compose["services"]["trainer"])
    assert "train" in compose["services"]["trainer"]["command"] and trainer_gpu["driver"] == "nvidia"


def test_api_runs_migrations_before_it_starts(compose: dict[str, Any]) -> None:
    command = " ".join(compose["services"]["api"]["command"])
    assert command.index("alembic upgrade head") < command.index("uvicorn")
    assert compose["services"]["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def interpolate(value: str) -> str:
    """Compose's ${NAME:-default} with nothing set: the default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_every_app_service_points_at_postgres_redis_and_the_artifact_store(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    known = {f"DDSM_{name.upper()}" for name in Settings.model_fields} | {
        "DATABASE_URL",
        "CELERY_BROKER_URL",
        "ARTIFACT_STORE",
    }
    for name in (*APP_SERVICES, *gpu_workers(compose)):
        env = compose["services"][name]["environment"]
        assert env["DATABASE_URL"].startswith("postgresql://"), name
        assert env["CELERY_BROKER_URL"].startswith("redis://"), name
        assert env["ARTIFACT_STORE"], name
        assert set(env) <= known, f"{name} sets unknown settings {set(env) - known}"
        for key, value in env.items():
            monkeypatch.setenv(key, interpolate(value))
        settings = Settings()
        assert not settings.embedded and settings.visibility_timeout_s > 24 * 3600


def test_dockerfile_installs_the_package_and_ships_the_migrations() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "COPY migrations" in text and "COPY alembic.ini" in text and "pip install" in text
