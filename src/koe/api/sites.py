"""Which sites may talk to the server: a Host check against DNS rebinding, and an Origin check against other sites'
pages (cross-site request forgery).

- **Host.** A page on `attacker.example` whose name is rebound to 127.0.0.1 reaches a loopback server with
  `Host: attacker.example`. Only loopback names (`localhost`, `*.localhost`, 127.0.0.0/8, `::1`), the address the
  server binds (when it is one address) and `Settings.allowed_hosts` are answered; anything else is a 403 before
  any route runs. `*` in `allowed_hosts` answers every Host: the SageMaker container, whose proxy sends its own.
- **Origin.** A page on any site may POST a multipart form (a CORS-safelisted request) to 127.0.0.1. A
  state-changing request (any method but GET, HEAD, OPTIONS) is refused when the browser marks it
  `Sec-Fetch-Site: cross-site` or `same-site`, or when its `Origin` is neither this server (the same host and
  port as `Host`) nor an allowed host. Clients that are not browsers send neither header and are not affected.

Starlette's TrustedHostMiddleware covers only the first half, splits `[::1]:8080` wrongly, and knows nothing of
loopback; hence this small ASGI middleware.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from koe.api.limits import drain
from koe.errors import ForbiddenRequestError, error_body, http_status

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "[::]"})
REFUSED_FETCH_SITES = frozenset({"cross-site", "same-site"})
DRAIN_BYTES = 1024 * 1024


def host_name(authority: str) -> str | None:
    """The lower-cased host of `host[:port]` or `[v6]:port`, without brackets; None when malformed."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        end = authority.find("]")
        rest = authority[end + 1 :]
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return authority[1:end] or None
    name, _, port = authority.partition(":")
    if port and not port.isdigit():
        return None
    return name or None


def is_loopback(name: str) -> bool:
    """Whether `name` always means this machine: `localhost` (and its subdomains, which browsers keep on
    loopback), or a loopback address."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class SiteCheckMiddleware:
    """Refuse (403) requests for a Host the server does not answer to, and state-changing requests from another
    site's page. `allowed_hosts` holds extra host names; `*` turns both checks off."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] = (), bind_host: str = "127.0.0.1") -> None:
        self.app = app
        names = {name.strip().lower().strip("[]") for name in allowed_hosts if name.strip()}
        self.any_host = "*" in names
        if bind_host.strip().lower() not in WILDCARD_BINDS:
            names.add(bind_host.strip().lower().strip("[]"))
        self.names = frozenset(names - {"*"})

    def allowed(self, name: str | None) -> bool:
        return name is not None and (name in self.names or is_loopback(name))

    def problem(self, scope: Scope) -> str | None:
        """Why this request is refused, or None."""
        headers = Headers(scope=scope)
        host = headers.get("host")
        if host is None:
            return "the request has no Host header"
        if not self.allowed(host_name(host)):
            return (
                f"this server does not answer to the host {host[:100]!r}; use localhost or 127.0.0.1, or add the "
                "name to the server's KOE_ALLOWED_HOSTS"
            )
        if scope["type"] == "http" and scope.get("method") in SAFE_METHODS:
            return None
        site = headers.get("sec-fetch-site", "").strip().lower()
        if site in REFUSED_FETCH_SITES:
            return f"a page on another site may not send this request (Sec-Fetch-Site: {site})"
        origin = headers.get("origin")
        if origin is not None and not self._same_or_allowed(origin, host):
            return f"a page on another site may not send this request (Origin: {origin[:100]!r})"
        return None

    def _same_or_allowed(self, origin: str, host: str) -> bool:
        parts = urlsplit(origin.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # `null` (a sandboxed page, a file://) or garbage
        if parts.netloc.lower() == host.strip().lower():
            return True
        name = host_name(parts.netloc)
        return name is not None and name in self.names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.any_host or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        problem = self.problem(scope)
        if problem is None:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "forbidden"})
            return
        error = ForbiddenRequestError(problem)
        response = JSONResponse(error_body(error), status_code=http_status(error), headers={"Connection": "close"})
        await drain(receive, DRAIN_BYTES)
        await response(scope, receive, send)


__all__ = ["SiteCheckMiddleware", "host_name", "is_loopback"]
