"""Graceful shutdown for `paligemma serve`: on SIGTERM (or Ctrl+C) the server stops admitting
(a new request gets 503 `shutting_down`, while the port stays open), lets the requests it
accepted run for up to `Settings.shutdown_timeout_s` and cancels what is still running then
(503 `shutting_down`, or an error event on a stream), and only then stops uvicorn, which sends
the last responses and exits 0. A second signal stops at once."""

from __future__ import annotations

import logging
import threading

import uvicorn

log = logging.getLogger("uvicorn.error")


class Graceful(uvicorn.Server):
    """A uvicorn server whose exit signals drain `batcher` (deadline: `deadline_s` seconds)."""

    def __init__(self, config: uvicorn.Config, batcher, deadline_s: float) -> None:
        super().__init__(config)
        self.batcher, self.deadline_s = batcher, deadline_s
        self._drainer: threading.Thread | None = None

    def handle_exit(self, sig: int, frame) -> None:
        """Not re-raised after the shutdown (uvicorn's own does so): the exit code stays 0."""
        if self._drainer is not None:  # a second signal: stop now
            self.should_exit = self.force_exit = True
            return
        log.info("shutting down: no new requests; running ones get %g s", self.deadline_s)
        self._drainer = threading.Thread(target=self._drain, name="paligemma-drain", daemon=True)
        self._drainer.start()

    def _drain(self) -> None:
        try:
            self.batcher.drain(self.deadline_s)
        finally:
            self.should_exit = True
