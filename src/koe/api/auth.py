"""API keys for `koe serve`: when `Settings.api_keys` is set, every route except `GET /ping` needs a key
(and the web page's shell, `GET /` and `/static/*`, which holds no data; the calls it makes carry the key).

A request presents its key as `Authorization: Bearer <key>` (what the openai client and curl send) or as
`X-Api-Key: <key>` (for boto3: its SigV4 signature takes the `Authorization` header, so add the key with an
event hook, see docs/apis.md). Keys are compared with `hmac.compare_digest`, against every configured key.
A missing or wrong key is a 401 in the dialect of the route it was meant for: OpenAI's error shape under
/v1/audio/ and /v1/models, botocore's (`X-Amzn-ErrorType`) under /endpoints/, koe's everywhere else.

The check is ASGI middleware, so it runs before any body is read: an unauthenticated 1 GB upload costs
nothing.

The SageMaker container (`koe-container serve`) never checks keys: there, IAM authenticates InvokeEndpoint and
SageMaker strips the Authorization header before it reaches /invocations.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from koe.config import Settings
from koe.errors import AuthError, error_body

OPEN_PATHS = frozenset({"/ping"})
# The web page's shell (GET / and its static files; not in the OpenAPI schema): a browser cannot send a key
# when it loads a page, and the page holds no data. The API calls it makes carry the key.
PAGE_PATHS = ("/", "/static/")
API_KEY_HEADER = "x-api-key"
MISSING = (
    "this endpoint needs an API key: send `Authorization: Bearer <key>` (or an `X-Api-Key: <key>` header); "
    "the keys are the server's KOE_API_KEYS"
)
WRONG = "the API key is not valid (it is not one of the server's KOE_API_KEYS)"


def install(app: FastAPI, settings: Settings) -> None:
    """Require API keys on `app` when `settings.api_keys` names any (else the app stays open)."""
    keys = [key.get_secret_value() for key in settings.api_keys]
    if keys:
        app.add_middleware(ApiKeyMiddleware, keys=keys)


def presented_key(headers: Headers) -> str | None:
    """The key a request carries: `X-Api-Key`, else a Bearer token in `Authorization`; None if neither."""
    key = headers.get(API_KEY_HEADER)
    if key:
        return key.strip()
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def key_matches(key: str, keys: Iterable[bytes]) -> bool:
    """Whether `key` is one of `keys`, in time that does not depend on where they differ."""
    given = key.encode("utf-8", "surrogateescape")
    found = False
    for candidate in keys:
        found |= hmac.compare_digest(given, candidate)
    return found


class ApiKeyMiddleware:
    """Refuse HTTP requests without a valid key (401), except to `open_paths`."""

    def __init__(self, app: ASGIApp, keys: Iterable[str], open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self.app = app
        self.keys = tuple(k.encode("utf-8") for k in keys)
        if not self.keys:
            raise ValueError("ApiKeyMiddleware needs at least one key")
        self.open_paths = open_paths

    def is_open(self, scope: Scope) -> bool:
        path: str = scope["path"]
        if path in self.open_paths:
            return True
        page = path == PAGE_PATHS[0] or path.startswith(PAGE_PATHS[1])
        return page and scope.get("method") in ("GET", "HEAD")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.is_open(scope):
            await self.app(scope, receive, send)
            return
        key = presented_key(Headers(scope=scope))
        if key is not None and key_matches(key, self.keys):
            await self.app(scope, receive, send)
            return
        missing = key is None
        response = unauthorized(scope["path"], MISSING if missing else WRONG, missing=missing)
        if scope["type"] == "websocket":  # refuse the handshake
            await send({"type": "websocket.close", "code": 1008, "reason": "unauthorized"})
            return
        await response(scope, receive, send)


def unauthorized(path: str, message: str, *, missing: bool) -> JSONResponse:
    """The 401 for `path`, in the error shape of the API that path belongs to."""
    from koe.api import openai, runtime

    headers = {"WWW-Authenticate": 'Bearer realm="koe"'}
    if path.startswith(openai.PATH_PREFIXES):
        code = "missing_api_key" if missing else "invalid_api_key"
        return JSONResponse(openai.error_json(401, message, code=code), status_code=401, headers=headers)
    if path.startswith("/endpoints/"):
        code = runtime.MISSING_TOKEN if missing else runtime.BAD_TOKEN
        return runtime.aws_error_response(code, message, 401, headers=headers)
    return JSONResponse(error_body(AuthError(message)), status_code=401, headers=headers)


__all__ = ["API_KEY_HEADER", "ApiKeyMiddleware", "install", "key_matches", "presented_key"]
