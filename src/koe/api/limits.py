"""Limits on a request's head: headers larger than `MAX_HEADER_BYTES` in all are a 431, before any route runs.

uvicorn's h11 parser bounds only a head that arrives in pieces (16 KiB); a client that sends a large head in one
go reaches the app with it. This middleware answers such a request 431 without reading its body, whatever route it
was meant for. SageMaker's own limits are far below this one (custom attributes: 1024 characters). It drops up
to `DRAIN_BYTES` of the body first: a client still sending a small body then reads the 431 instead of a reset
connection; a larger body is cut off by `Connection: close`.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from koe.errors import HeadersTooLargeError, error_body, http_status

MAX_HEADER_BYTES = 64 * 1024
DRAIN_BYTES = 1024 * 1024


class HeaderLimitMiddleware:
    """Answer 431 to HTTP requests whose header names and values add up to more than `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > self.max_bytes:
                error = HeadersTooLargeError(
                    f"the request's headers are {size} bytes; the limit is {self.max_bytes} bytes"
                )
                response = JSONResponse(
                    error_body(error), status_code=http_status(error), headers={"Connection": "close"}
                )
                await drain(receive, DRAIN_BYTES)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def drain(receive: Receive, limit: int) -> None:
    """Read and drop the request body, up to about `limit` bytes."""
    seen = 0
    while seen <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return
