"""Running the server: `running` (a background thread, for notebooks, tests and benchmarks),
`server_process` (`paligemma serve` in a process of its own, for tests and load tests) and
`serve` (what `paligemma serve` calls: load the model and its adapters, serve until SIGTERM or
Ctrl+C, then shut down gracefully: `Graceful`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..pipeline import Pipeline
from .app import create_app
from .settings import Settings


@contextlib.contextmanager
def running(
    pipe: Pipeline, settings: Settings | None = None, port: int = 0, adapters: Any = None
) -> Iterator[str]:
    """Serve `pipe` (and its `adapters`) from a background thread on 127.0.0.1 (a free port
    unless given) for the duration of a `with` block, which gets the base URL (for notebooks,
    tests, benchmarks)."""
    import threading

    import uvicorn

    port = port or _free_port()
    app = create_app(pipe, settings, adapters)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the server did not start on port {port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server_process(*flags: str, timeout_s: float = 120.0, stop: int | None = None) -> Iterator[str]:
    """`paligemma serve FLAGS` in its own process on a free loopback port, for the duration of
    a `with` block, which gets the base URL once /health answers. On exit the server is
    stopped with `stop` (default SIGINT) and must exit within 30 s; a server that did not exit
    cleanly is a RuntimeError with its output."""
    import signal
    import subprocess
    import sys
    import urllib.request

    port = _free_port()
    cmd = [sys.executable, "-m", "paligemma.cli", "serve", "--port", str(port), *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(base + "/health", timeout=1):
                    break
            except OSError:  # not listening yet
                time.sleep(0.2)
        yield base
    finally:
        proc.send_signal(signal.SIGINT if stop is None else stop)
        out = proc.communicate(timeout=30)[0]
    if proc.returncode != 0:
        raise RuntimeError(f"paligemma serve exited with {proc.returncode}:\n{out[-2000:]}")


def serve(
    source: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: Settings | None = None,
    dtype: Any = None,
    quantize: str | None = None,
    adapter: str | None = None,
    served_model_name: str | None = None,
    adapters: dict[str, str] | None = None,
) -> None:
    """Load the model (the embedded one without `source`; with a LoRA `adapter` merged in
    place) and serve it until SIGTERM or Ctrl+C (then shut down gracefully), under
    `served_model_name` (default: the checkpoint's directory name, or "paligemma-embedded"),
    the name requests must give as their `model` (or none). `adapters`: name -> LoRA adapter
    directory, each served on the same base under its name (a request's `model`)."""
    import uvicorn

    from ..lora.multi import Adapters
    from ..pipeline import EMBEDDED_DIR, embedded_source, load
    from .access import configure
    from .shutdown import Graceful

    if adapter is not None and adapters:
        raise ValueError("give every adapter a name (--adapter NAME=DIR), or one bare DIR")
    pipe = load(source, dtype=dtype, quantize=quantize, adapter=adapter)
    named = Adapters(pipe.model, adapters) if adapters else None
    embedded = embedded_source(source) == EMBEDDED_DIR
    name = served_model_name or ("paligemma-embedded" if embedded else Path(str(source)).name)
    settings = replace(settings or Settings(), model_name=name)
    if named is not None and name in named.names:
        raise ValueError(f"an adapter is named {name!r} like the model; rename one")
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        print(f"warning: serving on {host} without --api-key: anyone who can reach it can use it")
    app = create_app(pipe, settings, named)
    configure()  # the access log's JSON lines on stdout, instead of uvicorn's
    config = uvicorn.Config(
        app, host=host, port=port, log_level="info", access_log=False, timeout_graceful_shutdown=10
    )
    Graceful(config, app.state.batcher, settings.shutdown_timeout_s).run()
