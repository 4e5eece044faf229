from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import text

from api.deps import RepoDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get("/health")
def health(repo: RepoDep, settings: SettingsDep) -> dict[str, Any]:
    """Liveness plus whether the database answers (no secrets in the reply)."""
    try:
        with repo.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        database = "ok"
    except Exception as exc:
        database = f"error: {type(exc).__name__}"
    return {
        "status": "ok" if database == "ok" else "degraded",
        "database": database,
        "database_backend": repo.engine.dialect.name,
        "embedded": settings.embedded,
        "evaluator": settings.evaluator,
    }
