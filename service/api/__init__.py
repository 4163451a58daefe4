"""The HTTP API: `create_app(settings)` builds the FastAPI app (OpenAPI at /docs, the web page at /).

    uvicorn --factory service.api:create_app      # settings from NASPRUNE_* variables
    nasprune serve                                # the same, plus `db upgrade` and worker processes

The app brings the database schema up to date when it starts (service.db.upgrade, then check_schema), so a
fresh data root works at once; it creates its engine there, never at import time.

Every route runs `auth.current_owner` (an app-level dependency): with API tokens on, a route cannot be reached
without one unless it is declared with `openapi_extra=auth.PUBLIC`.

Nothing here answers with a redirect: Starlette's trailing-slash redirect (`/searches/` -> 307) builds its
Location from the request's Host header and answers before authentication, so it is off and such a path is a 404.
Every error's detail passes through the settings' `Redactor` (service/redact.py): no server path in a response.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from .. import compressions, datasets, refinements, shares
from .. import repository as repo
from ..config import Settings, get_settings
from ..db import check_schema, make_engine, session_factory, upgrade
from ..redact import Redactor
from ..startup import check_startup, private_files
from .auth import current_owner, document_security
from .schemas import ErrorRead

log = logging.getLogger(__name__)

# Repository errors -> HTTP status; the message becomes the response's "detail".
ERROR_STATUS: dict[type[Exception], int] = {
    repo.SearchNotFound: 404,
    refinements.RefinementNotFound: 404,
    compressions.CompressionNotFound: 404,
    shares.ShareNotFound: 404,
    shares.ShareNotReady: 409,
    repo.SearchActive: 409,
    repo.TrialConflict: 409,
    repo.InvalidArgument: 422,
    datasets.DatasetNotFound: 404,
    datasets.DatasetInUse: 409,
}
# Room for the multipart framing and the small form fields around an uploaded file of max_upload_bytes.
UPLOAD_OVERHEAD_BYTES = 64 * 1024


def _validation_detail(exc: RequestValidationError, redactor: Redactor) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {redactor.text(str(error.get('msg', 'invalid')))}")
    return "; ".join(parts)


def _document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Every 4xx/5xx body in the OpenAPI document as the handlers below write it (ErrorRead: a `detail` string,
    plus `errors` for 422s); FastAPI would document 422s as {"detail": [...]}, which no response here matches.
    Routes with a body also answer 400 when it cannot be decoded at all (FastAPI's own check, before validation)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    error = ErrorRead.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(error.pop("$defs", {}))
    components["ErrorRead"] = error
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorRead"}}}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if "requestBody" in operation:
                operation["responses"].setdefault("400", {"description": "the body cannot be decoded"})
            for code, response in operation.get("responses", {}).items():
                if code[0] in "45":
                    response["content"] = content
    return schema


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        umask = private_files(settings)  # everything written under the data root: 0600 / 0700
        try:
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
        finally:
            os.umask(umask)  # the process's own again (an app started inside a test process)

    redactor = Redactor.for_settings(settings)
    app = FastAPI(title="nasprune", version="0.1.0", lifespan=lifespan, dependencies=[Depends(current_owner)],
                  redirect_slashes=False,
                  description="Search for the best ways to prune a fine-tuned BERT encoder: submit a search, "
                              "follow its progress, download the sub-networks on its Pareto front.")

    @app.exception_handler(repo.RepositoryError)
    async def _repository_error(_request: Request, exc: repo.RepositoryError) -> JSONResponse:
        code = next((c for t, c in ERROR_STATUS.items() if isinstance(exc, t)), 400)
        return JSONResponse({"detail": redactor.text(str(exc))}, status_code=code)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: redactor.text(v) if k == "msg" and isinstance(v, str) else v for k, v in e.items()
                   if k in ("loc", "msg", "type")} for e in exc.errors()]
        return JSONResponse({"detail": _validation_detail(exc, redactor), "errors": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            # Starlette's Allow lists the methods of the first route whose path matched; a path served by several
            # routes (GET and DELETE /searches/{id}) must list them all (RFC 9110).
            methods = {method for route in app.router.routes if isinstance(route, Route)
                       and route.matches(request.scope)[0] is not Match.NONE for method in route.methods or ()}
            exc = StarletteHTTPException(405, exc.detail, headers={"Allow": ", ".join(sorted(methods))})
        elif exc.status_code == 404 and request.url.path.endswith("/") and request.url.path != "/":
            exc = StarletteHTTPException(404, "Not Found (no route here ends with '/')", headers=exc.headers)
        elif isinstance(exc.detail, str):
            exc = StarletteHTTPException(exc.status_code, redactor.text(exc.detail), headers=exc.headers)
        return await http_exception_handler(request, exc)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _document_errors(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    from .datasets import UPLOAD_ROUTE
    from .datasets import router as datasets_router
    from .limits import BodySizeLimit
    from .routes import router
    from .shares import router as shares_router

    app.include_router(router)
    app.include_router(datasets_router)
    app.include_router(shares_router)
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes,  # type: ignore[arg-type]
                       upload_limit=settings.max_upload_bytes + UPLOAD_OVERHEAD_BYTES,
                       upload_routes=frozenset({UPLOAD_ROUTE}))
    document_security(app)
    return app


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[str]:
    """The app under uvicorn on a free port of 127.0.0.1, in a thread of this process (examples and tests that
    drive it over a real socket or from a browser); yields its base URL and stops it on the way out."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


__all__ = ["create_app", "serving"]
