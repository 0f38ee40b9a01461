"""Request builders shared by the server tests (the server: `paligemma.serve.running`)."""

from __future__ import annotations

import base64
import contextlib
import io
import signal
import socket
import subprocess
import sys
import time

import httpx

from paligemma.serve import running  # noqa: F401  (re-exported for the tests)


def image_b64(image, fmt: str = "PNG") -> str:
    """The image's file bytes in `fmt`, base64-encoded."""
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def data_url(image, fmt: str = "PNG") -> str:
    return f"data:image/{fmt.lower()};base64," + image_b64(image, fmt)


def chat_body(image, prompt: str, **extra) -> dict:
    content = [{"type": "text", "text": prompt}]
    if image is not None:
        content.append({"type": "image_url", "image_url": {"url": data_url(image)}})
    return {"messages": [{"role": "user", "content": content}], **extra}


@contextlib.contextmanager
def serve_process(*flags: str):
    """A real `paligemma serve FLAGS` on a free loopback port, in its own process: yields its
    base URL once /health answers; on exit, stops it with SIGINT and checks it exited cleanly."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "paligemma.cli", "serve", "--port", str(port), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out[-2000:]
