"""Text as tokens arrive, and stop strings: the one place that turns a row's ids into text.

Used by the pipeline (`generate`, `stream`), the server's batcher and the command line.

    stream = TextStream(tokenizer, ["."])
    for t in ids: print(stream.push(t), end="")    # settled pieces only
    print(stream.flush()); stream.text             # the pieces join to the cut text

A stop string ends a row as soon as it appears in the row's text (the engine asks through
`StopStrings`, its `ShouldStop` predicate), and the text is cut before it.
"""

from __future__ import annotations

from .tokenizer import Tokenizer


def stop_list(stop: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """A stop argument as given by a caller (one string, several, or none) -> a list."""
    return [stop] if isinstance(stop, str) else list(stop or [])


def cut_at_stop(text: str, stop: list[str]) -> str:
    """`text` up to the first stop string in it (all of it when none appears)."""
    cut = min((text.find(s) for s in stop if s in text), default=-1)
    return text if cut < 0 else text[:cut]


class TextStream:
    """One row's text as its tokens arrive: `push(id)` returns the new piece that is settled
    (possibly ""), `flush()` the rest. The pieces join to the final text: stop strings cut;
    nothing is shown that could still turn out to be a partial UTF-8 character or the start of
    a stop string. The row is decoded once per pushed token."""

    def __init__(self, tokenizer: Tokenizer, stop: list[str]) -> None:
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.shown = ""
        self.decoded = ""  # all of `ids`, decoded once per token

    @property
    def text(self) -> str:
        return cut_at_stop(self.decoded, self.stop)

    @property
    def stopped(self) -> bool:
        """A stop string has appeared (the text is cut there)."""
        return any(s in self.decoded for s in self.stop)

    def _emit(self, upto: str) -> str:
        if not upto.startswith(self.shown) or len(upto) <= len(self.shown):
            return ""
        piece, self.shown = upto[len(self.shown) :], upto
        return piece

    def push(self, token: int) -> str:
        self.ids.append(token)
        self.decoded = self.tokenizer.decode(self.ids)
        text = self.text
        if text.endswith("\ufffd"):
            return ""
        hold = max(
            (k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0
        )
        return self._emit(text[: len(text) - hold])

    def flush(self) -> str:
        return self._emit(self.text)


class StopStrings:
    """The engine's `ShouldStop` for a batch: row r stops once a stop string is in its text.
    Each row's text is kept in a TextStream, so a row is decoded once per token (not once per
    token per check); `texts()` gives every row's final, cut text."""

    def __init__(self, tokenizer: Tokenizer, stop: list[str], rows: int) -> None:
        self.streams = [TextStream(tokenizer, stop) for _ in range(rows)]
        self.pending = [""] * rows  # settled text not yet taken, per row

    def __call__(self, row: int, ids: list[int]) -> bool:
        stream = self.streams[row]
        for token in ids[len(stream.ids) :]:  # the ids the engine added since the last call
            self.pending[row] += stream.push(token)
        return stream.stopped

    def take(self, row: int, final: bool = False) -> str:
        """Row's settled text since the last take (with `final`, all that is left)."""
        piece = self.pending[row] + (self.streams[row].flush() if final else "")
        self.pending[row] = ""
        return piece
