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


DEPLOY_ENV = {"DDSM_API_KEY": "k3y"}
REMOTE_ENV = {**DEPLOY_ENV, "POSTGRES_PASSWORD": "pg-secret", "REDIS_PASSWORD": "redis-secret"}


class MissingVariable(Exception):
    pass


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default} and ${NAME:?error} (unset or empty -> error) over ``env``."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise MissingVariable(f"{name}: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{([A-Z_0-9]+)(?:(:-|:\?)([^}]*))?\}", one, value)


def merged(*files: dict[str, Any]) -> dict[str, Any]:
    """docker compose -f a -f b: mappings merge key by key; other values (command, ports) replace."""

    def merge(a: Any, b: Any) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            return {**a, **{k: merge(a[k], v) if k in a else v for k, v in b.items()}}
        return b

    out: dict[str, Any] = {}
    for f in files:
        out = merge(out, f)
    return out


@pytest.fixture(scope="module")
def remote() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.remote.yml").read_text())


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
            monkeypatch.setenv(key, interpolate(value, DEPLOY_ENV))
        settings = Settings()
        assert not settings.embedded and settings.visibility_timeout_s > 24 * 3600
        assert settings.api_key == DEPLOY_ENV["DDSM_API_KEY"]


def test_postgres_and_redis_publish_no_ports(compose: dict[str, Any]) -> None:
    for name in ("postgres", "redis"):
        assert "ports" not in compose["services"][name], f"{name} must stay on the internal network"
    assert compose["services"]["api"]["ports"] == ["8000:8000"]


def test_there_is_no_default_api_key(compose: dict[str, Any]) -> None:
    assert "change-me" not in (ROOT / "docker-compose.yml").read_text()
    for name in (*APP_SERVICES, *gpu_workers(compose)):
        raw = compose["services"][name]["environment"]["DDSM_API_KEY"]
        for env in ({}, {"DDSM_API_KEY": ""}):  # unset or empty: compose refuses to start
            with pytest.raises(MissingVariable, match="DDSM_API_KEY"):
                interpolate(raw, env)


def test_the_api_registers_checkpoints_from_a_read_only_mount_only(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    roots = api["environment"]["DDSM_CHECKPOINT_ROOTS"]
    mounts = [interpolate(v, {}) for v in api["volumes"]]
    assert f"./checkpoints:{roots}:ro" in mounts and "artifacts:/data" in mounts


def test_the_remote_override_publishes_postgres_and_redis_behind_passwords(
    compose: dict[str, Any], remote: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    both = merged(compose, remote)
    assert both["services"]["postgres"]["ports"] == ["5432:5432"]
    assert both["services"]["redis"]["ports"] == ["6379:6379"]
    redis_cmd = [interpolate(v, REMOTE_ENV) for v in both["services"]["redis"]["command"]]
    assert redis_cmd[redis_cmd.index("--requirepass") + 1] == REMOTE_ENV["REDIS_PASSWORD"]
    pg_env = both["services"]["postgres"]["environment"]
    assert interpolate(pg_env["POSTGRES_PASSWORD"], REMOTE_ENV) == REMOTE_ENV["POSTGRES_PASSWORD"]
    for missing in ("POSTGRES_PASSWORD", "REDIS_PASSWORD"):  # no default password once published
        env = {k: v for k, v in REMOTE_ENV.items() if k != missing}
        with pytest.raises(MissingVariable, match=missing):
            for service in both["services"].values():
                for value in (service.get("environment") or {}).values():
                    interpolate(value, env)
                for value in service.get("command") or []:
                    interpolate(value, env)
    for name in (*APP_SERVICES, *gpu_workers(both)):
        assert name in remote["services"], f"{name} must get the URLs with the passwords"
        for key, value in both["services"][name]["environment"].items():
            monkeypatch.setenv(key, interpolate(value, REMOTE_ENV))
        settings = Settings()
        assert f":{REMOTE_ENV['REDIS_PASSWORD']}@redis:6379" in settings.resolved_broker_url(), name
        assert f":{REMOTE_ENV['POSTGRES_PASSWORD']}@postgres:5432" in settings.resolved_database_url(), name


def test_dockerfile_installs_the_package_and_ships_the_migrations() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "COPY migrations" in text and "COPY alembic.ini" in text and "pip install" in text
