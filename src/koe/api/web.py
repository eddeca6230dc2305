"""The web page: `GET /` and its static files (src/koe/static), for people who open the endpoint in a browser.

The page holds no data and calls the jobs API from the browser, so it is served without an API key (a
browser cannot send one when it loads a page); the API calls it makes carry the key. One helper route,
`GET /v1/web/models` (behind the key like every /v1 route), names the models a job may ask for: the served
one and every model usable here without a download. The routes stay out of the OpenAPI schema: they are the
page's, not part of the API.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from koe.api.deps import app_models
from koe.api.state import app_state
from koe.provider import ALIASES, ModelProvider

router = APIRouter(tags=["web"])

ASSETS: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}

# Everything the page loads comes from this server; audio plays from the browser's own blob: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def asset(name: str) -> bytes:
    """The bytes of one static file shipped in the koe package (read on each request: they are small, and an
    edited page shows on reload)."""
    return resources.files("koe").joinpath("static", name).read_bytes()


def _response(request: Request, name: str) -> Response:
    if app_state(request).jobs is None:  # the SageMaker container: no jobs API for the page to call
        raise HTTPException(404, "the web page runs with the local endpoint (koe serve)")
    return Response(asset(name), media_type=ASSETS[name], headers=HEADERS)


@router.get("/", include_in_schema=False)
async def index(request: Request) -> Response:
    return _response(request, "index.html")


@router.get("/static/{name}", include_in_schema=False)
async def static(request: Request, name: str) -> Response:
    if name not in ASSETS:
        raise HTTPException(404, f"no static file {name!r}")
    return _response(request, name)


def job_models(models: ModelProvider) -> dict[str, Any]:
    """The server's model first, then every other model koe can load here without a download (no aliases)."""
    return {"default": models.default, "models": [name for name in models.names() if name not in ALIASES]}


@router.get("/v1/web/models", include_in_schema=False)
async def models(request: Request) -> dict[str, Any]:
    if app_state(request).jobs is None:
        raise HTTPException(404, "the web page runs with the local endpoint (koe serve)")
    return await run_in_threadpool(job_models, app_models(request))
