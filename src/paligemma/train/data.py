"""Fine-tuning data: a JSONL file, one example per line:

    {"image": "img/0001.jpg" (or a list of paths; relative to the file), "prefix": "...",
     "suffix": "..."}

Every record is checked before a run starts (readable image, non-empty suffix, length), and
all problems are reported together with their line numbers.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..pipeline import Pipeline
from ..processor import ImageError, check_pixels


class DataError(ValueError):
    """Training data with bad records."""


@dataclass(frozen=True)
class Example:
    line: int
    images: tuple[Path, ...]
    prefix: str
    suffix: str


def read_examples(
    path: str | os.PathLike, pipe: Pipeline, max_len: int | None, skip_bad: bool
) -> list[Example]:
    """All examples of a JSONL file, validated. Bad records raise one DataError listing them
    with line numbers, unless `skip_bad`, when they are left out."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such data file: {path}")
    good, bad = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
            images = rec.get("image")
            images = [images] if isinstance(images, str) else images
            if not images or not all(isinstance(i, str) for i in images):
                raise ValueError('"image" must be a path or a list of paths')
            prefix, suffix = rec.get("prefix", ""), rec.get("suffix")
            if not isinstance(prefix, str):
                raise ValueError('"prefix" must be a string')
            if not isinstance(suffix, str) or not suffix.strip():
                raise ValueError('empty or missing "suffix"')
            paths = tuple(path.parent / i for i in images)
            for p in paths:
                _check_image(p)
            # <bos> prefix "\n" suffix <eos>: the text part of the sequence
            length = len(pipe.processor.prompt_ids(prefix, 0)) + len(
                pipe.processor.suffix_ids(suffix)
            )
            if max_len is not None and length > max_len:
                raise ValueError(f"{length} text tokens, more than max_len={max_len}")
            good.append(Example(n, paths, prefix, suffix))
        except (ValueError, ImageError) as e:
            bad.append(f"line {n}: {e}")
    if bad and not skip_bad:
        shown = "; ".join(bad[:5]) + (f"; ... ({len(bad) - 5} more)" if len(bad) > 5 else "")
        raise DataError(
            f"{path}: {len(bad)} bad record(s): {shown} (fix them or skip them with --skip-bad)"
        )
    if not good:
        raise DataError(f"{path}: no usable examples")
    return good


def _check_image(path: Path) -> None:
    """Header-only check (cheap): the file exists and is an image of an acceptable size."""
    from PIL import Image

    if not path.is_file():
        raise ImageError(f"no such image {path}")
    try:
        with warnings.catch_warnings():  # check_pixels below replaces PIL's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
    except (OSError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot read image {path}: {e}") from None
    check_pixels(w, h, name=f"image {path}")


class ExampleOrder:
    """The order examples are drawn in: each epoch a permutation seeded by (seed, epoch).
    `pos` counts the examples drawn so far; a checkpoint keeps it, so a resumed run draws
    what the uninterrupted run would have."""

    def __init__(self, examples: list[Example], seed: int, pos: int = 0) -> None:
        self.examples, self.seed, self.pos = examples, seed, pos
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, its permutation)

    def take(self, n: int) -> list[Example]:
        picked = []
        for _ in range(n):
            epoch, index = divmod(self.pos, len(self.examples))
            if self._order is None or self._order[0] != epoch:
                g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
                self._order = epoch, torch.randperm(len(self.examples), generator=g)
            picked.append(self.examples[int(self._order[1][index])])
            self.pos += 1
        return picked


def batch_of(pipe: Pipeline, examples: list[Example]) -> dict[str, torch.Tensor]:
    return pipe.processor(
        images=[list(e.images) for e in examples],
        text=[e.prefix for e in examples],
        suffix=[e.suffix for e in examples],
    )
