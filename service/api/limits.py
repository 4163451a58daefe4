"""Request body size limits, as pure ASGI middleware: HTTP 413 with a JSON `detail` past the limit.

A declared Content-Length over the limit is answered before the app runs. A body without one (chunked) is
counted as the app reads it: the read that passes the limit raises `BodyTooLarge`, an HTTPException, so the
route stops there and FastAPI answers 413 (and the middleware does, should it surface any other way). Nothing
past the limit is ever handed to the app.
"""

from __future__ import annotations

import json

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int, setting: str) -> None:
        super().__init__(413, f"request body larger than {limit} bytes (the server's {setting})")


class BodySizeLimit:
    """`limit` bytes for every request body, `upload_limit` for the (method, path) pairs in `upload_routes`."""

    def __init__(self, app: ASGIApp, *, limit: int, upload_limit: int,
                 upload_routes: frozenset[tuple[str, str]] = frozenset()) -> None:
        self.app = app
        self.limit = limit
        self.upload_limit = upload_limit
        self.upload_routes = upload_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if (scope["method"], scope["path"].rstrip("/") or "/") in self.upload_routes:
            limit, setting = self.upload_limit, "NASPRUNE_MAX_UPLOAD_BYTES"
        else:
            limit, setting = self.limit, "NASPRUNE_MAX_BODY_BYTES"
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, BodyTooLarge(limit, setting))
            return

        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, setting)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await _refuse(send, exc)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server (h11) refuses a malformed length before we see it
    return None


async def _refuse(send: Send, exc: BodyTooLarge) -> None:
    body = json.dumps({"detail": exc.detail}).encode()
    await send({"type": "http.response.start", "status": exc.status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
