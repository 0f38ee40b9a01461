"""Remote image URLs (`--allow-remote-images`) against real HTTP servers on loopback: internal
addresses are refused unless allow-listed, redirects are checked hop by hop, the connection goes
to the address that was checked, size and time are capped, and every failure reads the same."""

from __future__ import annotations

import contextlib
import http.server
import io
import ipaddress
import threading
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image
from server_util import chat_body, running

from paligemma.serve import Settings, fetch
from paligemma.serve.errors import APIError
from paligemma.serve.images import decode_image, read_url


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), (200, 30, 40)).save(buf, format="PNG")
    return buf.getvalue()


PNG = png()


class Handler(http.server.BaseHTTPRequestHandler):
    """/a.png: an image; /go?to=URL: a 302 to URL; /loop: a 302 to itself; /big: 4 KB;
    /slow: a byte every 0.2 s; else 404. The server keeps each request's Host header."""

    def do_GET(self) -> None:
        self.server.hosts.append(self.headers.get("Host"))
        path, query = urlsplit(self.path).path, parse_qs(urlsplit(self.path).query)
        if path == "/a.png":
            self._send(200, PNG)
        elif path in ("/go", "/loop"):
            self.send_response(302)
            self.send_header("Location", query["to"][0] if path == "/go" else "/loop")
            self.end_headers()
        elif path == "/big":
            self._send(200, b"x" * 4096)
        elif path == "/slow":
            self.send_response(200)
            self.end_headers()
            with contextlib.suppress(OSError):  # the client gives up first
                for _ in range(20):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
        else:
            self._send(404, b"no")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def http_server(host: str = "127.0.0.1"):
    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads, server.hosts = True, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def loopback():
    with http_server() as (server, base):
        yield server, base


@pytest.fixture(scope="module")
def other():  # a second loopback address, allow-listed on its own
    with http_server("127.0.0.2") as (server, base):
        yield server, base


def remote(*allowed: str, **extra) -> Settings:
    return Settings(allow_remote=True, allow_image_hosts=allowed, **extra)


def refused(url: str, s: Settings) -> str:
    with pytest.raises(APIError) as e:
        read_url(url, s)
    assert (e.value.status, e.value.code) == (400, "fetch_failed")
    return e.value.message


BLOCKED = [
    "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
    "100.64.0.1", "0.0.0.0", "224.0.0.1", "240.0.0.1", "255.255.255.255", "192.0.2.1",
    "::1", "::", "fe80::1", "fc00::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
    "::ffff:169.254.169.254", "::127.0.0.1", "2002:7f00:1::", "2001:db8::1", "64:ff9b::a00:1",
]  # fmt: skip
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::"]


def test_internal_addresses_are_blocked_in_every_form():
    assert [a for a in BLOCKED if not fetch.blocked(ipaddress.ip_address(a))] == []
    assert [a for a in PUBLIC if fetch.blocked(ipaddress.ip_address(a))] == []


def test_a_loopback_server_is_refused_by_default_and_reachable_when_allow_listed(loopback):
    server, base = loopback
    before = len(server.hosts)
    assert "public" in refused(base + "/a.png", remote())
    assert len(server.hosts) == before  # refused before any connection
    for entry in ("127.0.0.1", "127.0.0.0/8", "LOCALHOST"):
        url = base.replace("127.0.0.1", "localhost") if entry == "LOCALHOST" else base
        assert read_url(url + "/a.png", remote(entry)) == PNG, entry
    assert decode_image(base + "/a.png", remote("127.0.0.1")).size == (24, 16)
    refused(base.replace("127.0.0.1", "[::ffff:127.0.0.1]") + "/a.png", remote())


def test_redirects_are_checked_at_every_hop(loopback, other):
    _, inside = loopback
    _, allowed = other
    s = remote("127.0.0.2/32")
    assert read_url(f"{allowed}/go?to=/a.png", s) == PNG  # followed on the allowed host
    refused(f"{allowed}/go?to={inside}/a.png", s)  # ... but never to a loopback address
    refused(f"{allowed}/go?to=http://[::1]:1/a.png", s)
    refused(f"{allowed}/go?to=file:///etc/passwd", s)
    refused(f"{allowed}/loop", s)  # a redirect loop


def test_every_refusal_or_failure_is_the_same_error(loopback, other):
    _, inside = loopback
    _, allowed = other
    with socket_closed_port() as closed:
        messages = {
            refused(inside + "/a.png", remote("127.0.0.2")),  # internal, not allow-listed
            refused(f"http://127.0.0.2:{closed}/a.png", remote("127.0.0.2")),  # closed port
            refused(allowed + "/missing", remote("127.0.0.2")),  # 404
            refused(allowed + "/big", remote("127.0.0.2", max_body_bytes=1000)),  # too large
            refused("http://no-such-host.invalid/a.png", remote()),  # unresolvable
        }
    assert messages == {fetch.FETCH_FAILED}


def test_download_time_is_capped(other):
    _, allowed = other
    started = time.monotonic()
    refused(allowed + "/slow", remote("127.0.0.2", remote_timeout_s=0.5))
    assert time.monotonic() - started < 2.0


def test_the_connection_goes_to_the_checked_address(loopback, monkeypatch):
    server, _ = loopback
    port = server.server_address[1]
    lookups = []

    def fake_dns(host, *args, **kwargs):  # a name only this test's resolver knows
        lookups.append(host)
        return [(2, 1, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(fetch.socket, "getaddrinfo", fake_dns)
    assert "public" in refused(f"http://images.example:{port}/a.png", remote())
    lookups.clear()
    assert read_url(f"http://images.example:{port}/a.png", remote("images.example")) == PNG
    assert lookups == ["images.example"]  # one lookup, and the request went to its answer
    assert server.hosts[-1] == f"images.example:{port}"


@contextlib.contextmanager
def socket_closed_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        yield sock.getsockname()[1]  # bound, not listening: connections are refused


def test_the_server_refuses_loopback_urls_unless_allow_listed(embedded_pipe, loopback):
    _, base = loopback
    body = chat_body(None, "caption en", max_tokens=2)
    body["messages"][0]["content"].append({"type": "image_url", "image_url": {"url": ""}})
    body["messages"][0]["content"][-1]["image_url"]["url"] = base + "/a.png"
    with running(embedded_pipe, Settings(allow_remote=True)) as url:
        r = httpx.post(url + "/v1/chat/completions", json=body)
        assert r.status_code == 400 and r.json()["error"]["message"] == fetch.FETCH_FAILED
    with running(embedded_pipe, remote("127.0.0.1")) as url:
        r = httpx.post(url + "/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text


def test_serve_flags_allow_list_hosts_and_state_the_risk(capsys):
    from paligemma.cli import commands
    from paligemma.cli import serve as cli
    from paligemma.cli.common import UsageError

    parser = commands.build_parser()
    hosts = ["--allow-image-host", "10.0.0.0/8", "--allow-image-host", "cams.lan"]
    args = parser.parse_args(["serve", "--allow-remote-images", *hosts])
    assert cli.settings_from(args).allow_image_hosts == ("10.0.0.0/8", "cams.lan")
    with pytest.raises(UsageError, match="needs --allow-remote-images"):
        cli.run(parser.parse_args(["serve", *hosts]))
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--help"])
    assert "SSRF" in " ".join(capsys.readouterr().out.split())
