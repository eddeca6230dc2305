"""The web page: `GET /` and its static files (src/koe/static), for people who open the endpoint in a browser.

The page holds no data and calls the jobs API from the browser, so it is served without an API key (a
browser cannot send one when it loads a page); the API calls it makes carry the key. The routes stay out of
the OpenAPI schema: they are not part of the API.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from starlette.exceptions import HTTPException
from starlette.responses import Response

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


def _response(name: str) -> Response:
    return Response(asset(name), media_type=ASSETS[name], headers=HEADERS)


@router.get("/", include_in_schema=False)
async def index() -> Response:
    return _response("index.html")


@router.get("/static/{name}", include_in_schema=False)
async def static(name: str) -> Response:
    if name not in ASSETS:
        raise HTTPException(404, f"no static file {name!r}")
    return _response(name)
