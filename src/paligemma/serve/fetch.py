"""Remote image URLs (`--allow-remote-images`) fetched without opening the server to SSRF: the
host is resolved once and every address it names must be public (not loopback, private,
link-local, multicast, reserved or unspecified, IPv4 or IPv6, IPv4-mapped / 6to4 / Teredo forms
unwrapped) unless `Settings.allow_image_hosts` names the host or a network holding the address;
the connection goes to the checked address (no second lookup); redirects are followed here, each
hop checked the same way; the download is capped in bytes and in total time. Every refused or
failed fetch is the same error, so the answers cannot map the host's network or ports."""

from __future__ import annotations

import http.client
import ipaddress
import logging
import socket
import time
from urllib.parse import urljoin, urlsplit

from .errors import APIError
from .settings import Settings

log = logging.getLogger(__name__)
MAX_REDIRECTS = 5
REDIRECTS = {301, 302, 303, 307, 308}
FETCH_FAILED = (
    "could not fetch the image URL: remote images must be public http(s) URLs that answer "
    "with an image within the server's size and time limits"
)
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(Exception):
    """Why a fetch was refused or failed (logged; the client only gets FETCH_FAILED)."""


def fetch(url: str, s: Settings) -> bytes:
    """The bytes at an http(s) URL, or APIError(400, FETCH_FAILED) for any refusal or failure."""
    try:
        return _fetch(url, s, time.monotonic() + s.remote_timeout_s)
    except (Refused, OSError, http.client.HTTPException, ValueError) as e:
        log.info("refused or failed image fetch %r: %s", url[:200], e)
        raise APIError(400, FETCH_FAILED, code="fetch_failed") from None


def _fetch(url: str, s: Settings, deadline: float) -> bytes:
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Refused(f"not an http(s) URL with a host: {url[:100]}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = resolve(parts.hostname, port, s.allow_image_hosts)
        status, location, body = _get(parts, port, addresses, s.max_body_bytes, deadline)
        if status in REDIRECTS and location:
            url = urljoin(url, location)
            continue
        if status != 200:
            raise Refused(f"HTTP {status}")
        return body
    raise Refused(f"more than {MAX_REDIRECTS} redirects")


def resolve(host: str, port: int, allowed: tuple[str, ...] = ()) -> list[str]:
    """The addresses `host` resolves to (one lookup), all checked; Refused if any is not public
    and not allow-listed (a name that resolves to a mix is refused whole)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise Refused(f"cannot resolve {host!r}: {e}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    for a in addresses:
        if blocked(ipaddress.ip_address(a.split("%")[0])) and not allow_listed(host, a, allowed):
            raise Refused(f"{host} resolves to {a}, which is not a public address")
    if not addresses:
        raise Refused(f"{host!r} resolves to no address")
    return addresses


def blocked(address: Address) -> bool:
    """Whether an address is one a server must not be made to fetch from: anything not global
    (loopback, private, link-local, shared, documentation, ...), multicast, reserved, unspecified;
    IPv6 forms that carry an IPv4 address are judged by that address too."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return blocked(address.ipv4_mapped)  # ::ffff:a.b.c.d is a.b.c.d
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.sixtofour or (address.teredo or (None, None))[1]
        if inner is None and address in ipaddress.ip_network("::/96"):  # IPv4-compatible
            inner = ipaddress.IPv4Address(int(address))
        if inner is not None and blocked(inner):
            return True
    return (
        not address.is_global
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address.is_loopback
        or address.is_link_local
    )


def allow_listed(host: str, address: str, allowed: tuple[str, ...]) -> bool:
    """Whether an allow-list entry names `host` (any case) or a network holding `address`."""
    ip = ipaddress.ip_address(address.split("%")[0])
    for entry in allowed:
        if entry.lower().rstrip(".") == host.lower().rstrip("."):
            return True
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue  # a host name, not a network
    return False


def _get(parts, port: int, addresses: list[str], limit: int, deadline: float):
    """One GET to the checked `addresses` (the URL's host name only in Host and TLS): (status,
    Location header, body of at most `limit` bytes), within `deadline`."""
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname, port, timeout=_left(deadline))
    opened: list[socket.socket] = []  # the socket, kept: http.client drops it on HTTP/1.0
    conn._create_connection = lambda _addr, timeout, _source=None: _connect(
        addresses, port, timeout, opened
    )
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", target, headers={"User-Agent": "paligemma", "Accept": "image/*"})
        response = conn.getresponse()
        if response.status != 200:
            return response.status, response.getheader("location"), b""
        if int(response.getheader("content-length") or 0) > limit:
            raise Refused(f"Content-Length over the limit of {limit} bytes")
        body = bytearray()
        while chunk := _read(opened, response, min(65536, limit + 1 - len(body)), deadline):
            body += chunk
            if len(body) > limit:
                raise Refused(f"body over the limit of {limit} bytes")
        return 200, None, bytes(body)
    finally:
        conn.close()


def _connect(addresses: list[str], port: int, timeout, opened: list) -> socket.socket:
    """A connection to the first checked address that answers (never a lookup, not even of
    the numeric address: the socket is made for its family and connected directly)."""
    error: OSError = OSError("no address")
    for a in addresses:
        family = socket.AF_INET6 if ":" in a else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((a, port))
            opened.append(sock)
            return sock
        except OSError as e:
            sock.close()
            error = e
    raise error


def _read(opened: list[socket.socket], response, n: int, deadline: float) -> bytes:
    """At most `n` bytes of the body, each wait for data bounded by the time left."""
    opened[-1].settimeout(_left(deadline))
    return response.read1(n) if n > 0 else b""


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise Refused("over the time limit")
    return left
