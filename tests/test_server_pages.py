"""The server's pages and edges over plain HTTP: /docs and /redoc with their files served
locally (they work offline), /favicon.ico, and bodies that are not JSON answered with where
the JSON breaks or which header to send."""

from __future__ import annotations

import re

import httpx
import pytest
from server_util import running

from paligemma.serve import Settings


@pytest.fixture(scope="module")
def url(embedded_pipe):
    with running(embedded_pipe, Settings(model_name="embedded")) as base:
        yield base


def test_docs_load_their_files_from_this_server(url):
    for page in ("/docs", "/redoc"):
        html = httpx.get(url + page)
        assert html.status_code == 200, page
        assets = re.findall(r"""(?:src|href)=["']([^"']+\.(?:js|css))["']""", html.text)
        assert assets, html.text
        for asset in assets:
            assert asset.startswith("/"), asset  # nothing from a CDN
            r = httpx.get(url + asset)
            assert r.status_code == 200 and len(r.content) > 10_000, asset
    bundle = httpx.get(url + "/docs-assets/swagger-ui-bundle.js").text
    assert "SwaggerUIBundle" in bundle
    assert httpx.get(url + "/openapi.json").json()["paths"]


def test_favicon_is_a_small_png(url):
    r = httpx.get(url + "/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content.startswith(b"\x89PNG") and len(r.content) < 2_000


@pytest.mark.parametrize(
    "body, where",
    [
        (b'{"messages": [', "line 1, column 15: Expecting value"),
        (b'{\n  "messages": [\n    {"role": "user",}\n  ]\n}', "line 3, column 21"),
        (b'{"messages": []} x', "line 1, column 18: Extra data"),
    ],
)
def test_malformed_json_names_its_line_and_column(url, body, where):
    r = httpx.post(
        url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert message.startswith("invalid JSON at ") and where in message, message


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_without_a_json_content_type_says_which_header_to_send(url, content_type):
    headers = {"content-type": content_type} if content_type else {}
    body = b'{"image": "abc", "labels": "circle"}'
    r = httpx.post(url + "/v1/detect", content=body, headers=headers)
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "Content-Type: application/json" in message, message
    assert (repr(content_type) if content_type else "without one") in message
