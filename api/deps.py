"""Shared route dependencies: settings, repository, artifact store, dispatcher, API-key checks."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, status

from api.artifacts import ArtifactStore
from api.db.repository import Repository
from api.queue import Dispatcher
from api.settings import Settings
from ddsm_core.errors import ConfigError


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_repo(request: Request) -> Repository:
    return request.app.state.repo


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


SettingsDep = Annotated[Settings, Depends(get_settings)]
RepoDep = Annotated[Repository, Depends(get_repo)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]


def key_matches(configured: str | None, given: str | None) -> bool:
    """Whether ``given`` (a header value) is the configured key; no key configured means open access.

    Header values arrive as latin-1 text: anything empty or not printable ASCII is simply wrong (a
    401, never a 500 from ``compare_digest``, which refuses non-ASCII str).
    """
    if configured is None:
        return True
    if not given or not _printable_ascii(given):
        return False
    return secrets.compare_digest(given.encode("ascii"), configured.encode("ascii"))


def _printable_ascii(value: str) -> bool:
    return value.isascii() and value.isprintable() and value.strip() == value


def check_api_key_setting(settings: Settings) -> None:
    """Refuse to start with a key no client can send: set but empty (``DDSM_API_KEY=``, which once
    authenticated an empty header) or not printable ASCII. Unset means no authentication."""
    key = settings.api_key
    if key is not None and (not key or not _printable_ascii(key)):
        raise ConfigError(
            "DDSM_API_KEY is set but empty or not printable ASCII: set a key, or unset the variable to "
            "run without authentication (local use only)"
        )


def _check_key(settings: Settings, given: str | None) -> None:
    if not key_matches(settings.api_key, given):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong API key: send header X-API-Key")


def require_write_key(settings: SettingsDep, x_api_key: Annotated[str | None, Header()] = None) -> None:
    _check_key(settings, x_api_key)


def require_read_key(settings: SettingsDep, x_api_key: Annotated[str | None, Header()] = None) -> None:
    if settings.reads_need_key:
        _check_key(settings, x_api_key)


Write = Depends(require_write_key)
Read = Depends(require_read_key)


def not_found(kind: str, ident: int) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{kind} {ident} not found")


def conflict(message: str) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, message)
