"""Fetching images by URL: only http(s), only public addresses, bounded in size and time.

`check_public_url(url)` is the guard (also used for webhooks): it resolves the host and refuses the
URL if any address is loopback, private, link-local, multicast, reserved or otherwise not global.
`fetch_url_bytes` then connects to the very address that was checked (so a second DNS answer cannot
point the request elsewhere), follows at most `max_redirects` redirects (each checked again) and stops
at `max_bytes` or `timeout_s`, whichever comes first.
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

from segany.server.http.errors import FetchFailed, UrlNotAllowed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressPolicy = Callable[[IPAddress], bool]

_ALLOWED_SCHEMES = {"http": 80, "https": 443}
_CHUNK = 64 * 1024


def is_public_address(address: IPAddress) -> bool:
    """True for globally routable unicast addresses; IPv4-mapped IPv6 is judged as its IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_loopback
                                      or address.is_link_local or address.is_private or address.is_unspecified)


def _split(url: str, field: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, or `UrlNotAllowed` naming `field`."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise UrlNotAllowed(f"{field}: malformed URL ({error})", field) from None
    scheme = parts.scheme.lower()
    if scheme not in _ALLOWED_SCHEMES:
        raise UrlNotAllowed(f"{field}: only http and https URLs are allowed, got {scheme or 'no'} scheme", field)
    if not parts.hostname:
        raise UrlNotAllowed(f"{field}: the URL has no host", field)
    if parts.username or parts.password:
        raise UrlNotAllowed(f"{field}: credentials in URLs are not allowed", field)
    return scheme, parts.hostname, port or _ALLOWED_SCHEMES[scheme]


def resolve_checked(url: str, field: str = "url",
                    policy: AddressPolicy = is_public_address) -> tuple[str, str, int, str]:
    """Check `url` and return (scheme, host, port, address to connect to).

    Every address the host resolves to must pass `policy`; one bad answer refuses the URL, so a name
    with both a public and a private record cannot be used to reach the private one.
    """
    scheme, host, port = _split(url, field)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise UrlNotAllowed(f"{field}: cannot resolve host {host!r} ({error})", field) from None
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    if not addresses:
        raise UrlNotAllowed(f"{field}: host {host!r} has no address", field)
    for address in addresses:
        if not policy(address):
            raise UrlNotAllowed(f"{field}: {host!r} resolves to a non-public address ({address})", field)
    return scheme, host, port, str(addresses[0])


def check_public_url(url: str, field: str = "url") -> None:
    """Raise `UrlNotAllowed` (naming `field`) unless `url` is http(s) to public addresses only."""
    resolve_checked(url, field)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to a fixed, already checked address while sending the URL's host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.pinned_address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.pinned_address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed address; the certificate is still verified against the URL's host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        self.tls_context = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self.tls_context)
        self.pinned_address = address

    def connect(self) -> None:
        raw = socket.create_connection((self.pinned_address, self.port), self.timeout)
        self.sock = self.tls_context.wrap_socket(raw, server_hostname=self.host)


def _read_limited(connection: http.client.HTTPConnection, response: http.client.HTTPResponse, max_bytes: int,
                  deadline: float, field: str) -> bytes:
    declared = response.getheader("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise FetchFailed(f"{field}: the image is {int(declared)} bytes, more than the limit of {max_bytes}", field)
    chunks: list[bytes] = []
    total = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchFailed(f"{field}: fetching the image took too long", field)
        if connection.sock is not None:
            connection.sock.settimeout(remaining)  # a slow trickle must not outlive the total time limit
        chunk = response.read1(_CHUNK)  # returns what has arrived, so the deadline is checked often
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > max_bytes:
            raise FetchFailed(f"{field}: the image is more than the limit of {max_bytes} bytes", field)
        chunks.append(chunk)


def fetch_url_bytes(url: str, *, max_bytes: int, timeout_s: float, field: str = "url", max_redirects: int = 3,
                    policy: AddressPolicy = is_public_address) -> bytes:
    """GET `url` and return its body, enforcing the address policy on every hop.

    Raises `UrlNotAllowed` for refused destinations and `FetchFailed` for errors, non-2xx statuses,
    bodies over `max_bytes` and transfers over `timeout_s` in total.
    """
    deadline = time.monotonic() + timeout_s
    for _ in range(max_redirects + 1):
        scheme, host, port, address = resolve_checked(url, field, policy)
        remaining = max(0.05, deadline - time.monotonic())
        connection_class = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
        connection = connection_class(host, port, address, timeout=remaining)
        try:
            parts = urlsplit(url)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            connection.request("GET", target, headers={"User-Agent": "segany", "Accept": "image/*"})
            response = connection.getresponse()
            if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
                url = urljoin(url, response.getheader("Location", ""))
                continue
            if not 200 <= response.status < 300:
                raise FetchFailed(f"{field}: the server answered HTTP {response.status}", field)
            return _read_limited(connection, response, max_bytes, deadline, field)
        except (OSError, http.client.HTTPException) as error:
            raise FetchFailed(f"{field}: cannot fetch the image ({type(error).__name__}: {error})", field) from None
        finally:
            connection.close()
    raise FetchFailed(f"{field}: more than {max_redirects} redirects", field)
