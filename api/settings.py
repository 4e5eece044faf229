"""All service settings in one pydantic-settings class (torch-free, FastAPI-free).

Every field reads an environment variable. The three deployment settings keep their conventional names
(``DATABASE_URL``, ``CELERY_BROKER_URL``, ``ARTIFACT_STORE``); the rest are ``DDSM_<FIELD>``. With nothing
set, everything lives under ``DDSM_HOME`` (default ``./.ddsm``): a SQLite database, a serverless Celery
broker (kombu's SQLAlchemy transport on a SQLite file) and a local artifact folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DDSM_", populate_by_name=True, extra="ignore")

    home: Path = Field(default=Path(".ddsm"), description="Folder for embedded-mode files.")
    database_url: str = Field(
        default="",
        validation_alias=AliasChoices("DATABASE_URL", "DDSM_DATABASE_URL", "database_url"),
        description="SQLAlchemy URL; empty means sqlite:///<home>/ddsm.sqlite.",
    )
    celery_broker_url: str = Field(
        default="",
        validation_alias=AliasChoices("CELERY_BROKER_URL", "DDSM_CELERY_BROKER_URL", "celery_broker_url"),
        description="Celery broker; empty means sqla+sqlite:///<home>/broker.sqlite (no server).",
    )
    artifact_store: str = Field(
        default="",
        validation_alias=AliasChoices("ARTIFACT_STORE", "DDSM_ARTIFACT_STORE", "artifact_store"),
        description="Folder or fsspec URL for content-addressed artifacts; empty means <home>/artifacts.",
    )
    api_key: str | None = Field(
        default=None,
        description="Writes need header X-API-Key with this value. Unset: no authentication (embedded, "
        "local use only). Set but empty, or not printable ASCII: the API refuses to start.",
    )
    reads_need_key: bool = False
    max_body_bytes: int = Field(
        default=1 << 20, description="Larger request bodies get 413 before they are parsed or authorised."
    )
    checkpoint_roots: str = Field(
        default="",
        description="Folders (separated by the OS path separator, ':' on Linux) under which REST may "
        "register checkpoint and statistics paths; empty means the artifact store and ./runs.",
    )
    evaluator: Literal["ddsm", "fast"] = Field(
        default="ddsm",
        description="'fast' replaces sampling + FID by a trivial analytic score (benchmarks only).",
    )
    fast_eval_seconds: float = 0.0
    fast_eval_journal: Path | None = Field(
        default=None,
        description="Benchmarks only: the fast evaluator appends a JSON line per finished evaluation "
        "(candidate, attempt, worker) to this file (bench/service_faults.py counts re-executions).",
    )
    device: str = "auto"
    torch_threads: int = Field(
        default=1,
        description="torch threads per worker process (0 = torch's default, all cores). One thread per "
        "process is much faster on a CPU shared with other work; scale with more worker processes.",
    )
    worker_cache: Path | None = None
    heartbeat_interval_s: float = 5.0
    stale_after_s: float = 60.0
    resend_after_s: float | None = Field(
        default=None,
        description="A candidate sent but not claimed this long ago is sent again (once the eval queue "
        "is empty: its message was lost, e.g. a worker killed before its claim). Unset: 2 x the heartbeat.",
    )
    db_outage_grace_s: float = Field(
        default=300.0,
        description="A database (or broker) outage shorter than this never fails a search: the "
        "controller and the workers retry with backoff meanwhile.",
    )
    infra_backoff_s: float = Field(
        default=0.5,
        description="First wait before a task that met an infrastructure error is requeued "
        "(doubling per consecutive failure, at most infra_backoff_max_s).",
    )
    infra_backoff_max_s: float = 5.0
    worker_max_infra_failures: int = Field(
        default=5,
        description="A worker stops consuming after this many consecutive infrastructure failures, if it "
        "never reached the database (a wrong DATABASE_URL) or has failed for longer than db_outage_grace_s.",
    )
    max_infra_releases: int = Field(
        default=10,
        description="A candidate given back this many times for infrastructure errors (database, broker, "
        "artifact store), the first of them longer than db_outage_grace_s ago, is FAILED with the last "
        "error at its next one (e.g. an artifact lost for good) instead of waiting forever.",
    )
    max_attempts: int = 3
    controller_interval_s: float = 1.0
    controller_threads: int = Field(
        default=4,
        description="Searches ticked at once (a thread pool in the API process): a slow or failing search "
        "never holds up the others, and a search is never ticked twice at once.",
    )
    lease_ttl_s: float = Field(
        default=30.0,
        description="How long a controller's lease on a search lasts unrenewed: a restarted API takes its "
        "searches over after it. A running tick renews it every lease_ttl_s / 3 (a heartbeat thread).",
    )
    run_controller: bool = True
    visibility_timeout_s: int = 24 * 3600

    def resolved_resend_after_s(self) -> float:
        return self.resend_after_s if self.resend_after_s is not None else 2 * self.heartbeat_interval_s

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home.resolve() / 'ddsm.sqlite'}"

    def resolved_broker_url(self) -> str:
        return self.celery_broker_url or f"sqla+sqlite:///{self.home.resolve() / 'broker.sqlite'}"

    def resolved_artifact_store(self) -> str:
        return self.artifact_store or str(self.home.resolve() / "artifacts")

    def resolved_checkpoint_roots(self) -> list[Path]:
        """Absolute, symlink-resolved folders a REST client may name paths under."""
        if self.checkpoint_roots.strip():
            roots = [Path(r) for r in self.checkpoint_roots.split(os.pathsep) if r.strip()]
        else:
            roots = [Path("runs")]
            if "://" not in self.resolved_artifact_store():  # a local folder, not an fsspec URL
                roots.append(Path(self.resolved_artifact_store()))
        return [r.expanduser().resolve() for r in roots]

    def resolved_worker_cache(self) -> Path:
        return (self.worker_cache or self.home / "cache").resolve()

    @property
    def embedded(self) -> bool:
        return not self.database_url and not self.celery_broker_url


def settings_for(home: Path | None) -> Settings:
    """The settings of a command given ``--home``, which becomes DDSM_HOME for the processes it starts."""
    if home is not None:
        os.environ["DDSM_HOME"] = str(home)
    return Settings()
