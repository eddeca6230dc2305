"""Route-scoped error shapes: a router whose routes answer errors in their API's own shape.

The app's handlers (api/app.py) answer every error as koe's `{"error": {"type", "message"}}`. The OpenAI and
SageMaker runtime routers speak other dialects (OpenAI's `{"error": {"message", "type", "param", "code"}}`,
botocore's `X-Amzn-ErrorType` + `{"message"}`), so their routes use `scoped_errors(render)` as `route_class`:
any exception a route raises (a KoeError, FastAPI's validation error, an HTTPException, anything) goes to
`render`, which still takes the status code from `koe.errors.http_status` where the dialect allows.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

ErrorRenderer = Callable[[Request, Exception], Response]
"""Turns an exception raised by a route into that API's error response."""


def scoped_errors(render: ErrorRenderer) -> type[APIRoute]:
    """An APIRoute class whose routes answer every exception with `render(request, exc)`."""

    class ScopedErrorRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def handle(request: Request) -> Response:
                try:
                    return await handler(request)
                except Exception as exc:
                    return render(request, exc)

            return handle

    return ScopedErrorRoute
