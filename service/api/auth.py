"""Who is calling. `OwnerDep` is the id of the API token that authenticated the request, or None when the server
runs without tokens; routes store it as the owner of what they create and pass it to the repository, which
hides everyone else's rows (as 404s).

`current_owner` is an app-level dependency (create_app), so every route runs it, including routes added later;
only routes declared with `openapi_extra=PUBLIC` skip the check (FastAPI's /docs, /redoc and /openapi.json are
not API routes and need none).

Authentication is on when NASPRUNE_AUTH=required, or (auto, the default) once a token has been created, revoked
or not: one indexed query per request, so `nasprune token create` closes a running server at once, and revoking
the last (perhaps leaked) token leaves it closed rather than open to anyone. A Bearer token that is
sent is always checked, even while authentication is off: a client holding a revoked token learns it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .. import tokens
from .deps import FactoryDep, SettingsDep

# The marker of a route anyone may call (`@router.get(..., openapi_extra=PUBLIC)`): the web page, which then asks
# for a token, and the health check, for probes. On the route itself rather than in a list of paths here, so it
# holds whatever prefix the route's router is included under; it shows in the OpenAPI operation too.
PUBLIC: dict[str, Any] = {"x-public": True}
HOW_TO_GET_ONE = "an administrator creates one with `nasprune token create NAME`"

bearer = HTTPBearer(auto_error=False, scheme_name="token",
                    description=f"An API token, sent as `Authorization: Bearer <token>`; {HOW_TO_GET_ONE}.")


def _refused(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def current_owner(request: Request, settings: SettingsDep, factory: FactoryDep,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str | None:
    if is_public(request.scope.get("route")):
        return None
    with factory() as session:
        if credentials is not None:
            token = tokens.authenticate(session, credentials.credentials)
            session.commit()  # the last_used_at stamp, if it was due
            if token is None:
                raise _refused("invalid or revoked API token")
            return token.id
        created, active = tokens.token_state(session)
        if settings.auth == "auto" and not created:
            return None
        if not active:
            state = "every one has been revoked" if created else "none exists yet"
            raise _refused(f"this server needs an API token and {state}: {HOW_TO_GET_ONE}")
        sent = request.headers.get("authorization")
        hint = " (the Authorization header must read 'Bearer <token>')" if sent else ""
        raise _refused(f"this server needs an API token: send `Authorization: Bearer <token>`{hint}; "
                       f"{HOW_TO_GET_ONE}")


OwnerDep = Annotated[str | None, Depends(current_owner)]


def is_public(route: object) -> bool:
    return bool((getattr(route, "openapi_extra", None) or {}).get("x-public"))


def document_security(app: FastAPI) -> None:
    """OpenAPI as the server behaves: the bearer scheme and a 401 on every operation but the public ones (the
    app-level dependency would otherwise mark /healthz as needing a token too)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for operations in schema.get("paths", {}).values():
                for operation in (o for o in operations.values() if isinstance(o, dict)):
                    if operation.get("x-public"):
                        operation.pop("security", None)
                    else:
                        # optional while no token exists (NASPRUNE_AUTH=auto): `{}` is "no credentials"
                        security = operation.get("security", [])
                        if {} not in security:
                            operation["security"] = [*security, {}]
                        operation.setdefault("responses", {}).setdefault(
                            "401", {"description": "no valid API token (when the server uses tokens)"})
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
