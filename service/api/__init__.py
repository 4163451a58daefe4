"""The HTTP API: `create_app(settings)` builds the FastAPI app (OpenAPI at /docs, the web page at /).

    uvicorn --factory service.api:create_app      # settings from NASPRUNE_* variables
    nasprune serve                                # the same, plus `db upgrade` and worker processes

The app brings the database schema up to date when it starts (service.db.upgrade, then check_schema), so a
fresh data root works at once; it creates its engine there, never at import time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from .. import repository as repo
from ..config import Settings, get_settings
from ..db import check_schema, make_engine, session_factory, upgrade
from ..startup import check_startup

log = logging.getLogger(__name__)

# Repository errors -> HTTP status; the message becomes the response's "detail".
ERROR_STATUS: dict[type[Exception], int] = {
    repo.SearchNotFound: 404,
    repo.SearchActive: 409,
    repo.TrialConflict: 409,
    repo.InvalidArgument: 422,
}


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        check_startup(settings)  # a writable data root with room, or a StartupError that says so
        upgrade(settings.url)
        engine = make_engine(settings.url)
        check_schema(engine)
        app.state.settings = settings
        app.state.engine = engine
        app.state.session_factory = session_factory(engine)
        log.info("API ready (data root %s)", settings.data_root)
        try:
            yield
        finally:
            engine.dispose()

    app = FastAPI(title="nasprune", version="0.1.0", lifespan=lifespan,
                  description="Search for the best ways to prune a fine-tuned BERT encoder: submit a search, "
                              "follow its progress, download the sub-networks on its Pareto front.")

    @app.exception_handler(repo.RepositoryError)
    async def _repository_error(_request: Request, exc: repo.RepositoryError) -> JSONResponse:
        code = next((c for t, c in ERROR_STATUS.items() if isinstance(exc, t)), 400)
        return JSONResponse({"detail": str(exc)}, status_code=code)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return JSONResponse({"detail": _validation_detail(exc), "errors": errors}, status_code=422)

    from .routes import router

    app.include_router(router)
    return app


__all__ = ["create_app"]
