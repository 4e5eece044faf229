"""The FastAPI application: ``create_app(settings)``; ``uvicorn api.app:create_app --factory``.

The process holds the search controller (a thread) and never imports torch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from api.artifacts import ArtifactStore
from api.controller import SearchController
from api.db.engine import make_engine, upgrade
from api.db.repository import Repository
from api.deps import check_api_key_setting
from api.edge import ErrorRedaction, RequestGuard, json_safe
from api.queue import Dispatcher
from api.routes import health, reference_stats, searches, strategies, supernets, training, ui
from api.schemas import ERROR_RESPONSES
from api.services import Conflict, Forbidden, NotFound
from api.settings import Settings
from ddsm_core.errors import ConfigError, DDSMError


def create_app(settings: Settings | None = None, dispatcher: Dispatcher | None = None) -> FastAPI:
    """The app; ``dispatcher`` replaces the Celery sender (tests).

    :raises ConfigError: DDSM_API_KEY set but empty or not printable ASCII (``ddsm serve`` prints it
        as one line; under uvicorn the process exits).
    """
    settings = settings or Settings()
    check_api_key_setting(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.resolved_database_url()
        if settings.embedded or url.startswith("sqlite"):
            upgrade(url)  # embedded: no separate migration step (compose runs `alembic upgrade head`)
        engine = make_engine(url)
        app.state.settings = settings
        app.state.repo = Repository(engine)
        app.state.store = ArtifactStore(settings.resolved_artifact_store())
        app.state.dispatcher = dispatcher or Dispatcher(settings)
        controller = SearchController(app.state.repo, app.state.dispatcher, settings)
        if settings.run_controller:
            controller.start()
        app.state.controller = controller
        try:
            yield
        finally:
            if settings.run_controller:
                controller.stop()
            engine.dispose()

    # Swagger UI and ReDoc from the assets fastapi-offline ships: /docs works without internet
    app = FastAPIOffline(
        title="ddsm",
        summary="Step-aware diffusion: supernets, reference statistics, width-strategy searches.",
        version="0.1.0",
        lifespan=lifespan,
        swagger_ui_parameters={"validatorUrl": None},  # the validator badge would call an outside host
    )
    for module in (health, supernets, training, reference_stats, searches, strategies, ui):
        app.include_router(module.router, responses=ERROR_RESPONSES)
    app.include_router(ui.pages)
    app.mount("/ui/static", StaticFiles(directory=ui.STATIC), name="ui-static")
    _error_handlers(app)
    # the last added runs first: body limits before anything else, then the reply's redaction
    app.add_middleware(ErrorRedaction, api_key=settings.api_key)
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_body_bytes)
    return app


def _error_handlers(app: FastAPI) -> None:
    """User mistakes become 4xx with the message; never a 500."""

    def reply(code: int):  # noqa: ANN202
        async def handler(_: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": json_safe(str(exc))}, status_code=code)

        return handler

    async def invalid_request(_: Request, exc: Exception) -> JSONResponse:
        # FastAPI's own handler echoes the input, which may be a NaN that JSON cannot encode (a 500)
        errors = exc.errors() if isinstance(exc, RequestValidationError) else []
        return JSONResponse({"detail": json_safe(jsonable_encoder(errors))}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(NotFound, reply(status.HTTP_404_NOT_FOUND))
    app.add_exception_handler(Forbidden, reply(status.HTTP_403_FORBIDDEN))
    app.add_exception_handler(Conflict, reply(status.HTTP_409_CONFLICT))
    app.add_exception_handler(ConfigError, reply(status.HTTP_422_UNPROCESSABLE_CONTENT))
    app.add_exception_handler(DDSMError, reply(status.HTTP_400_BAD_REQUEST))
