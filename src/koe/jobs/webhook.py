"""Webhook URLs a client chooses: which it may name, how they are shown, and where a delivery connects.

- **Which.** `WebhookPolicy.hosts` is `Settings.webhook_hosts`. `*` allows any host whose every address is
  public; a host named in the list is allowed whatever it resolves to (the operator vouches for it, loopback
  included). Loopback, private, link-local, shared, reserved and multicast addresses are refused otherwise, after
  DNS resolution, both when the job is submitted and again at delivery.
- **Where.** A delivery connects to the address that was checked (the URL's host swapped for it, the `Host`
  header and TLS server name kept), so a name rebound between the check and the connection cannot reach inside.
- **Shown.** `redact_url` replaces user info and the query string (where webhook secrets live) with `***`:
  the jobs API and the log show only the redacted form.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import httpx

from koe.errors import OptionsError

MAX_URL_LENGTH = 2048
REDACTED = "***"

Resolver = Callable[[str, int], Sequence[str]]
"""(host, port) -> the addresses a connection to it may use."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def redact_url(url: str) -> str:
    """`url` without its secrets: user info and query string become `***`, a fragment is dropped."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{REDACTED}@{host}" if "@" in parts.netloc else host
    return urlunsplit((parts.scheme, netloc, parts.path, REDACTED if parts.query else "", ""))


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (IPv4 and IPv6), through the system resolver."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise OptionsError(f"webhook_url: cannot resolve the host {host!r}: {exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


@dataclass(frozen=True)
class Target:
    """Where one delivery goes: the URL to connect to (an address, not a name), and the headers and extensions
    that keep the original name for HTTP and TLS."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, str] = field(default_factory=dict)


class WebhookPolicy:
    """Which webhook URLs a job may name; see the module's docstring."""

    def __init__(self, hosts: Iterable[str] = ("*",), *, resolver: Resolver = resolve) -> None:
        names = {h.strip().lower().strip("[]") for h in hosts if h.strip()}
        self.any_public = "*" in names
        self.hosts = frozenset(names - {"*"})
        self._resolve = resolver

    def check(self, url: str) -> str:
        """`url` if a job may name it (resolving its host), else OptionsError."""
        self.target(url)
        return url

    def target(self, url: str) -> Target:
        """Where a delivery to `url` connects: its first address, once every address passed the policy."""
        parsed = _parse(url)
        host = parsed.host.lower()
        named = host in self.hosts
        if not named and not self.any_public:
            allowed = ", ".join(sorted(self.hosts)) or "none (KOE_WEBHOOK_HOSTS is empty)"
            raise OptionsError(f"webhook_url: the host {host!r} is not an allowed webhook host; allowed: {allowed}")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        addresses = [ipaddress.ip_address(a.split("%")[0]) for a in self._addresses(host, port)]
        if not addresses:
            raise OptionsError(f"webhook_url: the host {host!r} has no address")
        if not named:
            private = [str(a) for a in addresses if not is_public(a)]
            if private:
                raise OptionsError(
                    f"webhook_url: the host {host!r} resolves to a non-public address ({private[0]}); name it in "
                    "the server's KOE_WEBHOOK_HOSTS to allow it"
                )
        address = addresses[0]
        pinned = parsed.copy_with(host=str(address))
        extensions = {"sni_hostname": host} if parsed.scheme == "https" else {}
        host_header = parsed.netloc.decode("ascii").rpartition("@")[2]
        return Target(str(pinned), {"Host": host_header}, extensions)

    def _addresses(self, host: str, port: int) -> Sequence[str]:
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            return self._resolve(host, port)


def _parse(url: str) -> httpx.URL:
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
        raise OptionsError(f"webhook_url: must be an http:// or https:// URL of at most {MAX_URL_LENGTH} characters")
    if any(ord(c) < 0x21 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in url):
        raise OptionsError("webhook_url: must not contain spaces or control characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise OptionsError(f"webhook_url: not a valid URL: {redact_url(url)!r}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise OptionsError("webhook_url: must be an http:// or https:// URL with a host")
    return parsed


__all__ = ["Target", "WebhookPolicy", "is_public", "redact_url", "resolve"]
