"""Shared route dependencies: settings, repository, artifact store, dispatcher, API-key checks."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, status

from api.artifacts import ArtifactStore
from api.db.repository import Repository
from api.queue import Dispatcher
from api.settings import Settings


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


def _check_key(settings: Settings, given: str | None) -> None:
    if settings.api_key is None:
        return
    if given is None or not secrets.compare_digest(given, settings.api_key):
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
